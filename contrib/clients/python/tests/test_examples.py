"""contrib/examples, run as a user runs them, against the real gateway."""

import os
import subprocess
import sys
import unittest

from gateway import Gateway, GatewayTest, ROOT, free_port

EXAMPLES = os.path.join(ROOT, "contrib", "examples")


def run(example, gw, *args):
    r = subprocess.run([sys.executable, os.path.join(EXAMPLES, example), "--url", gw.url, "--speed", "20", *args],
                       capture_output=True, text=True, timeout=60)
    return r.returncode, r.stdout + r.stderr


class ExampleTests(GatewayTest):
    def history(self, conv):
        return self.gw.history(conv)

    def test_llm_request_lifecycle(self):
        self.gw = Gateway().start()
        rc, out = run("llm_request.py", self.gw, "--conversation", "ex-llm")
        self.assertEqual(0, rc, out)
        got = self.history("ex-llm")
        texts = [u["text"] for u in got]
        self.assertEqual(["LLM request started: gpt-4", "Retrying LLM request (attempt 2 of 3)", "Streaming response"],
                         texts[:3])
        self.assertIn("Streaming tokens (24%)", texts)
        done = got[-1]
        self.assertEqual("LLM request complete", done["text"])
        md = done["metadata"]
        self.assertEqual(("gpt-4", "openai", 182, 42, 224), (md["model"], md["provider"], md["prompt_tokens"],
                                                            md["completion_tokens"], md["total_tokens"]))
        self.assertRegex(md["duration_human"], r"^\d+ms$|^\d+\.\ds$")
        self.assertEqual({"llm-service"}, {u["source"] for u in got})

        rc, out = run("llm_request.py", self.gw, "--conversation", "ex-llm-fail", "--fail")
        self.assertEqual(0, rc, out)
        errors = [u for u in self.history("ex-llm-fail") if u["category"] == "error"]
        self.assertEqual(1, len(errors))
        self.assertEqual(("rate_limited", 3), (errors[0]["metadata"]["error_type"], errors[0]["metadata"]["attempts"]))

    def test_tool_execution(self):
        self.gw = Gateway().start()
        rc, out = run("tool_execution.py", self.gw, "--conversation", "ex-tool")
        self.assertEqual(0, rc, out)
        got = self.history("ex-tool")
        errors = [(u["metadata"]["error_type"], u["metadata"].get("retryable")) for u in got if u["category"] == "error"]
        self.assertEqual([("execution_timeout", True), ("validation_error", None), ("authorization_error", None)], errors)
        complete = [u for u in got if u["text"] == "search_code complete"]
        self.assertEqual(2, len(complete))
        self.assertEqual("x" * 96 + "...", complete[0]["metadata"]["params"]["path"][4:])
        self.assertGreater(complete[0]["metadata"]["output_bytes"], 0)
        self.assertEqual(2, complete[1]["metadata"]["attempts"])

    def test_workflow_progress(self):
        self.gw = Gateway().start()
        rc, out = run("workflow.py", self.gw, "--conversation", "ex-wf")
        self.assertEqual(0, rc, out)
        got = self.history("ex-wf")
        steps = [u["metadata"]["progress"] for u in got if u["category"] == "workflow"]
        self.assertEqual(["0/7", "1/7", "2/7", "3/7", "4/7", "5/7", "6/7", "7/7", "7/7"], steps)
        self.assertEqual("Workflow index-repository complete", got[-1]["text"])
        self.assertEqual((100, 2), (got[-1]["metadata"]["percentage"], got[-1]["metadata"]["cache_hits"]))
        rc, out = run("workflow.py", self.gw, "--conversation", "ex-wf-fail", "--fail-at", "5")
        self.assertEqual(0, rc, out)
        last = self.history("ex-wf-fail")[-1]
        self.assertEqual(("error", "step_failed", 5), (last["category"], last["metadata"]["error_type"],
                                                        last["metadata"]["step"]))

    def test_error_handler_forwards_to_monitoring(self):
        port = free_port()
        secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
        self.gw = Gateway({"webhooks": {"endpoints": [{
            "name": "monitoring", "url": "http://127.0.0.1:%d/hooks/statusgw" % port, "secrets": [secret],
            "categories": ["error"], "forwarder": "errors", "batch_delay_ms": 100}]}},
            plugins=["webhook_formats"]).start()
        rc, out = run("error_handler.py", self.gw, "--conversation", "ex-err", "--monitor-port", str(port))
        self.assertEqual(0, rc, out)
        self.assertIn("monitoring received 2 events", out)
        self.assertIn("monitoring got: [error] Error: upstream did not answer within 30 s (TimeoutError, conversation ex-err)", out)
        got = self.history("ex-err")
        self.assertEqual(["KeyError", "TimeoutError"], [u["metadata"]["error_type"] for u in got])

    def test_error_handler_fails_when_a_signature_is_wrong(self):
        port = free_port()
        self.gw = Gateway({"webhooks": {"endpoints": [{
            "name": "monitoring", "url": "http://127.0.0.1:%d/hooks/statusgw" % port,
            "secrets": ["whsec_" + "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFB"],
            "categories": ["error"], "forwarder": "errors", "batch_delay_ms": 100}]}},
            plugins=["webhook_formats"]).start()
        rc, out = run("error_handler.py", self.gw, "--conversation", "ex-err2", "--monitor-port", str(port),
                      "--wait", "1.5")
        self.assertEqual(1, rc, out)
        self.assertIn("monitoring received 0 events", out)


if __name__ == "__main__":
    unittest.main()
