/* A file of the durable store's log: see logfile.h. */
#include "logfile.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23 /* Linux 5.14 */
#endif

int sg_logfile_open(sg_logfile *f, const char *path, char *err, size_t errlen)
{
    memset(f, 0, sizeof(*f));
    f->fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    f->path = strdup(path);
    if (f->fd < 0 || !f->path) {
        snprintf(err, errlen, "store log '%s' cannot be opened (%s)", path, f->path ? strerror(errno) : "out of memory");
        sg_logfile_close(f);
        return -1;
    }
    /* without the mapping (address space refused), batches are written */
    void *m = mmap(NULL, SG_LOGFILE_MAP, PROT_READ | PROT_WRITE, MAP_SHARED, f->fd, 0);
    f->map = m == MAP_FAILED ? NULL : m;
    return 0;
}

/* Fault in the pages of [from, to) for writing, so that a copy into them
 * takes no fault that could wait on the file system. What they hold is
 * kept (a write that went past the room put batches there). */
static int populate(sg_logfile *f, size_t from, size_t to)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    from &= ~(page - 1);
    if (madvise(f->map + from, to - from, MADV_POPULATE_WRITE) == 0) return 0;
    if (errno != EINVAL) return -1;
    /* a kernel before 5.14: a write to each page that changes nothing (an
     * atomic add of 0: the first page may hold bytes the loop is copying) */
    for (size_t off = from; off < to; off += page)
        __atomic_fetch_add((unsigned char *)f->map + off, 0, __ATOMIC_RELAXED);
    return 0;
}

int sg_logfile_grow(sg_logfile *f, size_t from, size_t to)
{
    if (!f->map || to > SG_LOGFILE_MAP) {
        errno = ENOMEM;
        return -1;
    }
    if (from < f->room) from = f->room;
    if (to <= from) return 0;
    /* allocated, not sparse: a copy into a hole the disk has no space
     * for would be a SIGBUS, never an error */
    if (fallocate(f->fd, 0, (off_t)from, (off_t)(to - from)) != 0) return -1;
    return populate(f, from, to);
}

void sg_logfile_put(sg_logfile *f, const char *p, size_t n)
{
    memcpy(f->map + f->len, p, n);
    f->len += n;
}

int sg_logfile_cut(sg_logfile *f, size_t n)
{
    if (ftruncate(f->fd, (off_t)n) < 0) return -1;
    if (f->room > n) f->room = n;
    f->torn = 0;
    return 0;
}

int sg_logfile_write(sg_logfile *f, const char *p, size_t n, int sync)
{
    if (f->torn && sg_logfile_cut(f, f->len) < 0) return -1;
    int saved = 0;
    for (size_t off = 0; off < n && !saved;) {
        ssize_t m = pwrite(f->fd, p + off, n - off, (off_t)(f->len + off));
        if (m < 0 && errno == EINTR) continue;
        if (m <= 0) saved = m < 0 ? errno : EIO;
        else off += (size_t)m;
    }
    if (!saved && sync && fdatasync(f->fd) < 0) saved = errno;
    if (saved) {
        /* nothing after a torn batch would be read at start */
        if (sg_logfile_cut(f, f->len) < 0) f->torn = 1;
        errno = saved;
        return -1;
    }
    f->len += n;
    return 0;
}

int sg_logfile_reset(sg_logfile *f)
{
    if (f->torn && sg_logfile_cut(f, 0) < 0) return -1;
    /* the first batch's header zeroed: what follows it (of an older
     * cycle) is never read, and the room stays made (its pages used again
     * cost no allocation) */
    static const char zero[16];
    if (f->room >= sizeof(zero)) {
        memcpy(f->map, zero, sizeof(zero));
    } else if (f->len && pwrite(f->fd, zero, sizeof(zero), 0) != (ssize_t)sizeof(zero)) {
        if (errno == 0) errno = EIO;
        return -1;
    }
    f->len = 0;
    f->last_gen = 0;
    f->first_ms = 0;
    return 0;
}

void sg_logfile_close(sg_logfile *f)
{
    if (f->map) munmap(f->map, SG_LOGFILE_MAP);
    if (f->fd >= 0) close(f->fd);
    free(f->path);
    memset(f, 0, sizeof(*f));
    f->fd = -1;
}
