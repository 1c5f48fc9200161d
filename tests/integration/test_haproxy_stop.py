"""A normal stop of the local HAProxy (`buzzer up`, the tests) logs no [ALERT]: it is a
soft stop, which the master reports as workers exiting with code 0, not 143."""

from __future__ import annotations

import shutil
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from buzzer.haproxy import LocalFront, start_local_haproxy
from buzzer.ports import free_ports

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy not installed"),
]


class _Ok(BaseHTTPRequestHandler):
    # A stand-in backend: a backend that is down is an ALERT of its own.
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_a_normal_stop_logs_no_alert(tmp_path: Path) -> None:
    base = free_ports(6)
    backend = ThreadingHTTPServer(("127.0.0.1", base + 3), _Ok)
    threading.Thread(target=backend.serve_forever, daemon=True).start()
    front = LocalFront(
        state_dir=tmp_path,
        http_port=base,
        https_port=base + 1,
        stats_port=base + 2,
        ingest_ports=(base + 3,),
        push_port=base + 4,
        with_push=False,
        ingest_base_port=base + 3,
    )
    (tmp_path / "logs").mkdir()  # `buzzer up` makes it for all its processes
    hap = start_local_haproxy(front)
    try:
        # A request through it first: a stop must be quiet after traffic too.
        with urllib.request.urlopen(f"http://127.0.0.1:{base}/v1/openapi.json", timeout=10) as r:
            assert r.status == 200
        hap.stop()
    finally:
        backend.shutdown()
        backend.server_close()
    log = (tmp_path / "logs" / "haproxy.log").read_text()
    assert "exited with code 0" in log, log
    assert "[ALERT]" not in log, log
