"""The Python client against the real gateway: python3 -m unittest discover -s tests"""

import asyncio
import os
import re
import socket
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import statusgw  # noqa: E402
from gateway import Gateway, GatewayTest, free_port, testdata_plugin  # noqa: E402

TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")

def without_timestamp(md):
    md = dict(md)
    ts = md.pop("timestamp", None)
    assert ts is not None and TS.match(ts), "built metadata carries a timestamp: %r" % ts
    return md


class LostAnswerProxy:
    """Forwards to the gateway, but for the first `lose` requests closes the
    client's connection once the gateway has answered, instead of passing
    the answer on: the update is taken, the client cannot know it."""

    def __init__(self, port, lose=1):
        self.target, self.lose, self.requests = port, lose, 0
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = "http://127.0.0.1:%d" % self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        up = socket.create_connection(("127.0.0.1", self.target))
        c.settimeout(5)
        up.settimeout(5)
        try:
            while True:
                req = self._read_message(c)
                if not req:
                    return
                up.sendall(req)
                answer = self._read_message(up)
                self.requests += 1
                if self.requests <= self.lose:
                    return  # the gateway answered; the client never hears it
                c.sendall(answer)
        except OSError:
            return
        finally:
            c.close()
            up.close()

    @staticmethod
    def _read_message(c):
        """One HTTP message with a Content-Length (a request, or the answer)."""
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = c.recv(65536)
            if not chunk:
                return None
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        n = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))
        while len(body) < n:
            body += c.recv(65536)
        return head + b"\r\n\r\n" + body

    def close(self):
        self.sock.close()


