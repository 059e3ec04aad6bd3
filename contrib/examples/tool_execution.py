#!/usr/bin/env python3
"""A tool's execution, as the tool executor of the original system reported
it: preparation and parameter validation, authorization, execution start
(timeout, retries), completion with timing and output size, a validation
error, an authorization error and an execution error with a retry.

    python3 contrib/examples/tool_execution.py --url http://127.0.0.1:4000
"""

import time

from _common import arguments, finish, statusgw

TOOLS = {
    "search_code": {"required": ["query"], "roles": {"user", "admin"}},
    "delete_repo": {"required": ["repo"], "roles": {"admin"}},
}


class ToolError(Exception):
    def __init__(self, kind, message):
        super().__init__(message)
        self.kind = kind


def run_tool(name, params, attempt, speed):
    """A stand-in for the tool: search_code times out once on "flaky"."""
    time.sleep(0.15 / speed)
    if params.get("query") == "flaky" and attempt == 1:
        raise ToolError("execution_timeout", "search backend did not answer within 2000 ms")
    return "\n".join("src/file%d.c: match for %s" % (i, params.get("query")) for i in range(12))


def execute(status, conv, name, params, role="user", speed=1.0, max_attempts=2):
    md = lambda **extra: statusgw.build_tool_metadata(name, params, extra)  # noqa: E731
    status.tool(conv, "Preparing %s" % name, md(stage="preparation"))
    spec = TOOLS.get(name)
    missing = [k for k in (spec or {}).get("required", []) if k not in params]
    if spec is None or missing:
        why = "unknown tool" if spec is None else "missing parameters: " + ", ".join(missing)
        status.error(conv, "Tool %s: invalid parameters" % name,
                     statusgw.build_error_metadata("validation_error", why, {"tool": name}))
        return None
    if role not in spec["roles"]:
        status.error(conv, "Tool %s: not authorized" % name, statusgw.build_error_metadata(
            "authorization_error", "role %s may not run %s" % (role, name), {"tool": name}))
        return None
    started = time.monotonic()
    for attempt in range(1, max_attempts + 1):
        status.tool(conv, "Executing %s" % name, md(attempt=attempt, timeout_ms=2000, max_retries=max_attempts - 1))
        try:
            output = run_tool(name, params, attempt, speed)
        except ToolError as e:
            retry = attempt < max_attempts
            status.error(conv, "Tool %s failed%s" % (name, ", retrying" if retry else ""),
                         statusgw.build_error_metadata(e.kind, str(e), {"tool": name, "attempt": attempt,
                                                                        "retryable": retry}))
            if retry:
                continue
            return None
        status.with_timing(conv, "tool", "%s complete" % name, started,
                           md(output_bytes=len(output.encode()), attempts=attempt))
        return output
    return None


def main():
    args = arguments(__doc__.split("\n\n")[0])
    status = statusgw.Client(args.url, api_key=args.key, source="tool-executor")
    conv, speed = args.conversation, args.speed
    execute(status, conv, "search_code", {"query": "status_update", "path": "src/" + "x" * 200}, speed=speed)
    execute(status, conv, "search_code", {"query": "flaky"}, speed=speed)   # times out once, then succeeds
    execute(status, conv, "search_code", {"path": "src/"}, speed=speed)     # validation error
    execute(status, conv, "delete_repo", {"repo": "statusgw"}, speed=speed)  # authorization error
    return finish(status)


if __name__ == "__main__":
    raise SystemExit(main())
