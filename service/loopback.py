"""The real service as a child process: gunicorn serving the app on a free loopback port (alone, or behind
its nginx front: `service.front`), ready when the `with` block starts and stopped (SIGTERM, then SIGKILL)
when it ends.

Used by the real-server tests and by `make bench-serve`, so both start, wait for and stop it the same way.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class GunicornServer:
    """`with GunicornServer(model) as srv:` -> srv.url answers /readyz 200 inside the block; SIGTERM after.
    With `front`, the way it is deployed: nginx on the port, gunicorn behind it (needs nginx installed). `root`:
    the source tree whose service runs (another revision's, for a benchmark's baseline)."""

    def __init__(self, model_path: str | Path, env: dict[str, str] | None = None, ready_timeout: float = 120,
                 front: bool = False, root: Path = ROOT):
        self.port, self.front = free_port(), front
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "CAPTIONER_MODEL": str(model_path), "PORT": str(self.port), "CAPTIONER_BIND": "127.0.0.1",
               "CAPTIONER_WORKERS": "1", **(env or {})}
        command = ["-m", "service.front"] if front else ["-m", "gunicorn", "-c", "service/gunicorn.conf.py",
                                                         "service.app:create_app()"]
        self.proc = subprocess.Popen([sys.executable, *command], cwd=root, env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            self._wait_ready(ready_timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {self.proc.returncode}")
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.3)
        raise TimeoutError("service did not become ready")

    def workers(self) -> list[int]:
        """The pids of gunicorn's worker processes: a changed list means a worker died and was replaced."""
        master = self.proc.pid
        if self.front:  # the front's child running gunicorn
            master = next((pid for pid in _children(master) if b"gunicorn" in _cmdline(pid)), -1)
        return _children(master)

    def nginx(self) -> list[int]:
        """The pids of the front's nginx processes (master and workers); [] without a front."""
        found = [pid for pid in _children(self.proc.pid) if _cmdline(pid).startswith(b"nginx")] if self.front else []
        return found + [w for pid in found for w in _children(pid)]

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)

    def __enter__(self) -> "GunicornServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _children(parent: int) -> list[int]:
    out = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
                out.append(int(pid))
    return sorted(out)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""
