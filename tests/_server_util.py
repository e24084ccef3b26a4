"""Start a real facematch server (a uvicorn subprocess on 127.0.0.1) for HTTP tests."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

KEYS = {
    "admin": "admin-key-0123456789",
    "match": "match-key-0123456789",
    "enroll": "enroll-key-0123456789",
    "embed": "embed-key-0123456789",
}
API_KEYS_JSON = json.dumps(
    [
        {"name": "ops", "key": KEYS["admin"], "scopes": ["admin"]},
        {"name": "kiosk", "key": KEYS["match"], "scopes": ["match"]},
        {"name": "registrar", "key": KEYS["enroll"], "scopes": ["enroll"]},
        {"name": "research", "key": KEYS["embed"], "scopes": ["embed", "match"]},
    ]
)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def auth(scope: str = "admin") -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[scope]}"}


class Server:
    """``python -m facematch.server`` (the ``facematch serve`` command) in a subprocess."""

    def __init__(
        self, tmp: Path, *, gallery: Path | None = None, keys: bool = True, log_level: str = "warning", **settings: Any
    ) -> None:
        self.port = free_port()
        self.log_level = log_level
        self.url = f"http://127.0.0.1:{self.port}"
        self.gallery = gallery
        self.log_path = tmp / f"server-{self.port}.log"
        keep = ("FACEMATCH_SHARED", "FACEMATCH_CACHE_DIR", "FACEMATCH_CONFIG_DIR")  # data, and the per-user folders
        env = {k: v for k, v in os.environ.items() if not k.startswith("FACEMATCH_") or k in keep}
        env["FACEMATCH_THREADS"] = env.get("FACEMATCH_THREADS", "2")
        if keys:
            env["FACEMATCH_API_KEYS"] = API_KEYS_JSON
        for name, value in settings.items():
            env[f"FACEMATCH_{name.upper()}"] = str(value).lower() if isinstance(value, bool) else str(value)
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 90.0) -> Server:
        cmd = [sys.executable, "-m", "facematch.server", "--port", str(self.port), "--log-level", self.log_level]
        if self.gallery is not None:
            cmd += ["--gallery", str(self.gallery)]
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(cmd, env=self.env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                r = httpx.get(f"{self.url}/readyz", timeout=2.0)
                if r.status_code == 200:
                    return self
                if r.json().get("status") == "failed":
                    raise RuntimeError(f"server failed to load: {r.json()}\n{self.log()}")
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server not ready after {timeout} s:\n{self.log()}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self._log.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if hasattr(self, "_log") and not self._log.closed:
            self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=kwargs.pop("timeout", 60.0), **kwargs)

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
