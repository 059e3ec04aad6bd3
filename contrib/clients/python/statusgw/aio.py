"""The asyncio client: a task on the running loop sends the buffer."""

import asyncio
import ssl
import time
import urllib.parse

from .core import StatusAPI, log


async def _read_response(reader):
    """(status, headers with lower-case names, body) of one HTTP/1.1 answer."""
    line = await reader.readline()
    parts = line.decode("latin-1").split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
        raise ValueError("not an HTTP answer: %r" % line[:80])
    headers = {}
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        k, _, v = line.decode("latin-1").partition(":")
        headers[k.strip().lower()] = v.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            size = int((await reader.readline()).split(b";")[0], 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                break
            body += chunk[:-2]
    else:
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(parts[1]), headers, body


class AsyncClient(StatusAPI):
    """Status updates from asyncio code, fire and forget.

        async with statusgw.AsyncClient("http://127.0.0.1:4000", source="tools") as status:
            status.info("conv-123", "Processing complete", {"items": 100})

    The Status API calls are plain (not coroutines) and return at once; a
    task on the running loop sends the buffer, as Client's thread does.
    `await flush()` and `await aclose()` (the end of `async with`) wait for
    what is queued, within a deadline.
    """

    def __init__(self, url="http://127.0.0.1:4000", **options):
        super().__init__(url, **options)
        u = urllib.parse.urlsplit(self.url)
        self._host, self._path = u.hostname, u.path.rstrip("/")
        self._ssl = ssl.create_default_context() if u.scheme == "https" else None
        self._port = u.port or (443 if self._ssl else 80)
        self._work = asyncio.Event()
        self._abort = asyncio.Event()
        self._settled = asyncio.Condition()
        self._flushing = 0
        self._task = None
        self._stream = None

    async def __aenter__(self):
        self._start()
        return self

    async def __aexit__(self, *exc):
        await self.aclose()

    def _start(self):
        if self._task is None and not self._closed:
            self._task = asyncio.get_running_loop().create_task(self._run())

    def _wake(self):
        self._start()
        self._work.set()

    async def flush(self, timeout=5.0):
        """Wait until everything queued so far is answered; True when it was
        within timeout seconds."""
        self._flushing += 1
        self._work.set()
        try:
            async with self._settled:
                await asyncio.wait_for(self._settled.wait_for(lambda: not self._buf and not self._inflight), timeout)
            return True
        except asyncio.TimeoutError:
            return False
        finally:
            self._flushing -= 1

    async def aclose(self, timeout=5.0):
        """Stop taking updates, send what is queued within timeout seconds.
        True when nothing was left unsent."""
        self._closed = True
        self._work.set()
        drained = await self.flush(timeout) if self._task else not self._buf
        self._abort.set()
        self._work.set()
        if self._task:
            try:
                await asyncio.wait_for(self._task, self.request_timeout + 1)
            except asyncio.TimeoutError:
                pass
        self._give_up()
        return drained

    async def _next_batch(self):
        due = None
        while True:
            what, due = self._step(due)
            if what != "wait":
                return self._take() if what == "take" else None
            self._work.clear()
            try:
                await asyncio.wait_for(self._work.wait(), None if due is None else due - time.monotonic())
            except asyncio.TimeoutError:
                pass

    async def _run(self):
        while True:
            batch = await self._next_batch()
            if batch is None:
                break
            status, headers, body = await self._send(batch)
            out = self._settle(batch, status, headers, body)
            self._requeue(out.retry)
            async with self._settled:
                self._settled.notify_all()
            if out.retry and out.delay > 0:
                try:
                    await asyncio.wait_for(self._abort.wait(), out.delay)
                except asyncio.TimeoutError:
                    pass
        self._disconnect()

    def _disconnect(self):
        if self._stream:
            self._stream[1].close()
            self._stream = None

    async def _send(self, batch):
        body = self._body(batch)
        head = "POST %s/api/v1/status/bulk HTTP/1.1\r\nHost: %s:%d\r\nContent-Length: %d\r\n" % (
            self._path, self._host, self._port, len(body))
        head += "".join("%s: %s\r\n" % kv for kv in self._headers().items()) + "\r\n"
        try:
            if self._stream is None:
                self._stream = await asyncio.wait_for(
                    asyncio.open_connection(self._host, self._port, ssl=self._ssl), self.request_timeout)
            reader, writer = self._stream
            writer.write(head.encode("latin-1") + body)
            await writer.drain()
            status, headers, data = await asyncio.wait_for(_read_response(reader), self.request_timeout)
            if headers.get("connection", "").lower() == "close":
                self._disconnect()
            return status, headers, data
        except (OSError, ValueError, asyncio.TimeoutError, asyncio.IncompleteReadError) as e:
            self._disconnect()
            log.debug("statusgw: bulk request failed: %s", e)
            return None, {}, str(e) or type(e).__name__
