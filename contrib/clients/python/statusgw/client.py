"""The thread-based client: a background thread sends the buffer."""

import atexit
import http.client
import threading
import time
import urllib.parse

from .core import StatusAPI, log


def _connection(url, timeout):
    u = urllib.parse.urlsplit(url)
    cls = http.client.HTTPSConnection if u.scheme == "https" else http.client.HTTPConnection
    return cls(u.hostname, u.port, timeout=timeout), u.path.rstrip("/")


class Client(StatusAPI):
    """Status updates to a statusgw gateway, fire and forget.

        status = statusgw.Client("http://127.0.0.1:4000", api_key=..., source="llm-service")
        status.info("conv-123", "Processing complete", {"items": 100})
        status.close()  # at shutdown: sends what is queued, within a deadline

    Every call returns at once: the update goes into a bounded buffer
    (buffer_size) that a background thread sends to /api/v1/status/bulk in
    requests of batch_size, or after flush_interval seconds. 429 and 503
    are retried after their Retry-After, an unreachable gateway with
    backoff; each update carries an idempotency key, so a retry is never
    delivered twice. Updates that find the buffer full are dropped and
    counted (stats()["dropped"], a log line, on_drop(total)).
    """

    def __init__(self, url="http://127.0.0.1:4000", **options):
        super().__init__(url, **options)
        self._cond = threading.Condition()
        self._flushing = 0
        self._abort = threading.Event()
        self._conn = None
        self._thread = threading.Thread(target=self._run, name="statusgw-client", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    def _put(self, item):
        with self._cond:
            return super()._put(item)

    def _wake(self):
        self._cond.notify_all()

    def flush(self, timeout=5.0):
        """Wait until everything queued so far is answered; True when it was
        within timeout seconds."""
        with self._cond:
            self._flushing += 1
            self._cond.notify_all()
            try:
                return self._cond.wait_for(lambda: not self._buf and not self._inflight, timeout)
            finally:
                self._flushing -= 1

    def close(self, timeout=5.0):
        """Stop taking updates, send what is queued within timeout seconds,
        stop the thread. True when nothing was left unsent."""
        with self._cond:
            if self._closed and not self._thread.is_alive():
                return self.counters["unsent"] == 0
            self._closed = True
            self._cond.notify_all()
        drained = self.flush(timeout)
        if not drained:
            self._abort.set()
        with self._cond:
            self._cond.notify_all()
        self._thread.join(self.request_timeout + 1)
        atexit.unregister(self.close)
        return drained

    def _next_batch(self):
        """Wait for a batch worth sending; None once closed and empty."""
        with self._cond:
            due = None
            while True:
                what, due = self._step(due)
                if what != "wait":
                    return self._take() if what == "take" else None
                self._cond.wait(None if due is None else due - time.monotonic())

    def _run(self):
        while True:
            batch = self._next_batch()
            if batch is None:
                break
            status, headers, body = self._send(batch)
            with self._cond:
                out = self._settle(batch, status, headers, body)
                self._requeue(out.retry)
                self._cond.notify_all()
            if out.retry and out.delay > 0:
                self._abort.wait(out.delay)
        if self._conn:
            self._conn.close()

    def _send(self, batch):
        try:
            if self._conn is None:
                self._conn, self._path = _connection(self.url, self.request_timeout)
            self._conn.request("POST", self._path + "/api/v1/status/bulk", self._body(batch), self._headers())
            r = self._conn.getresponse()
            body = r.read()
            if r.will_close:
                self._conn.close()
                self._conn = None
            return r.status, {k.lower(): v for k, v in r.getheaders()}, body
        except (OSError, http.client.HTTPException) as e:
            if self._conn:
                self._conn.close()
                self._conn = None
            log.debug("statusgw: bulk request failed: %s", e)
            return None, {}, str(e)
