"""Start the real statusgw on a free port for the client's tests."""

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import unittest
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", "..", ".."))
BIN = os.path.abspath(os.environ.get("STATUSGW_BIN", os.path.join(ROOT, "build", "statusgw")))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def lua(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, dict):
        return "{" + ", ".join("[%s] = %s" % (json.dumps(k), lua(x)) for k, x in v.items()) + "}"
    if isinstance(v, (list, tuple)):
        return "{" + ", ".join(lua(x) for x in v) + "}"
    return str(v)


class Gateway:
    """A statusgw process: Gateway(config, plugins=[...]).start(), .stop().
    plugins: names of the repository's plugins (copied) or (name, source)."""

    def __init__(self, config=None, plugins=(), port=None):
        self.dir = tempfile.mkdtemp(prefix="statusgw-py-")
        self.port = port or free_port()
        self.url = "http://127.0.0.1:%d" % self.port
        plugdir = os.path.join(self.dir, "plugins")
        os.mkdir(plugdir)
        for p in plugins:
            if isinstance(p, tuple):
                with open(os.path.join(plugdir, p[0] + ".lua"), "w") as f:
                    f.write(p[1])
            else:
                shutil.copy(os.path.join(ROOT, "plugins", p + ".lua"), plugdir)
        cfg = {"plugins_dir": plugdir, **(config or {})}
        self.config = os.path.join(self.dir, "statusgw.lua")
        with open(self.config, "w") as f:
            f.write("return {\n" + "".join("  %s = %s,\n" % (k, lua(v)) for k, v in cfg.items()) + "}\n")
        self.proc = None

    def start(self):
        log = open(os.path.join(self.dir, "statusgw.log"), "a")
        self.proc = subprocess.Popen([BIN, "--config", self.config, "--listen", "127.0.0.1:%d" % self.port],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)
        log.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.03)
        self.stop()
        raise RuntimeError("statusgw did not start: " + self.log())

    def log(self):
        with open(os.path.join(self.dir, "statusgw.log")) as f:
            return f.read()

    def stop(self, sig="TERM"):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate() if sig == "TERM" else self.proc.kill()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        log = self.log()
        for mark in ("AddressSanitizer", "LeakSanitizer", "runtime error:"):
            if mark in log:
                raise AssertionError("sanitizer report:\n" + log)

    def cleanup(self):
        self.stop("KILL")
        shutil.rmtree(self.dir, ignore_errors=True)

    def get(self, path):
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def post(self, path, body):
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def history(self, conv):
        status, body = self.get("/api/v1/conversations/%s/history?limit=10000" % conv)
        return body.get("updates", []) if status == 200 else []


def testdata_plugin(name):
    """(name, source) of a plugin the client suites share (contrib/clients/testdata)."""
    with open(os.path.join(HERE, "..", "..", "testdata", name + ".lua")) as f:
        return name, f.read()


class GatewayTest(unittest.TestCase):
    """A test case whose gateway (self.gw, when a test starts one) is stopped after it."""

    def setUp(self):
        self.gw = None

    def tearDown(self):
        if self.gw:
            self.gw.stop()
            self.gw.cleanup()
