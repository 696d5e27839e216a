"""A FAKE of the Hugging Face hub's revision API, on loopback (the real hub cannot be reached here).

It answers only what ``controller.fingerprint.hub_revision`` asks: ``GET /api/{models|datasets}/
<org>/<name>/revision/main`` -> ``{"sha": ...}`` for the repositories it was given, 404 otherwise,
401 for the ones marked gated unless the request carries the right token. It counts requests, so
tests can check that an experiment asks once per id. The real response carries many more fields;
only ``sha`` is read (huggingface_hub/hf_api.py, ``repo_info`` -> ``ModelInfo.sha``).
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator
from contextlib import contextmanager

_PATH = re.compile(r"^/api/(models|datasets)/([\w.-]+/[\w.-]+)/revision/main$")


class FakeHub:
    def __init__(self, repos: dict[str, str], gated: dict[str, str] | None = None):
        self.repos = dict(repos)  # "models/org/name" or "datasets/org/name" -> sha
        self.gated = dict(gated or {})  # same keys -> token that opens them
        self.requests: list[str] = []


@contextmanager
def fake_hub(repos: dict[str, str], gated: dict[str, str] | None = None) -> Iterator[tuple[str, FakeHub]]:
    """(endpoint URL on 127.0.0.1, the fake's state) while the server runs."""
    hub = FakeHub(repos, gated)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet
            pass

        def do_GET(self):  # noqa: N802 - http.server API
            hub.requests.append(self.path)
            m = _PATH.match(self.path)
            key = f"{m.group(1)}/{m.group(2)}" if m else None
            token = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
            if key in hub.gated and token != hub.gated[key]:
                return self._send(401, {"error": "Access to this repository is restricted."})
            if key not in hub.repos:
                return self._send(404, {"error": "Repository not found"})
            return self._send(200, {"id": m.group(2), "sha": hub.repos[key]})

        def _send(self, code: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", hub
    finally:
        server.shutdown()
        server.server_close()
