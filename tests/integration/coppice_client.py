"""A tiny HTTP client for the integration tests (standard library only), plus a server runner."""
import gzip
import http.client
import json
import os
import signal
import subprocess
import time
import urllib.parse


class Response:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.raw = body
        enc = headers.get("content-encoding", "")
        self.body = gzip.decompress(body) if enc == "gzip" and body else body

    def json(self):
        return json.loads(self.body)

    @property
    def text(self):
        return self.body.decode()


class Client:
    def __init__(self, url, token, gzip_ok=False, runtime=None):
        self.runtime = runtime  # sent as spawn's `runtime` (our extension) when set
        u = urllib.parse.urlparse(url)
        self.host, self.port = u.hostname, u.port
        self.token = token
        self.gzip_ok = gzip_ok

    def request(self, method, path, params=None, body=None, headers=None, timeout=60):
        if params:
            path += "?" + urllib.parse.urlencode(params, doseq=True, safe="/")
        h = {"Accept-Encoding": "gzip" if self.gzip_ok else "identity"}
        if self.token is not None:
            h["Authorization"] = f"Bearer {self.token}"
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            h["Content-Type"] = "application/json"
        h.update(headers or {})
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=h)
            r = conn.getresponse()
            data = r.read()
            return Response(r.status, {k.lower(): v for k, v in r.getheaders()}, data)
        finally:
            conn.close()

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, body=None, **kw):
        return self.request("POST", path, body=body, **kw)

    # Helpers for runs.
    def spawn(self, image, command, **fields):
        body = {"image": image, "command": command}
        body.setdefault("shell", True)
        if self.runtime:
            body["runtime"] = self.runtime
        body.update(fields)
        r = self.post("/v1/instances", body)
        assert r.status == 201, r.body
        return r.json()["uuid"]

    def wait(self, op, timeout=60):
        deadline = time.time() + timeout
        while time.time() < deadline:
            r = self.get(f"/v1/operations/{op}")
            assert r.status == 200, r.body
            j = r.json()
            if j["status"] in ("SUCCESS", "FAILED", "CANCELLED"):
                return j
            time.sleep(0.02)
        raise TimeoutError(op)

    def run(self, image, command, **fields):
        fields.setdefault("disposable", False)
        return self.wait(self.spawn(image, command, **fields))

    def follow(self, op):
        """Yields op's events as the server streams them (`follow=1`), until the stream ends."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        try:
            conn.request("GET", f"/v1/operations/{op}/events?follow=1",
                         headers={"Authorization": f"Bearer {self.token}",
                                  "Accept": "text/event-stream"})
            r = conn.getresponse()
            assert r.status == 200 and r.getheader("Content-Type") == "text/event-stream"
            buf = b""
            while chunk := r.read1(65536):
                buf += chunk
                while b"\n\n" in buf:
                    frame, buf = buf.split(b"\n\n", 1)
                    yield from parse_sse(frame.decode() + "\n\n")
        finally:
            conn.close()

    def events(self, op, **params):
        r = self.get(f"/v1/operations/{op}/events", params=params or None)
        assert r.status == 200, r.body
        return parse_sse(r.text)

    def upload(self, data):
        r = self.post("/v1/files", data, headers={"Content-Type": "application/octet-stream"})
        assert r.status == 201, r.body
        return r.json()


def parse_sse(text):
    events = []
    for frame in text.split("\n\n"):
        fields = {}
        for line in frame.split("\n"):
            if not line or line.startswith(":"):
                continue
            k, _, v = line.partition(":")
            fields[k] = v[1:] if v.startswith(" ") else v
        if "data" in fields:
            events.append(json.loads(fields["data"]))
    return events


def stdout_of(op):
    s = op["metadata"]["result"]["stdout"]
    if s["encoding"] == "base64":
        import base64
        return base64.b64decode(s["value"]).decode(errors="replace")
    return s["value"]


class Server:
    def __init__(self, binary, data_dir, extra_args=()):
        self.binary = binary
        self.data_dir = data_dir
        self.extra_args = list(extra_args)
        self.proc = None
        self.port = None

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def start(self):
        self.proc = subprocess.Popen(
            [self.binary, "serve", "--listen", "127.0.0.1:0", "--data-dir", str(self.data_dir),
             "--log-level", "warn", *self.extra_args],
            stdout=subprocess.PIPE, stderr=open(os.path.join(self.data_dir, "server.log"), "a"),
            text=True)
        line = self.proc.stdout.readline()
        assert line.startswith("listening on port"), f"server did not start: {line!r}"
        self.port = int(line.split()[-1])

    def stop(self, sig=signal.SIGTERM, timeout=30):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=timeout)
        self.proc = None

    def kill9(self):
        self.proc.kill()
        self.proc.wait()
        self.proc = None
