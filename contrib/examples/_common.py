"""What the examples share: the client from contrib/clients/python (or an
installed one), and their command line."""

import argparse
import os
import sys
import uuid

try:
    import statusgw  # installed: pip install contrib/clients/python
except ImportError:
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "clients", "python"))
    import statusgw  # noqa: F401


def arguments(description, **extra):
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--url", default=os.environ.get("STATUSGW_URL", "http://127.0.0.1:4000"),
                   help="the gateway (default $STATUSGW_URL, else http://127.0.0.1:4000)")
    p.add_argument("--key", default=os.environ.get("STATUSGW_API_KEY"), help="API key (default $STATUSGW_API_KEY)")
    p.add_argument("--conversation", default="demo-" + uuid.uuid4().hex[:8], help="conversation id")
    p.add_argument("--speed", type=float, default=1.0, help="how fast the simulated work runs (2 = twice as fast)")
    for name, (kind, default, text) in extra.items():
        if kind is bool:
            p.add_argument("--" + name.replace("_", "-"), action="store_true", help=text)
        else:
            p.add_argument("--" + name.replace("_", "-"), type=kind, default=default, help=text)
    args = p.parse_args()
    print("conversation %s on %s; watch it with:  statusgw tail %s --url %s"
          % (args.conversation, args.url, args.conversation, args.url), flush=True)
    return args


def finish(status):
    """Send what is queued and say what happened; the exit status."""
    drained = status.close(10)
    s = status.stats()
    print("sent=%d rejected=%d dropped=%d unsent=%d" % (s["sent"], s["rejected"], s["dropped"], s["unsent"]))
    return 0 if drained and not s["rejected"] else 1