class ClientTests(unittest.TestCase):
    def setUp(self):
        self.gw = None
        self.clients = []

    def tearDown(self):
        for c in self.clients:
            c.close(1)
        if self.gw:
            self.gw.stop()
            self.gw.cleanup()

    def client(self, url=None, **options):
        c = statusgw.Client(url or self.gw.url, **options)
        self.clients.append(c)
        return c

    def start(self, config=None, plugins=(), port=None):
        self.gw = Gateway(config, plugins, port).start()
        return self.gw

    def test_every_helper_delivers_the_builders_metadata(self):
        self.start()
        c = self.client(source="py-test")
        conv = "py-helpers"
        for cat in statusgw.CATEGORIES:
            self.assertTrue(getattr(c, cat)(conv, "a %s update" % cat, {"k": cat}))
        c.update(conv, "info", "llm", statusgw.build_llm_metadata("gpt-4", "openai", {"priority": "high"}))
        c.update(conv, "tool", "tool", statusgw.build_tool_metadata("search_code", {"q": "x" * 150, "n": 3}))
        c.update(conv, "workflow", "wf", statusgw.build_workflow_metadata("deploy", 3, 7))
        c.update(conv, "workflow", "wf0", statusgw.build_workflow_metadata("empty", 0, 0))
        c.update(conv, "error", "err", statusgw.build_error_metadata("timeout", "took too long", {"attempt": 2}))
        c.with_timing(conv, "info", "Import complete", time.monotonic() - 1.5, {"records_imported": 1000})
        c.progress_percentage(conv, "Processing items", 3, 10, {"current_item": "i3"})
        self.assertEqual(2, c.bulk_update(conv, [{"category": "info", "text": "b1"}, ("planning", "b2", {"x": 1})]))
        self.assertFalse(c.maybe_update(conv, False, "info", "never"))
        self.assertFalse(c.maybe_update(None, True, "info", "never"))
        self.assertTrue(c.maybe_update(conv, True, "info", "maybe"))
        self.assertTrue(c.flush(10))

        got = self.gw.history(conv)
        self.assertEqual(list(range(1, len(got) + 1)), [u["seq"] for u in got])
        by_text = {u["text"]: u for u in got}
        self.assertNotIn("never", by_text)
        for cat in statusgw.CATEGORIES:
            u = by_text["a %s update" % cat]
            self.assertEqual((cat, {"k": cat}, "py-test"), (u["category"], u["metadata"], u["source"]))
        self.assertEqual({"model": "gpt-4", "provider": "openai", "priority": "high"},
                         without_timestamp(by_text["llm"]["metadata"]))
        self.assertEqual({"tool": "search_code", "params": {"q": "x" * 100 + "...", "n": 3}},
                         without_timestamp(by_text["tool"]["metadata"]))
        self.assertEqual({"workflow": "deploy", "progress": "3/7", "percentage": 43},
                         without_timestamp(by_text["wf"]["metadata"]))
        self.assertEqual({"workflow": "empty", "progress": "0/0", "percentage": 0},
                         without_timestamp(by_text["wf0"]["metadata"]))
        self.assertEqual({"error_type": "timeout", "message": "took too long", "attempt": 2},
                         without_timestamp(by_text["err"]["metadata"]))
        timed = without_timestamp(by_text["Import complete"]["metadata"])
        self.assertGreaterEqual(timed["duration_ms"], 1500)
        self.assertLess(timed["duration_ms"], 3000)
        self.assertRegex(timed["duration_human"], r"^(1\.[5-9]|2\.\d)s$")
        self.assertEqual(1000, timed["records_imported"])
        prog = by_text["Processing items (30%)"]
        self.assertEqual(("progress", {"current": 3, "total": 10, "percentage": 30, "progress": "3/10",
                                       "current_item": "i3"}),
                         (prog["category"], without_timestamp(prog["metadata"])))
        self.assertEqual(("planning", {"x": 1}), (by_text["b2"]["category"], by_text["b2"]["metadata"]))
        s = c.stats()
        self.assertEqual((len(got), 0, 0, 0), (s["sent"], s["dropped"], s["rejected"], s["queued"]))

    def test_builders_match_the_gateways_builders(self):
        """The same figures through the gateway's own builders plugin."""
        gw = self.start(plugins=["builders"])
        conv = "py-cross"
        samples = [0, 1, 849.6, 850, 999, 1000, 1049, 1050, 1150, 1250, 1350, 1449, 1450, 1500, 59949,
                   59950, 59999, 60000, 66000, 89999, 90000, 3600000]
        for ms in samples:
            status, _ = gw.post("/api/v1/status", {"conversation_id": conv, "category": "info", "text": str(ms),
                                                   "builder": "timing", "args": {"duration_ms": ms}})
            self.assertEqual(202, status)
        for done, total in [(1, 3), (2, 3), (1, 8), (5, 8), (0, 0), (7, 7), (1, 200)]:
            gw.post("/api/v1/status", {"conversation_id": conv, "category": "progress", "text": "p",
                                       "builder": "progress", "args": {"current": done, "total": total}})
        got = gw.history(conv)
        timing = [u["metadata"] for u in got if u["category"] == "info"]
        mine = [without_timestamp(statusgw.metadata.timing_metadata(ms)) for ms in samples]
        self.assertEqual(mine, [{k: m[k] for k in ("duration_ms", "duration_human")} for m in timing])
        prog = [u for u in got if u["category"] == "progress"]
        for u, (done, total) in zip(prog, [(1, 3), (2, 3), (1, 8), (5, 8), (0, 0), (7, 7), (1, 200)]):
            md, text = statusgw.metadata.progress_metadata("p", done, total)
            self.assertEqual((without_timestamp(md), text), (without_timestamp(u["metadata"]), u["text"]))

    def test_fire_and_forget_while_the_gateway_is_down(self):
        port = free_port()
        c = self.client("http://127.0.0.1:%d" % port, flush_interval=0.05)
        began = time.monotonic()
        for i in range(50):
            self.assertTrue(c.info("py-down", "u%d" % i))
        self.assertLess(time.monotonic() - began, 0.5, "50 calls return at once")
        time.sleep(0.5)  # the worker has failed to connect, and backs off
        self.assertEqual(50, c.stats()["queued"])
        self.start(port=port)
        self.assertTrue(c.flush(15))
        got = self.gw.history("py-down")
        self.assertEqual(["u%d" % i for i in range(50)], [u["text"] for u in got])
        self.assertEqual(50, c.stats()["sent"])

    def test_a_retry_after_a_lost_answer_is_not_delivered_twice(self):
        self.start()
        proxy = LostAnswerProxy(self.gw.port, lose=1)
        try:
            c = self.client(proxy.url, flush_interval=0.02)
            for i in range(20):
                c.tool("py-lost", "t%d" % i)
            self.assertTrue(c.flush(15))
        finally:
            proxy.close()
        self.assertGreaterEqual(proxy.requests, 2, "the first answer was lost, the batch went again")
        got = self.gw.history("py-lost")
        self.assertEqual(["t%d" % i for i in range(20)], [u["text"] for u in got])
        s = c.stats()
        self.assertEqual(20, s["sent"] + s["duplicates"])
        self.assertGreaterEqual(s["duplicates"], 1)

    def test_refused_items_are_retried_after_retry_after(self):
        self.start(plugins=[testdata_plugin("busy_once")])
        c = self.client(flush_interval=0.02)
        for t in ("ok1", "busy1", "ok2", "busy2"):
            c.info("py-busy", t)
        c.update("py-busy", "no-such-category", "bad")
        began = time.monotonic()
        self.assertTrue(c.flush(15))
        self.assertGreaterEqual(time.monotonic() - began, 0.9, "waited for Retry-After")
        texts = [u["text"] for u in self.gw.history("py-busy")]
        self.assertEqual(["busy1", "busy2", "ok1", "ok2"], sorted(texts))
        s = c.stats()
        self.assertEqual((4, 2, 1), (s["sent"], s["retried"], s["rejected"]))

    def test_overflow_is_counted_and_logged(self):
        drops = []
        c = self.client("http://127.0.0.1:%d" % free_port(), buffer_size=10, on_drop=drops.append)
        with self.assertLogs("statusgw", "WARNING") as logs:
            results = [c.info("py-full", "u%d" % i) for i in range(25)]
        self.assertEqual([True] * 10 + [False] * 15, results)
        self.assertEqual(15, c.stats()["dropped"])
        self.assertEqual(list(range(1, 16)), drops)
        self.assertTrue(any("dropped=1" in m for m in logs.output))

    def test_close_sends_what_is_queued(self):
        self.start()
        c = self.client(flush_interval=60, batch_size=1000)
        for i in range(30):
            c.info("py-close", "u%d" % i)
        self.assertEqual([], self.gw.history("py-close"), "nothing sent before the interval")
        self.assertTrue(c.close(10))
        self.assertEqual(30, len(self.gw.history("py-close")))
        self.assertFalse(c.info("py-close", "after close"))
        self.assertEqual(1, c.stats()["dropped"])

    def test_close_past_its_deadline_counts_what_is_unsent(self):
        c = self.client("http://127.0.0.1:%d" % free_port())
        for i in range(5):
            c.info("py-gone", "u%d" % i)
        began = time.monotonic()
        self.assertFalse(c.close(0.5))
        self.assertLess(time.monotonic() - began, 5)
        self.assertEqual(5, c.stats()["unsent"])

    def test_calls_never_raise(self):
        self.start()
        c = self.client()
        loop = {}
        loop["self"] = loop
        with self.assertLogs("statusgw", "ERROR"):
            self.assertFalse(c.info("py-safe", "circular", loop))
        self.assertTrue(c.info("py-safe", "not json", {"when": object()}))
        self.assertFalse(c.progress_percentage("py-safe", "p", "x", None))
        self.assertTrue(c.flush(10))
        got = self.gw.history("py-safe")
        self.assertEqual(["not json"], [u["text"] for u in got])

    def test_tail_resumes_across_a_restart(self):
        store = {"store": "sqlite", "store_path": "tail.db"}
        gw = self.start(store)
        events, stop = [], threading.Event()

        def follow():
            for ev in statusgw.tail(gw.url, ["py-tail-a", "py-tail-b"], reconnect_s=0.1):
                events.append(ev)
                if stop.is_set():
                    return

        threading.Thread(target=follow, daemon=True).start()
        time.sleep(0.3)
        c = self.client(flush_interval=0.01)
        for i in range(5):
            c.info("py-tail-a" if i % 2 else "py-tail-b", "u%d" % i)
        self.assertTrue(c.flush(10))
        wait_until(lambda: len(events) >= 5)
        gw.stop()
        for i in range(5, 8):  # queued while the gateway is down
            c.info("py-tail-a", "u%d" % i)
        gw.start()
        self.assertTrue(c.flush(15))
        wait_until(lambda: len(events) >= 8)
        stop.set()
        c.info("py-tail-a", "last")
        c.flush(5)
        per_conv = lambda conv: [e.data["text"] for e in events[:8] if e.data["conversation_id"] == conv]
        self.assertEqual(["u1", "u3", "u5", "u6", "u7"], per_conv("py-tail-a"))
        self.assertEqual(["u0", "u2", "u4"], per_conv("py-tail-b"))
        self.assertEqual({"status_update"}, {e.type for e in events})


