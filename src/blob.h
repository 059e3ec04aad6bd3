/* Refcounted byte blocks: a frame built once per flush and appended by
 * reference to every subscriber's output evbuffer. */
#ifndef SG_BLOB_H
#define SG_BLOB_H

#include <event2/buffer.h>
#include <stdlib.h>

typedef struct sg_blob {
    int refcnt;
    int n_updates; /* updates the frame carries, for delivery counts */
    size_t len;    /* bytes used */
    size_t cap;
    char data[];
} sg_blob;

/* A new blob with room for cap bytes, refcount 1; NULL when out of memory. */
static inline sg_blob *sg_blob_new(size_t cap)
{
    sg_blob *b = malloc(sizeof(*b) + cap);
    if (!b) return NULL;
    b->refcnt = 1;
    b->n_updates = 0;
    b->len = 0;
    b->cap = cap;
    return b;
}

static inline void sg_blob_unref(sg_blob *b)
{
    if (b && --b->refcnt == 0) free(b);
}

static void sg_blob_cleanup_(const void *data, size_t len, void *arg)
{
    (void)data;
    (void)len;
    sg_blob_unref(arg);
}

/* Append the blob to out without copying; the evbuffer holds a reference
 * until the bytes are written. Returns 0 or -1. */
static inline int sg_blob_append(struct evbuffer *out, sg_blob *b)
{
    b->refcnt++;
    if (evbuffer_add_reference(out, b->data, b->len, sg_blob_cleanup_, b) < 0) {
        b->refcnt--;
        return -1;
    }
    return 0;
}

#endif
