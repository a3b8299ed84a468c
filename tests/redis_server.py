"""A real `redis-server` for the tests (Debian's, installed by scripts/setup-redis.sh): on a free
loopback port, with a password, its files in a temp folder, no persistence, in the foreground
(never daemonized), stopped on exit. It can be killed and started again on the same port, and
paused (SIGSTOP: a Redis that accepts connections and never answers) and resumed."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.helpers import free_port

PASSWORD = "redis-t3st-s3cret"  # in the URL only: the tests check it never reaches a log


def redis_binary() -> str:
    """redis-server's path; skips the test without it (fails under CI=true, where
    scripts/setup-redis.sh must have installed it)."""
    binary = shutil.which("redis-server")
    if binary is None:
        message = "needs redis-server (apt: scripts/setup-redis.sh, run by `make test`)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return binary


class RedisServer:
    def __init__(self, password: str = PASSWORD) -> None:
        self.binary = redis_binary()
        self.password = password
        self.port = free_port()
        self.folder = Path(tempfile.mkdtemp(prefix="redis-test-"))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 20.0) -> RedisServer:
        command = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder),
            "--save", "", "--appendonly", "no", "--daemonize", "no", "--requirepass", self.password,
            "--logfile", str(self.folder / "redis.log"),
        ]  # fmt: skip
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited: {self.log()}")
            if self.answers():
                return self
            time.sleep(0.05)
        raise RuntimeError(f"redis-server not answering on {self.port}: {self.log()}")

    def answers(self) -> bool:
        import redis

        try:
            with redis.Redis.from_url(self.url, socket_timeout=1, socket_connect_timeout=1) as client:
                return bool(client.ping())
        except redis.RedisError:
            return False

    def client(self):  # type: ignore[no-untyped-def]
        import redis

        return redis.Redis.from_url(self.url, socket_timeout=5)

    def kill(self) -> None:
        """SIGKILL: gone at once, with everything it held (no persistence)."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def pause(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def log(self) -> str:
        path = self.folder / "redis.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)  # a paused one cannot stop
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        shutil.rmtree(self.folder, ignore_errors=True)
