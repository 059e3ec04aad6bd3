"""The metadata builders of the Status API, computed in the producer.

They give the same metadata as the gateway's `builders` plugin
(plugins/builders.lua): the caller's own keys are merged over the built
ones, except the computed timing and progress keys, and every built
metadata gets a `timestamp` unless the caller gave one.
"""

import datetime
import math

MAX_PARAM = 100  # bytes of a tool parameter's string value before it is cut
COMPUTED = ("duration_ms", "duration_human", "percentage", "progress")


def _timestamp():
    now = datetime.datetime.now(datetime.timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + "%03dZ" % (now.microsecond // 1000)


def _merge(built, extra):
    """built with the caller's keys over it (not over computed ones), stamped."""
    for k, v in (extra or {}).items():
        if k in COMPUTED and k in built:
            continue
        built[k] = v
    built.setdefault("timestamp", _timestamp())
    return built


def percentage(done, total):
    """Whole-number percentage of done/total; 0 when total is 0 or less."""
    if not isinstance(done, (int, float)) or not isinstance(total, (int, float)) or total <= 0:
        return 0
    return math.floor(done * 100 / total + 0.5)


def duration_human(ms):
    """"850ms" under a second, "1.5s" under a minute, "1.1m" beyond."""
    if ms < 1000:
        return "%dms" % math.floor(ms)
    if ms < 60000:
        return "%.1fs" % (ms / 1000)
    return "%.1fm" % (ms / 60000)


def _cut(s):
    """s cut to MAX_PARAM bytes, never inside a UTF-8 character, then "..."."""
    b = s.encode("utf-8")
    if len(b) <= MAX_PARAM:
        return s
    return b[:MAX_PARAM].decode("utf-8", "ignore") + "..."


def build_llm_metadata(model, provider, extra=None):
    return _merge({"model": model, "provider": provider}, extra)


def build_tool_metadata(tool_name, params=None, extra=None):
    if isinstance(params, dict):
        params = {k: _cut(v) if isinstance(v, str) else v for k, v in params.items()}
    return _merge({"tool": tool_name, "params": params}, extra)


def build_workflow_metadata(workflow_name, completed_steps=0, total_steps=0, extra=None):
    return _merge({
        "workflow": workflow_name,
        "progress": "%d/%d" % (completed_steps, total_steps),
        "percentage": percentage(completed_steps, total_steps),
    }, extra)


def build_error_metadata(error_type, message, extra=None):
    return _merge({"error_type": error_type, "message": message}, extra)


def timing_metadata(duration_ms, extra=None):
    ms = max(0, math.floor(duration_ms))
    return _merge({"duration_ms": ms, "duration_human": duration_human(ms)}, extra)


def progress_metadata(text, current, total, extra=None):
    """(metadata, text): the text gets " (30%)" appended."""
    pct = percentage(current, total)
    md = _merge({
        "current": current,
        "total": total,
        "percentage": pct,
        "progress": "%d/%d" % (current, total),
    }, extra)
    return md, "%s (%d%%)" % (text or "", pct)
