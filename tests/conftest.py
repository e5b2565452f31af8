"""Shared fixtures: a real HTTP server on 127.0.0.1 for the download tests (nothing else is contacted), and
one torch thread for the modules that train tiny models."""
import contextlib
import http.server
import os
import threading

import pytest
import torch


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves ``server.files``; honours ``Range: bytes=N-`` unless ``server.ignore_range``."""

    def do_GET(self):
        server = self.server
        server.requests.append((self.path, self.headers.get("Range")))
        body = server.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start, wanted = 0, self.headers.get("Range")
        if wanted and not server.ignore_range:
            start = int(wanted.removeprefix("bytes=").rstrip("-"))
            if start >= len(body):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        payload = body[start:]
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if server.cut_next:  # send half, then hang up: what a dropped connection looks like
            server.cut_next = False
            payload = payload[: len(payload) // 2]
        self.wfile.write(payload)

    def log_message(self, *args):  # keep test output quiet
        pass


@contextlib.contextmanager
def _serve(files):
    """Run an HTTP server on a free port of 127.0.0.1 serving ``{"/path": bytes}``."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.files, server.requests, server.cut_next, server.ignore_range = files, [], False, False
    server.url = lambda path: f"http://127.0.0.1:{server.server_port}{path}"
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)  # fast shutdown
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def serve():
    """``with serve({"/path": bytes}) as server``: ``server.url(path)``, ``server.requests`` (path, Range
    header) seen, and switches ``server.cut_next`` (hang up midway) and ``server.ignore_range``."""
    return _serve


if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)  # `make test` runs two workers on two cores: one thread each, no oversubscription


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread, and far slower on a busy machine with several."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
