"""Test helpers: small Keras models of each kind the importer meets, sample images, and a
real `bentoml serve` subprocess."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"


def build_legacy_facenet_like(size: int = 64, seed: int = 1) -> Any:
    """The placeholder network: legacy FaceNet layout, small input so tests stay fast."""
    from modeling.placeholder import build_placeholder

    return build_placeholder((size, size), seed=seed)


def build_slow_classifier(size: int = 160, seed: int = 2) -> Any:
    """A classifier whose forward pass costs tens of ms on 2 cores (full-resolution convs), so
    that concurrent requests queue behind the model, as they do behind a real FaceNet."""
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape=(size, size, 3))
    x = inputs
    for _ in range(3):
        x = keras.layers.Conv2D(64, 3, padding="same", activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(x))


def noise_image(size: tuple[int, int], seed: int = 0) -> Image.Image:
    """An RGB image of uniform random pixels, `size` (width, height)."""
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype(np.uint8), "RGB")


def encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def image_bytes(
    fmt: str = "JPEG", size: tuple[int, int] = (120, 90), mode: str = "RGB", seed: int = 0, **save: Any
) -> bytes:
    image = noise_image(size, seed)
    return encode(image if mode == "RGB" else image.convert(mode), fmt, **save)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """`bentoml serve service:DeepfakeDetector` on a free port, ready on enter, stopped on exit."""

    def __init__(
        self, env: dict[str, str] | None = None, ready_timeout: float = 180.0, ready_path: str = "/readyz"
    ) -> None:
        self.ready_path = ready_path
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # A home of its own around the shared model store: `bentoml serve` wipes its home's
        # Prometheus directory at start, which would break the metrics of another server.
        store = Path(os.environ["BENTOML_HOME"])
        home = store / f"server-{self.port}"
        home.mkdir()
        (home / "models").symlink_to(store / "models")
        self.env = {**os.environ, "BENTOML_HOME": str(home), **(env or {})}
        self.ready_timeout = ready_timeout
        self.log_path = home / "serve.log"
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> ServerProcess:
        log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bentoml",
                "serve",
                "service:DeepfakeDetector",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
            ],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}{self.ready_path}", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.__exit__()
        raise RuntimeError(f"server not ready in {self.ready_timeout}s:\n{self.log()}")

    def __exit__(self, *_: object) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()

    def log(self, tail: int = 5000) -> str:
        return self.log_path.read_text(errors="replace")[-tail:]

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.post(f"{self.url}{path}", timeout=60, **kwargs)

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", timeout=60, **kwargs)


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid PNG header declaring a huge image, with a tiny (truncated) pixel stream."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
