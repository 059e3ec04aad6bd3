#!/usr/bin/env python3
"""A workflow, as the workflow executor of the original system reported it:
start with its step count, progress after each step ("workflow 3/7"),
completion with timing and cache hits, or an error with its duration.

    python3 contrib/examples/workflow.py --url http://127.0.0.1:4000 [--fail-at 5]
"""

import time

from _common import arguments, finish, statusgw

STEPS = ["fetch sources", "parse", "index symbols", "embed chunks", "rank", "summarize", "publish"]


def run(status, conv, name, fail_at=0, speed=1.0):
    total = len(STEPS)
    started = time.monotonic()
    status.workflow(conv, "Workflow %s started" % name, statusgw.build_workflow_metadata(
        name, 0, total, {"steps": STEPS}))
    cache_hits = 0
    for i, step in enumerate(STEPS, 1):
        status.planning(conv, "Step %d: %s" % (i, step), {"workflow": name, "step": step})
        time.sleep(0.05 / speed)
        if i == fail_at:
            status.error(conv, "Workflow %s failed at %s" % (name, step), statusgw.build_error_metadata(
                "step_failed", "%s raised: index out of date" % step,
                {"workflow": name, "step": i, "duration_ms": int((time.monotonic() - started) * 1000)}))
            return False
        cache_hits += i % 3 == 0
        status.workflow(conv, "Workflow %d/%d: %s done" % (i, total, step),
                        statusgw.build_workflow_metadata(name, i, total, {"step": step}))
        status.progress_percentage(conv, name, i, total)
    status.with_timing(conv, "workflow", "Workflow %s complete" % name, started, statusgw.build_workflow_metadata(
        name, total, total, {"cache_hits": cache_hits}))
    return True


def main():
    args = arguments(__doc__.split("\n\n")[0], fail_at=(int, 0, "fail at this step (1-7)"))
    status = statusgw.Client(args.url, api_key=args.key, source="workflow-executor")
    ok = run(status, args.conversation, "index-repository", args.fail_at, args.speed)
    print("workflow", "complete" if ok else "failed")
    return finish(status)


if __name__ == "__main__":
    raise SystemExit(main())
