"""What the thread and the asyncio clients share: the Status API calls, the
bounded buffer, and what a bulk answer means for each update in it.

Nothing here touches the network. A client adds `_wake()` (tell its worker
there is work) and a worker that takes batches with `_take()`, sends them,
and hands the answer to `_settle()`.
"""

import collections
import itertools
import json
import logging
import os
import random
import time

from . import metadata as md

log = logging.getLogger("statusgw")

CATEGORIES = ("engine", "tool", "workflow", "progress", "error", "info", "planning")
RETRY_MAX_S = 5.0  # the longest pause between attempts when the gateway gives no Retry-After


class Outcome:
    """What to do after a bulk request: the updates to send again, and when."""

    __slots__ = ("retry", "delay")

    def __init__(self, retry=(), delay=0.0):
        self.retry = list(retry)
        self.delay = delay


class StatusAPI:
    """The seed's Status API over a bounded buffer. Never blocks, never raises."""

    def __init__(self, url="http://127.0.0.1:4000", api_key=None, source=None,
                 buffer_size=10000, batch_size=100, flush_interval=0.1,
                 request_timeout=5.0, on_drop=None):
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.source = source
        self.buffer_size = buffer_size
        self.batch_size = max(1, min(batch_size, 1000))
        self.flush_interval = flush_interval
        self.request_timeout = request_timeout
        self.on_drop = on_drop
        self._buf = collections.deque()
        self._inflight = 0
        self._closed = False
        self._prefix = os.urandom(8).hex()
        self._n = itertools.count(1)  # next() is atomic: updates may come from many threads
        self._down = False
        self._backoff = 0.0
        self._limit = self.batch_size
        self._last_drop_log = 0.0
        self.counters = dict(queued=0, sent=0, duplicates=0, filtered=0,
                             dropped=0, rejected=0, retried=0, unsent=0)

    # -- the Status API ---------------------------------------------------

    def update(self, conversation_id, category, text, metadata=None):
        """Queue one update; False when it was dropped (buffer full, closed)."""
        try:
            return self._put(self._update(conversation_id, category, text, metadata))
        except Exception:  # a status call never raises into its caller
            log.exception("statusgw: update not queued")
            return False

    def engine(self, conversation_id, text, metadata=None):
        return self.update(conversation_id, "engine", text, metadata)

    def tool(self, conversation_id, text, metadata=None):
        return self.update(conversation_id, "tool", text, metadata)

    def workflow(self, conversation_id, text, metadata=None):
        return self.update(conversation_id, "workflow", text, metadata)

    def progress(self, conversation_id, text, metadata=None):
        return self.update(conversation_id, "progress", text, metadata)

    def error(self, conversation_id, text, metadata=None):
        return self.update(conversation_id, "error", text, metadata)

    def info(self, conversation_id, text, metadata=None):
        return self.update(conversation_id, "info", text, metadata)

    def planning(self, conversation_id, text, metadata=None):
        return self.update(conversation_id, "planning", text, metadata)

    def with_timing(self, conversation_id, category, text, start, metadata=None):
        """An update with duration_ms and duration_human since start, a
        time.monotonic() reading taken when the work began."""
        try:
            ms = (time.monotonic() - start) * 1000
            return self.update(conversation_id, category, text, md.timing_metadata(ms, metadata))
        except Exception:
            log.exception("statusgw: with_timing not queued")
            return False

    def progress_percentage(self, conversation_id, text, current, total, metadata=None):
        """A progress update: current, total, percentage, progress "c/t", and
        the text with " (30%)" appended."""
        try:
            meta, text = md.progress_metadata(text, current, total, metadata)
            return self.update(conversation_id, "progress", text, meta)
        except Exception:
            log.exception("statusgw: progress_percentage not queued")
            return False

    def bulk_update(self, conversation_id, updates):
        """Queue several updates, each a dict with category, text and
        metadata (or a (category, text[, metadata]) tuple). The number queued."""
        n = 0
        for u in updates:
            if isinstance(u, dict):
                ok = self.update(conversation_id, u.get("category"), u.get("text"), u.get("metadata"))
            else:
                ok = self.update(conversation_id, *u)
            n += 1 if ok else 0
        return n

    def maybe_update(self, conversation_id, condition, category, text, metadata=None):
        """update() when condition holds and there is a conversation."""
        if not condition or conversation_id is None:
            return False
        return self.update(conversation_id, category, text, metadata)

    def stats(self):
        """The counters, and what is queued now."""
        s = dict(self.counters)
        s["queued"] = len(self._buf) + self._inflight
        return s

    # -- the buffer -------------------------------------------------------

    def _update(self, conversation_id, category, text, metadata):
        u = {"conversation_id": conversation_id, "category": category, "text": text,
             "idempotency_key": "%s-%d" % (self._prefix, next(self._n))}
        if metadata:
            u["metadata"] = metadata
        if self.source:
            u["source"] = self.source
        return json.dumps(u, ensure_ascii=False, separators=(",", ":"), default=str)

    def _put(self, item):
        if self._closed or len(self._buf) + self._inflight >= self.buffer_size:
            self._dropped(1)
            return False
        self._buf.append(item)
        self.counters["queued"] += 1
        if len(self._buf) == 1 or len(self._buf) >= self._limit:
            self._wake()  # the first starts the flush interval, a full batch goes now
        return True

    def _dropped(self, n):
        self.counters["dropped"] += n
        now = time.monotonic()
        if now - self._last_drop_log >= 5.0:
            self._last_drop_log = now
            log.warning("statusgw: buffer full or client closed: dropped=%d (capacity=%d)",
                        self.counters["dropped"], self.buffer_size)
        if self.on_drop:
            try:
                self.on_drop(self.counters["dropped"])
            except Exception:
                log.exception("statusgw: on_drop raised")

    def _step(self, due):
        """What the worker does next: ("stop", None); ("take", None); or
        ("wait", due), due being when a partial batch goes (None: wait for
        an update). Both clients set self._abort (an Event) to give up."""
        if self._abort.is_set():
            self._give_up()
            return "stop", None
        if not self._buf:
            return ("stop" if self._closed else "wait"), None
        if len(self._buf) >= self._limit or self._flushing or self._closed:
            return "take", None
        now = time.monotonic()
        due = due or now + self.flush_interval
        return ("take", None) if now >= due else ("wait", due)

    def _take(self):
        n = min(len(self._buf), self._limit)
        batch = [self._buf.popleft() for _ in range(n)]
        self._inflight += n
        return batch

    def _body(self, batch):
        return ("[" + ",".join(batch) + "]").encode("utf-8")

    def _headers(self):
        h = {"Content-Type": "application/json", "User-Agent": "statusgw-python"}
        if self.api_key:
            h["Authorization"] = "Bearer " + self.api_key
        return h

    def _settle(self, batch, status, headers, body):
        """The Outcome of sending batch (headers with lower-case names):
        status None means no answer came (connection refused or lost; body
        is then the error), so every update goes again later (their
        idempotency keys make a second delivery impossible)."""
        self._inflight -= len(batch)
        if (status is None) != self._down:
            self._down = status is None
            if self._down:
                log.warning("statusgw: gateway unreachable, updates kept and retried: url=%s error=%s",
                            self.url, body)
            else:
                log.info("statusgw: gateway reachable again: url=%s", self.url)
        if status == 202:
            self._backoff = 0.0
            return self._results(batch, body)
        if status is None or status >= 500 or status in (408, 429):
            delay = _retry_after(headers, body)
            if delay is None:
                self._backoff = min(RETRY_MAX_S, max(0.1, self._backoff * 2))
                delay = self._backoff * random.uniform(0.5, 1.0)
            self.counters["retried"] += len(batch)
            return Outcome(batch, delay)
        if status == 413 and len(batch) > 1:  # too large together: smaller requests from now on
            self._limit = max(1, len(batch) // 2)
            return Outcome(batch, 0.0)
        self.counters["rejected"] += len(batch)
        log.warning("statusgw: gateway refused %d updates: status=%s %s", len(batch), status,
                    _error_text(body))
        return Outcome()

    def _results(self, batch, body):
        try:
            results = json.loads(body)["results"]
        except (ValueError, KeyError, TypeError):
            log.warning("statusgw: unreadable bulk answer: %r", body[:200])
            self.counters["sent"] += len(batch)
            return Outcome()
        retry, delay = [], 0.0
        for item, r in zip(batch, results):
            err = r.get("error")
            if err is None:
                key = "filtered" if r.get("dropped") else "duplicates" if r.get("duplicate") else "sent"
                self.counters[key] += 1
            elif err.get("retry_after") is not None:
                retry.append(item)
                delay = max(delay, float(err["retry_after"]))
            else:
                self.counters["rejected"] += 1
                log.warning("statusgw: update refused: %s: %s", err.get("code"), err.get("message"))
        self.counters["retried"] += len(retry)
        return Outcome(retry, delay)

    def _requeue(self, items):
        """Put items back at the head of the buffer, in their order."""
        self._buf.extendleft(reversed(items))

    def _give_up(self):
        """Count what is left unsent (a close past its deadline)."""
        n = len(self._buf)
        self._buf.clear()
        if n:
            self.counters["unsent"] += n
            log.warning("statusgw: closed with updates unsent: unsent=%d", n)
        return n == 0

    def _wake(self):
        raise NotImplementedError


def _retry_after(headers, body):
    v = headers.get("retry-after") if headers else None
    if v is not None:
        try:
            return max(0.0, float(v))
        except ValueError:
            pass
    try:
        return float(json.loads(body)["error"]["retry_after"])
    except (ValueError, KeyError, TypeError):
        return None


def _error_text(body):
    try:
        e = json.loads(body)["error"]
        return "%s: %s" % (e.get("code"), e.get("message"))
    except (ValueError, KeyError, TypeError):
        return repr(body[:200])