def wait_until(cond, timeout=10):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.02)


class AsyncClientTests(GatewayTest):
    def test_updates_and_helpers_are_delivered(self):
        self.gw = Gateway().start()

        async def main():
            async with statusgw.AsyncClient(self.gw.url, source="py-async") as c:
                for i in range(250):
                    c.info("py-aio", "u%d" % i)
                c.progress_percentage("py-aio-p", "half", 1, 2)
                c.with_timing("py-aio-p", "tool", "timed", time.monotonic() - 0.85)
                self.assertTrue(await c.flush(10))
                return c

        c = asyncio.run(main())
        got = self.gw.history("py-aio") + []
        self.assertEqual(100, len(got), "history_size keeps the last 100")
        self.assertEqual("u249", got[-1]["text"])
        self.assertEqual(250, got[-1]["seq"])
        p = self.gw.history("py-aio-p")
        self.assertEqual("half (50%)", p[0]["text"])
        self.assertRegex(p[1]["metadata"]["duration_human"], r"^(8[5-9]\d|9\d\d)ms$")
        self.assertEqual(252, c.stats()["sent"])

    def test_down_then_up_and_lost_answers(self):
        port = free_port()

        async def main():
            c = statusgw.AsyncClient("http://127.0.0.1:%d" % port, flush_interval=0.02)
            began = time.monotonic()
            for i in range(40):
                c.error("py-aio-down", "e%d" % i)
            self.assertLess(time.monotonic() - began, 0.5)
            await asyncio.sleep(0.4)
            self.gw = await asyncio.to_thread(lambda: Gateway(port=port).start())
            self.assertTrue(await c.flush(15))
            proxy = LostAnswerProxy(port, lose=1)
            c2 = statusgw.AsyncClient(proxy.url, flush_interval=0.02)
            for i in range(10):
                c2.info("py-aio-lost", "l%d" % i)
            self.assertTrue(await c2.aclose(15))
            proxy.close()
            self.assertTrue(await c.aclose(5))
            return c, c2

        c, c2 = asyncio.run(main())
        self.assertEqual(["e%d" % i for i in range(40)], [u["text"] for u in self.gw.history("py-aio-down")])
        self.assertEqual(["l%d" % i for i in range(10)], [u["text"] for u in self.gw.history("py-aio-lost")])
        self.assertGreaterEqual(c2.stats()["duplicates"], 1)
        self.assertFalse(c2.info("py-aio-lost", "after close"))


