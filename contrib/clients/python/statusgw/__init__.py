"""statusgw: status updates for a statusgw gateway, with the Status API of
the system statusgw grew from.

    import statusgw

    status = statusgw.Client("http://127.0.0.1:4000", source="llm-service")
    status.info("conv-123", "Processing complete", {"items": 100})
    status.tool("conv-123", "Executing search_code",
                statusgw.build_tool_metadata("search_code", {"q": "foo"}))

or, as the original module-level API, on a default client configured by
configure() or by STATUSGW_URL / STATUSGW_API_KEY:

    statusgw.info("conv-123", "Processing complete", {"items": 100})

Every call returns at once and never raises; see Client.
"""

import os
import threading

from .aio import AsyncClient
from .client import Client
from .core import CATEGORIES
from .metadata import (build_error_metadata, build_llm_metadata, build_tool_metadata,
                       build_workflow_metadata, duration_human, percentage)
from .tail import Event, atail, tail

__all__ = ["Client", "AsyncClient", "tail", "atail", "Event", "CATEGORIES", "configure", "default_client",
           "build_llm_metadata", "build_tool_metadata", "build_workflow_metadata",
           "build_error_metadata", "duration_human", "percentage"]

_default = None
_lock = threading.Lock()


def configure(url=None, **options):
    """Make the default client that the module-level calls use (closing the
    previous one). url defaults to $STATUSGW_URL, the key to $STATUSGW_API_KEY."""
    global _default
    with _lock:
        old, _default = _default, Client(url or os.environ.get("STATUSGW_URL", "http://127.0.0.1:4000"),
                                         **{"api_key": os.environ.get("STATUSGW_API_KEY"), **options})
    if old:
        old.close()
    return _default


def default_client():
    """The default client, made from the environment on first use."""
    return _default or configure()


def _delegate(name):
    def call(*args, **kwargs):
        return getattr(default_client(), name)(*args, **kwargs)
    call.__name__ = name
    call.__doc__ = "%s on the default client (see Client.%s)." % (name, name)
    return call


for _name in ("update", "with_timing", "progress_percentage", "bulk_update", "maybe_update",
              "flush", "stats") + CATEGORIES:
    globals()[_name] = _delegate(_name)
    __all__.append(_name)
