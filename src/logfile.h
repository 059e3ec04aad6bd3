#ifndef SG_LOGFILE_H
#define SG_LOGFILE_H

#include <stddef.h>
#include <stdint.h>

/* One file of the durable store's log (store_sqlite.c): batches appended
 * one after another from its start, zeros after them. Two ways in:
 *
 * - put: a memcpy into a shared mapping of the file, below `room`: bytes
 *   already allocated on the disk and whose pages are faulted in (grow).
 *   The bytes are in the page cache once copied, so a crash of the
 *   process keeps them, and the caller (the loop) makes no system call
 *   and never waits on the disk.
 * - write: a pwrite at the end of the batches (the writer thread's way,
 *   for a file without room, and with fdatasync for store_sync "full").
 *
 * Each batch carries its file's cycle, which grows each time the file is
 * used again: a reader stops at the first batch of another cycle.
 *
 * The caller serializes: one appender at a time, and grow and reset only
 * on what no one appends to meanwhile. */

#define SG_LOGFILE_MAP ((size_t)1 << 30) /* address space mapped over each file */

typedef struct sg_logfile {
    int fd;
    char *path;
    char *map;         /* SG_LOGFILE_MAP bytes over the file; NULL: write only */
    size_t len;        /* bytes of batches */
    size_t room;       /* from 0: allocated and faulted in, so put may copy below it */
    uint32_t cycle;    /* written in each batch: which of two files is older */
    uint64_t last_gen; /* the newest batch's generation (the store's) */
    int64_t first_ms;  /* when its first batch went in; 0: it has none */
    int torn;          /* bytes past len are a failed write's: cut them first */
} sg_logfile;

/* Open (creating) path and map it: 0, or -1 with err. */
int sg_logfile_open(sg_logfile *f, const char *path, char *err, size_t errlen);
/* Make the bytes from `from` (past room, and past len: the writer's) up
 * to `to` ready for put (allocated, faulted in): 0, or -1 with errno
 * (ENOSPC, EFBIG). The caller then sets room, as the appender sees it
 * (under its lock). */
int sg_logfile_grow(sg_logfile *f, size_t from, size_t to);
/* Copy n bytes at len (len + n <= room). */
void sg_logfile_put(sg_logfile *f, const char *p, size_t n);
/* Write n bytes at len (and fdatasync when sync): 0, or -1 with errno (what
 * was written in part is cut off, or cut before the next write). */
int sg_logfile_write(sg_logfile *f, const char *p, size_t n, int sync);
/* Empty it (its batches are applied): its first header zeroed (what
 * follows, of an older cycle, is never read), the room kept: 0, or -1
 * with errno. */
int sg_logfile_reset(sg_logfile *f);
/* Cut it at n bytes (room included): 0, or -1 with errno. */
int sg_logfile_cut(sg_logfile *f, size_t n);
void sg_logfile_close(sg_logfile *f);

#endif
