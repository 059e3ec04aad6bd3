#include "dict.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

typedef struct entry {
    struct entry *next;
    uint64_t hash;
    void *val;
    size_t len;
    char key[];
} entry;

struct sg_dict {
    entry **slots;
    size_t mask; /* slots - 1, a power of two minus one */
    size_t size;
};

static uint64_t seed;

static uint64_t hash(const char *s, size_t n)
{
    if (!seed && getrandom(&seed, sizeof(seed), 0) != sizeof(seed)) seed = 0x9e3779b97f4a7c15ULL;
    uint64_t h = 0xcbf29ce484222325ULL ^ seed;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 0x100000001b3ULL;
    }
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    return h;
}

sg_dict *sg_dict_new(void)
{
    sg_dict *d = calloc(1, sizeof(*d));
    if (!d) return NULL;
    d->mask = 15;
    d->slots = calloc(d->mask + 1, sizeof(entry *));
    if (!d->slots) {
        free(d);
        return NULL;
    }
    return d;
}

void sg_dict_free(sg_dict *d)
{
    if (!d) return;
    for (size_t i = 0; i <= d->mask; i++) {
        entry *e = d->slots[i];
        while (e) {
            entry *n = e->next;
            free(e);
            e = n;
        }
    }
    free(d->slots);
    free(d);
}

static entry **find(const sg_dict *d, const char *key, size_t len, uint64_t h)
{
    entry **pp = &d->slots[h & d->mask];
    while (*pp && !((*pp)->hash == h && (*pp)->len == len && memcmp((*pp)->key, key, len) == 0))
        pp = &(*pp)->next;
    return pp;
}

void *sg_dict_get(const sg_dict *d, const char *key, size_t len)
{
    entry *e = *find(d, key, len, hash(key, len));
    return e ? e->val : NULL;
}

static void grow(sg_dict *d)
{
    size_t nmask = d->mask * 2 + 1;
    entry **ns = calloc(nmask + 1, sizeof(entry *));
    if (!ns) return; /* keep working with longer chains */
    for (size_t i = 0; i <= d->mask; i++) {
        entry *e = d->slots[i];
        while (e) {
            entry *n = e->next;
            e->next = ns[e->hash & nmask];
            ns[e->hash & nmask] = e;
            e = n;
        }
    }
    free(d->slots);
    d->slots = ns;
    d->mask = nmask;
}

int sg_dict_set(sg_dict *d, const char *key, size_t len, void *val)
{
    uint64_t h = hash(key, len);
    entry **pp = find(d, key, len, h);
    if (*pp) {
        (*pp)->val = val;
        return 0;
    }
    entry *e = malloc(sizeof(*e) + len + 1);
    if (!e) return -1;
    e->next = NULL;
    e->hash = h;
    e->val = val;
    e->len = len;
    memcpy(e->key, key, len);
    e->key[len] = 0;
    *pp = e;
    if (++d->size > d->mask) grow(d);
    return 0;
}

void *sg_dict_del(sg_dict *d, const char *key, size_t len)
{
    entry **pp = find(d, key, len, hash(key, len));
    entry *e = *pp;
    if (!e) return NULL;
    void *v = e->val;
    *pp = e->next;
    free(e);
    d->size--;
    return v;
}

size_t sg_dict_size(const sg_dict *d)
{
    return d->size;
}
