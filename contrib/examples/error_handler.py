#!/usr/bin/env python3
"""Errors reported where they happen, as the original system's error
handler did: an exception caught with a conversation in its context is
published as an `error` update (visible to the conversation's watchers at
once), and the gateway's `errors` forwarder sends it on to a monitoring
service as a signed webhook (the role the original gave its error tracker).

This script plays both sides: it reports errors, and it runs the
monitoring service's receiver, which checks each webhook's Standard
Webhooks signature and prints the events. The gateway needs an endpoint
with the `errors` forwarder pointing at the receiver (the receiver's port
and secret are this script's --monitor-port and --secret):

    webhooks = { endpoints = { {
      name = "monitoring", url = "http://127.0.0.1:9911/hooks/statusgw",
      secrets = { "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw" },
      categories = { "error" }, forwarder = "errors", batch_delay_ms = 200,
    } } },

    python3 contrib/examples/error_handler.py --url http://127.0.0.1:4000
"""

import base64
import hashlib
import hmac
import http.server
import json
import threading
import time

from _common import arguments, finish, statusgw

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


class ErrorReporter:
    """report(exc, context): an error update when the context names a
    conversation; always a log line (the application's own logging)."""

    def __init__(self, status):
        self.status = status

    def report(self, exc, context):
        conv = context.get("conversation_id")
        meta = statusgw.build_error_metadata(type(exc).__name__, str(exc), {
            k: v for k, v in context.items() if k != "conversation_id"})
        print("error: %s: %s %s" % (type(exc).__name__, exc, context))
        return self.status.maybe_update(conv, conv is not None, "error", "Error: %s" % exc, meta)


def verify(secret, headers, body):
    """The Standard Webhooks signature check a receiver does."""
    key = base64.b64decode(secret.split("_", 1)[1])
    msg_id, ts = headers.get("webhook-id", ""), headers.get("webhook-timestamp", "0")
    if abs(time.time() - int(ts)) > 300:
        return False
    mac = hmac.new(key, ("%s.%s." % (msg_id, ts)).encode() + body, hashlib.sha256).digest()
    expected = "v1," + base64.b64encode(mac).decode()
    return any(hmac.compare_digest(expected, s) for s in headers.get("webhook-signature", "").split())


def monitoring_receiver(port, secret):
    """The monitoring service: prints each verified event; its `events` list."""
    events = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            ok = verify(secret, {k.lower(): v for k, v in self.headers.items()}, body)
            self.send_response(204 if ok else 401)
            self.end_headers()
            if ok:
                for ev in json.loads(body)["events"]:
                    events.append(ev)
                    print("monitoring got: [%s] %s (%s, conversation %s)" % (
                        ev["level"], ev["message"], ev.get("error_type"), ev.get("conversation_id")), flush=True)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, events


def main():
    args = arguments(__doc__.split("\n\n")[0], monitor_port=(int, 9911, "the monitoring receiver's port"),
                     secret=(str, SECRET, "the webhook endpoint's secret"),
                     wait=(float, 10.0, "seconds to wait for the webhooks"))
    server, events = monitoring_receiver(args.monitor_port, args.secret)
    status = statusgw.Client(args.url, api_key=args.key, source="error-handler")
    reporter = ErrorReporter(status)
    conv = args.conversation
    try:
        {"items": []}["cursor"]
    except KeyError as e:
        reporter.report(e, {"conversation_id": conv, "component": "pagination"})
    try:
        raise TimeoutError("upstream did not answer within 30 s")
    except TimeoutError as e:
        reporter.report(e, {"conversation_id": conv, "component": "llm-service", "attempt": 3})
    try:
        raise ValueError("no conversation in context: logged, not published")
    except ValueError as e:
        reporter.report(e, {"component": "startup"})
    rc = finish(status)
    deadline = time.monotonic() + args.wait
    while len(events) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    server.shutdown()
    print("monitoring received %d events" % len(events))
    return rc if len(events) >= 2 else 1


if __name__ == "__main__":
    raise SystemExit(main())
