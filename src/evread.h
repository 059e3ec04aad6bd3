/* Reading a socket into an evbuffer without asking the kernel first.
 *
 * libevent's evbuffer_read (and so every bufferevent) calls ioctl(FIONREAD)
 * before each read to size it: a third syscall on every request. Both the
 * gateway and the load generator read through this instead. */
#ifndef SG_EVREAD_H
#define SG_EVREAD_H

#include <errno.h>
#include <event2/buffer.h>
#include <sys/types.h>
#include <sys/uio.h>

/* Read up to max bytes from fd into in. Returns the bytes read, 0 at end
 * of stream, -1 on an error, or -2 when nothing is there yet (EAGAIN). */
static inline ssize_t sg_evbuffer_readv(struct evbuffer *in, int fd, size_t max)
{
    struct evbuffer_iovec v[2];
    int nv = evbuffer_reserve_space(in, (ev_ssize_t)max, v, 2);
    if (nv < 1) return -1;
    struct iovec iov[2];
    for (int i = 0; i < nv; i++) {
        iov[i].iov_base = v[i].iov_base;
        iov[i].iov_len = v[i].iov_len;
    }
    ssize_t n = readv(fd, iov, nv);
    if (n < 0) return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ? -2 : -1;
    size_t left = (size_t)n;
    for (int i = 0; i < nv; i++) {
        if (v[i].iov_len > left) v[i].iov_len = left;
        left -= v[i].iov_len;
    }
    if (n > 0) evbuffer_commit_space(in, v, nv);
    return n;
}

#endif