class AsyncTailTests(GatewayTest):
    def test_atail_follows_and_resumes_across_a_restart(self):
        self.gw = Gateway({"store": "sqlite", "store_path": "atail.db"}).start()

        async def main():
            got = []

            async def follow():
                async for ev in statusgw.atail(self.gw.url, ["py-atail"], reconnect_s=0.1):
                    got.append(ev)

            task = asyncio.get_running_loop().create_task(follow())
            await asyncio.sleep(0.3)
            async with statusgw.AsyncClient(self.gw.url, flush_interval=0.01) as c:
                for i in range(3):
                    c.info("py-atail", "u%d" % i)
                self.assertTrue(await c.flush(10))
                await wait_async(lambda: len(got) >= 3)
                await asyncio.to_thread(self.gw.stop)
                c.info("py-atail", "u3")  # queued while the gateway is down
                await asyncio.to_thread(self.gw.start)
                self.assertTrue(await c.flush(15))
                await wait_async(lambda: len(got) >= 4)
            task.cancel()
            return got

        got = asyncio.run(main())
        self.assertEqual(["u0", "u1", "u2", "u3"], [e.data["text"] for e in got])
        self.assertEqual([1, 2, 3, 4], [e.data["seq"] for e in got])

    def test_atail_gives_up_on_a_refused_stream(self):
        self.gw = Gateway().start()

        async def main():
            async for _ in statusgw.atail(self.gw.url, ["bad id!"]):
                pass

        with self.assertRaisesRegex(ValueError, "invalid_conversation_id"):
            asyncio.run(main())


async def wait_async(cond, timeout=10):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.02)


class ModuleAPITests(unittest.TestCase):
    def test_the_module_level_calls_use_the_default_client(self):
        gw = Gateway().start()
        try:
            statusgw.configure(gw.url, flush_interval=0.01)
            statusgw.info("py-mod", "Processing complete", {"items": 100})
            statusgw.workflow("py-mod", "Workflow 3/7", statusgw.build_workflow_metadata("w", 3, 7))
            self.assertTrue(statusgw.flush(10))
            self.assertEqual(["Processing complete", "Workflow 3/7"], [u["text"] for u in gw.history("py-mod")])
            self.assertEqual(2, statusgw.stats()["sent"])
            statusgw.default_client().close()
        finally:
            gw.stop()
            gw.cleanup()


if __name__ == "__main__":
    unittest.main()
