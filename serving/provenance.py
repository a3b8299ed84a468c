"""Provenance beside the verdict: what the uploaded file itself declares about how it was made.

Three things are read from the bytes already received (no network, under the upload's byte
limit, in the decode thread: off the event loop):

- **C2PA Content Credentials** (`c2pa-python`, the Content Authenticity Initiative's own
  reader): present, valid (the library's validation state and failure codes: a changed pixel
  is `assertion.dataHash.mismatch`), signer (the signing certificate's subject and issuer),
  trusted (the signer chains to the operator's trust list, `DEEPFAKE_PROVENANCE_TRUST_ANCHORS`;
  none by default: then nothing is trusted), the claim generator, and whether the active
  manifest's actions declare AI generation or AI editing (their IPTC digital source type).
  Remote manifests are never fetched unless the operator says so
  (`DEEPFAKE_PROVENANCE_REMOTE_MANIFESTS`); OCSP is never fetched.
- **XMP**: the IPTC `DigitalSourceType` a generator wrote (an unsigned claim: anyone can write
  it, so it is reported as a claim and never changes a verdict).
- **Watermarks**: the invisible watermark Stable Diffusion's reference scripts embed
  (preprocessing/watermark.py): unsigned too, reported only.

How it combines with the model (README, "Provenance"): a valid manifest from a trusted signer
whose actions declare AI generation makes the verdict `likely_fake` with a `reason`, the
model's P(fake) still reported beside it; everything else is reported and changes nothing.
Reading never raises: a malformed or hostile manifest is reported `invalid` with the
library's error, never a 5xx.
"""

from __future__ import annotations

import io
import json
import logging
import mmap
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel, Field

from preprocessing import watermark
from preprocessing.decode import ALLOWED_FORMATS

logger = logging.getLogger("deepfake")

IPTC = "http://cv.iptc.org/newscodes/digitalsourcetype/"
# IPTC digital source types (https://cv.iptc.org/newscodes/digitalsourcetype/) that say a
# trained model or an algorithm made the media (`generated`) or a part of it (`edited`).
GENERATED = frozenset({"trainedAlgorithmicMedia", "algorithmicMedia"})
EDITED = frozenset({"compositeWithTrainedAlgorithmicMedia", "compositeSynthetic"})
AiDeclaration = Literal["generated", "edited"]

# The extended key usages a signer's certificate may carry (the C2PA certificate profile:
# id-kp-emailProtection, id-kp-documentSigning, c2pa-kp-claimSigning; Microsoft's C2PA signing
# OID; id-kp-timeStamping and id-kp-OCSPSigning for the time-stamp and OCSP certificates in the
# chains), as the C2PA library's own earlier default list had them. This version of the
# library, left to itself, accepts only the first: a documentSigning signer read "invalid".
SIGNER_EKUS = (
    "1.3.6.1.5.5.7.3.4",  # id-kp-emailProtection
    "1.3.6.1.5.5.7.3.36",  # id-kp-documentSigning
    "1.3.6.1.4.1.62558.2.1",  # c2pa-kp-claimSigning
    "1.3.6.1.4.1.311.76.59.1.9",  # Microsoft C2PA signing
    "1.3.6.1.5.5.7.3.8",  # id-kp-timeStamping
    "1.3.6.1.5.5.7.3.9",  # id-kp-OCSPSigning
)

# Bounds on what one manifest store can make the server do and send back. The library validates
# every manifest of a store (its ingredients' too), a few milliseconds each: a 10 MB upload can
# hold ~1,800 chained manifests (seconds of CPU). Stores of more than MAX_MANIFESTS are not
# handed to it (counted by their signature boxes' label, a byte search), and a compressed
# manifest may not inflate past MAX_DECOMPRESSED_MB (then the count is of what is not compressed).
MAX_MANIFESTS = 32
MAX_DECOMPRESSED_MB = 16
SIGNATURE_LABEL = b"c2pa.signature\x00"  # the JUMBF description box's label, null-terminated
MAX_INGREDIENT_DEPTH = 16
MAX_MANIFESTS_WALKED = 64
MAX_LISTED = 16
MAX_TEXT = 300

# What the reader reads, by the upload's leading bytes. BMP has no place for Content
# Credentials (the C2PA specification defines none).
_IMAGE_TYPES: tuple[tuple[bytes, int, str, str], ...] = (
    (b"\xff\xd8\xff", 0, "image/jpeg", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", 0, "image/png", "PNG"),
    (b"WEBP", 8, "image/webp", "WEBP"),
    (b"GIF8", 0, "image/gif", "GIF"),
)


# ---------------------------------------------------------------- the answer's `provenance`
class Signer(BaseModel):
    subject: str | None = Field(description="The signing certificate's subject, e.g. `CN=..., O=..., C=...`")
    issuer: str | None = Field(description="Its issuer (the certificate authority that issued it)")


class ContentCredentials(BaseModel):
    """C2PA Content Credentials as the C2PA library read and validated them."""

    present: bool = Field(description="A C2PA manifest is in the file (or referenced by it)")
    valid: bool | None = Field(
        description="Intact: signature, hashes and structure check out (trust aside); null when absent"
    )
    trusted: bool = Field(
        description="Valid, and the signer chains to the server's trust list "
        "(DEEPFAKE_PROVENANCE_TRUST_ANCHORS; none by default: never trusted)"
    )
    validation_state: Literal["Trusted", "Valid", "Invalid"] | None = Field(
        description="The library's own word for the manifest store"
    )
    failures: list[str] = Field(
        description="The library's validation status codes that failed, e.g. `signingCredential.untrusted`, "
        "`assertion.dataHash.mismatch` (the file changed after signing)"
    )
    error: str | None = Field(
        description="Why the manifest could not be read at all (malformed, remote, ...)"
    )
    signer: Signer | None = Field(description="Who signed the active manifest")
    claim_generator: str | None = Field(description="The software that made the claim, e.g. `Firefly 1.0`")
    digital_source_types: list[str] = Field(
        description="IPTC digital source types the active manifest's actions declare"
    )
    ai: AiDeclaration | None = Field(
        description="`generated` (trainedAlgorithmicMedia, algorithmicMedia) or `edited` "
        "(compositeWithTrainedAlgorithmicMedia, compositeSynthetic) by the active manifest's actions"
    )
    ingredients_ai: AiDeclaration | None = Field(
        description="The same, declared by a manifest of the file's parent ingredients (its history)"
    )
    remote_url: str | None = Field(
        description="The manifest is not in the file but at this URL, which was not fetched"
    )


class XmpClaim(BaseModel):
    """The IPTC digital source type written into the file's XMP: unsigned, anyone can write it."""

    digital_source_type: str = Field(
        description="As written, e.g. `http://cv.iptc.org/.../trainedAlgorithmicMedia`"
    )
    ai: AiDeclaration | None = Field(description="What that type says, as for Content Credentials")


class WatermarkFinding(BaseModel):
    name: str = Field(description="Whose watermark, e.g. `stable_diffusion_v1`")
    method: str = Field(description="How it was read")
    agreement: float = Field(description="Share of the watermark's bits that read back (found from 0.8)")


class Provenance(BaseModel):
    """What the file declares about its making, beside the model's verdict (README, "Provenance")."""

    checked: list[str] = Field(description="What was looked for in this file: `c2pa`, `xmp`, `watermark`")
    not_checked: dict[str, str] = Field(description="What was not looked for, and why")
    c2pa: ContentCredentials | None = Field(description="Content Credentials; null when not checked")
    xmp: XmpClaim | None = Field(description="An IPTC digital source type in XMP; null when none")
    watermarks: list[WatermarkFinding] = Field(description="Known invisible watermarks found")
    decides: bool = Field(
        description="A valid manifest from a trusted signer declares AI generation: the verdict is "
        "`likely_fake` whatever the model says (`reason` says so)"
    )


# ---------------------------------------------------------------- settings
@dataclass(frozen=True)
class ProvenanceOptions:
    """The server's provenance settings (serving/settings.py)."""

    enabled: bool = True
    trust_anchors: str | None = None  # PEM text: the operator's trust list
    remote_manifests: bool = False  # fetch a manifest the file only points to (network!)
    watermarks: bool = True


def load_trust_anchors(path: str) -> str:
    """The PEM certificates of a trust list file; ValueError when there is none in it."""
    from cryptography import x509

    text = Path(path).read_text(encoding="ascii")
    certificates = x509.load_pem_x509_certificates(text.encode())  # raises ValueError
    if not certificates:
        raise ValueError(f"no certificate in {path}")
    return text


# ---------------------------------------------------------------- reading
def classify(source_type: str) -> AiDeclaration | None:
    name = source_type.strip().rstrip("/").rsplit("/", 1)[-1]
    if name in GENERATED:
        return "generated"
    if name in EDITED:
        return "edited"
    return None


def strongest(declarations: list[AiDeclaration | None]) -> AiDeclaration | None:
    if "generated" in declarations:
        return "generated"
    return "edited" if "edited" in declarations else None


def _text(value: Any) -> str | None:
    return None if value is None else str(value)[:MAX_TEXT]


def _distinguished_name(fields: Any) -> str | None:
    if not isinstance(fields, dict) or not fields:
        return None
    return _text(", ".join(f"{key}={value}" for key, value in fields.items()))


def _actions_source_types(manifest: dict[str, Any]) -> list[str]:
    found: list[str] = []
    for assertion in manifest.get("assertions") or []:
        if not isinstance(assertion, dict) or not str(assertion.get("label", "")).startswith("c2pa.actions"):
            continue
        data = assertion.get("data") if isinstance(assertion.get("data"), dict) else {}
        for action in data.get("actions") or []:
            source = action.get("digitalSourceType") if isinstance(action, dict) else None
            if isinstance(source, str) and source[:MAX_TEXT] not in found:
                found.append(source[:MAX_TEXT])
                if len(found) >= MAX_LISTED:
                    return found
    return found


def _ingredients_declaration(store: dict[str, Any], manifest: dict[str, Any]) -> AiDeclaration | None:
    """What the manifests of the parent ingredients declare, walked depth-first, bounded."""
    manifests = store.get("manifests") if isinstance(store.get("manifests"), dict) else {}
    seen: set[str] = set()
    declarations: list[AiDeclaration | None] = []
    stack = [(manifest, 0)]
    while stack and len(seen) < MAX_MANIFESTS_WALKED:
        current, depth = stack.pop()
        for ingredient in current.get("ingredients") or []:
            if not isinstance(ingredient, dict) or ingredient.get("relationship") not in ("parentOf", None):
                continue
            label = ingredient.get("active_manifest")
            parent = manifests.get(label) if isinstance(label, str) else None
            if not isinstance(parent, dict) or label in seen or depth >= MAX_INGREDIENT_DEPTH:
                continue
            seen.add(label)
            declarations += [classify(t) for t in _actions_source_types(parent)]
            stack.append((parent, depth + 1))
    return strongest(declarations)


def _claim_generator(manifest: dict[str, Any]) -> str | None:
    info = manifest.get("claim_generator_info")
    if isinstance(info, list) and info and isinstance(info[0], dict):
        name, version = info[0].get("name"), info[0].get("version")
        return _text(" ".join(str(part) for part in (name, version) if part))
    return _text(manifest.get("claim_generator"))


def _signer(active: dict[str, Any], label: str, crjson: dict[str, Any]) -> Signer | None:
    for manifest in crjson.get("manifests") or []:
        if isinstance(manifest, dict) and manifest.get("label") == label:
            info = (manifest.get("signature") or {}).get("certificateInfo") or {}
            subject, issuer = (
                _distinguished_name(info.get("subject")),
                _distinguished_name(info.get("issuer")),
            )
            if subject or issuer:
                return Signer(subject=subject, issuer=issuer)
    signature = active.get("signature_info") or {}
    if not signature:
        return None
    common = signature.get("common_name")
    return Signer(subject=_text(f"CN={common}") if common else None, issuer=_text(signature.get("issuer")))


def _failures(store: dict[str, Any]) -> list[str]:
    results = store.get("validation_results") if isinstance(store.get("validation_results"), dict) else {}
    codes = [
        entry.get("code")
        for entry in ((results.get("activeManifest") or {}).get("failure") or [])
        if isinstance(entry, dict)
    ]
    for delta in results.get("ingredientDeltas") or []:
        failed = ((delta or {}).get("validationDeltas") or {}).get("failure") or []
        codes += [f"ingredient:{entry.get('code')}" for entry in failed if isinstance(entry, dict)]
    if not results:  # older stores: the flat list
        codes = [
            entry.get("code") for entry in store.get("validation_status") or [] if isinstance(entry, dict)
        ]
    unique: list[str] = []
    for code in codes:
        if isinstance(code, str) and code[:MAX_TEXT] not in unique:
            unique.append(code[:MAX_TEXT])
    return unique[:MAX_LISTED]


_REMOTE_URL = re.compile(r"from url (\S{1,2000})")


def _unreadable(exc: Exception, present: bool = True) -> ContentCredentials:
    kind = type(exc).__name__.lstrip("_").removeprefix("C2pa") or "Error"
    message = str(exc) if str(exc).startswith(kind) else f"{kind}: {exc}"
    remote = _REMOTE_URL.search(str(exc)) if "Remote" in str(exc)[:40] else None
    return ContentCredentials(
        present=present, valid=False if present and not remote else None, trusted=False,
        validation_state=None, failures=[], error=_text(message), signer=None, claim_generator=None,
        digital_source_types=[], ai=None, ingredients_ai=None,
        remote_url=_text(remote.group(1)) if remote else None,
    )  # fmt: skip


ABSENT = ContentCredentials(
    present=False, valid=None, trusted=False, validation_state=None, failures=[], error=None, signer=None,
    claim_generator=None, digital_source_types=[], ai=None, ingredients_ai=None, remote_url=None,
)  # fmt: skip


def credentials_from_store(store: dict[str, Any], crjson: dict[str, Any]) -> ContentCredentials:
    """The report of a manifest store the library read (its `json()` and `crjson()`)."""
    label = store.get("active_manifest")
    manifests = store.get("manifests") if isinstance(store.get("manifests"), dict) else {}
    active = manifests.get(label) if isinstance(label, str) else None
    state = store.get("validation_state")
    state = state if state in ("Trusted", "Valid", "Invalid") else None
    failures = _failures(store)
    if not isinstance(active, dict):
        return ContentCredentials(
            **{**ABSENT.model_dump(), "present": True, "valid": False, "failures": failures,
               "validation_state": state, "error": "no active manifest in the store"}
        )  # fmt: skip
    types = _actions_source_types(active)
    valid = state in ("Trusted", "Valid")
    return ContentCredentials(
        present=True,
        valid=valid,
        trusted=state == "Trusted" and valid,
        validation_state=state,
        failures=failures,
        error=None,
        signer=_signer(active, label, crjson),
        claim_generator=_claim_generator(active),
        digital_source_types=types,
        ai=strongest([classify(t) for t in types]),
        ingredients_ai=_ingredients_declaration(store, active),
        remote_url=None,
    )


_XMP_VALUE = re.compile(
    rb"DigitalSourceType\s*(?:=\s*[\"']([^\"'<>]{1,512})[\"']"
    rb"|>\s*([^<>\s]{1,512})\s*<"
    rb"|\s+rdf:resource\s*=\s*[\"']([^\"'<>]{1,512})[\"'])"
)
_XMP_NAME = b"DigitalSourceType"


def xmp_source_type(packet: bytes) -> XmpClaim | None:
    """The IPTC `DigitalSourceType` in an XMP packet (attribute, element or rdf:resource form, any
    namespace prefix); no XML parser: the name found as bytes, a bounded pattern from there."""
    at = packet.find(_XMP_NAME)
    for _ in range(MAX_LISTED):
        if at < 1 or packet[at - 1 : at] != b":":  # a prefixed name (`Iptc4xmpExt:`), not text
            at = packet.find(_XMP_NAME, at + 1) if at >= 0 else -1
            if at < 0:
                return None
            continue
        match = _XMP_VALUE.match(packet, at)
        if match:
            value = next(group for group in match.groups() if group).decode("utf-8", "replace").strip()
            return XmpClaim(digital_source_type=value[:MAX_TEXT], ai=classify(value))
        at = packet.find(_XMP_NAME, at + 1)
    return None


def _xmp_packet(info: dict[str, Any]) -> bytes | None:
    for key in ("xmp", "XML:com.adobe.xmp"):
        value = info.get(key)
        if isinstance(value, bytes):
            return value
        if isinstance(value, str):
            return value.encode("utf-8", "replace")
    return None


def _occurrences(data: Any, needle: bytes, most: int) -> Any:
    """Where `needle` is in `data` (bytes or mmap), at most `most` times."""
    at = data.find(needle)
    while at >= 0 and most > 0:
        yield at
        most -= 1
        at = data.find(needle, at + 1)


def video_type(head: bytes) -> str | None:
    """The MIME type the C2PA reader takes for a video's first 12 bytes; None: not read."""
    if head[4:8] == b"ftyp":
        return "video/mp4"  # MP4, MOV, M4V: ISO BMFF
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "video/avi"
    return None


class ProvenanceReader:
    """Reads a file's provenance with the server's settings; thread-safe (one C2PA context,
    shared by the decode threads)."""

    def __init__(self, options: ProvenanceOptions) -> None:
        self.options = options
        self._context: Any = None
        if options.enabled:
            import c2pa

            self._c2pa = c2pa
            self._context = c2pa.Context.from_dict(self.c2pa_settings(options))

    @staticmethod
    def c2pa_settings(options: ProvenanceOptions) -> dict[str, Any]:
        """The C2PA library's settings: trust only the operator's anchors, nothing from the
        network unless remote manifests are on."""
        settings: dict[str, Any] = {
            "verify": {
                "verify_after_reading": True,
                "verify_trust": True,
                "ocsp_fetch": False,
                "remote_manifest_fetch": options.remote_manifests,
            },
            "builder": {"thumbnail": {"enabled": False}},
            "core": {"max_decompressed_manifest_size_in_mb": MAX_DECOMPRESSED_MB},
        }
        if not options.remote_manifests:
            settings["core"]["allowed_network_hosts"] = []  # and no host is allowed either
        settings["trust"] = {"trust_config": "\n".join(SIGNER_EKUS) + "\n"}
        if options.trust_anchors:
            settings["trust"]["trust_anchors"] = options.trust_anchors
        return settings

    def off(self, why: str) -> Provenance:
        return Provenance(
            checked=[], not_checked={name: why for name in ("c2pa", "xmp", "watermark")},
            c2pa=None, xmp=None, watermarks=[], decides=False,
        )  # fmt: skip

    def read_c2pa(self, mime: str, stream: Any, manifests: int = 0) -> ContentCredentials:
        """`manifests`: how many the store holds, at most (its signature boxes counted)."""
        c2pa = self._c2pa
        if manifests > MAX_MANIFESTS:
            return ContentCredentials(
                **{**ABSENT.model_dump(), "present": True, "error": f"not validated: the file holds "
                   f"{manifests} manifests, over the {MAX_MANIFESTS} this server validates"}
            )  # fmt: skip
        try:
            reader = c2pa.Reader(mime, stream, context=self._context)
        except c2pa.C2paError.ManifestNotFound:
            return ABSENT
        except c2pa.C2paError.NotSupported as exc:
            return _unreadable(exc, present=False)
        except Exception as exc:  # noqa: BLE001 - whatever the library refuses: an invalid manifest
            return _unreadable(exc)
        try:
            with reader:
                store = json.loads(reader.json())
                try:
                    crjson = json.loads(reader.crjson())
                except Exception:  # noqa: BLE001 - the signer's names are then the short ones
                    crjson = {}
            return credentials_from_store(store if isinstance(store, dict) else {}, crjson)
        except Exception as exc:  # noqa: BLE001 - a store the library read but cannot describe
            return _unreadable(exc)

    def read_image(self, data: bytes, decoded: Image.Image | None = None) -> Provenance:
        """The provenance of an image upload; `decoded`: the upright RGB image the pipeline
        decoded from it (for the watermark, which needs it at its stored size). Never raises."""
        try:
            return self._read_image(data, decoded)
        except Exception:  # noqa: BLE001 - a fault of ours: logged, said, never a failed request
            logger.exception("the provenance reader failed on an image")
            return self.off("the provenance reader failed on this file (logged)")

    def read_video(self, path: Path) -> Provenance:
        """The provenance of a video file: Content Credentials of MP4/MOV (ISO BMFF, the C2PA
        `uuid` box) and AVI; XMP and watermarks are for images. Never raises."""
        try:
            return self._read_video(path)
        except Exception:  # noqa: BLE001 - as read_image
            logger.exception("the provenance reader failed on a video")
            return self.off("the provenance reader failed on this file (logged)")

    def _read_image(self, data: bytes, decoded: Image.Image | None) -> Provenance:
        if not self.options.enabled:
            return self.off("provenance is off on this server (DEEPFAKE_PROVENANCE=false)")
        kind = next(
            ((mime, fmt) for magic, at, mime, fmt in _IMAGE_TYPES if data[at : at + len(magic)] == magic),
            None,
        )
        checked: list[str] = []
        not_checked: dict[str, str] = {}
        credentials = None
        if kind is None:
            not_checked["c2pa"] = "this image format has no place for Content Credentials"
        else:
            credentials = self.read_c2pa(kind[0], io.BytesIO(data), data.count(SIGNATURE_LABEL))
            checked.append("c2pa")
        header = self._header(data)
        xmp = None
        if header is None or kind is None:
            not_checked["xmp"] = "this image format carries no XMP that is read here"
        else:
            packet = _xmp_packet(header.info)
            xmp = xmp_source_type(packet) if packet else None
            checked.append("xmp")
        found = []
        if not self.options.watermarks:
            not_checked["watermark"] = (
                "watermarks are off on this server (DEEPFAKE_PROVENANCE_WATERMARKS=false)"
            )
        elif decoded is None or header is None:
            not_checked["watermark"] = "the image was not decoded"
        elif sorted(decoded.size) != sorted(header.size):
            not_checked["watermark"] = (
                "the image was decoded at a reduced scale (a large JPEG): the mark is lost"
            )
        elif decoded.width * decoded.height < watermark.MIN_SIDE_PIXELS:
            not_checked["watermark"] = "the image is too small to carry the watermark (under 256 x 256)"
        else:
            try:
                found = watermark.find_watermarks(np.asarray(decoded))
                checked.append("watermark")
            except Exception:  # noqa: BLE001 - a fault of ours: logged, said, never a failed request
                logger.exception("watermark reader failed on a %dx%d image", *decoded.size)
                not_checked["watermark"] = "the watermark reader failed on this image (logged)"

        return self._provenance(credentials, xmp, found, checked, not_checked)

    def _read_video(self, path: Path) -> Provenance:
        if not self.options.enabled:
            return self.off("provenance is off on this server (DEEPFAKE_PROVENANCE=false)")
        not_checked = {"xmp": "not read from videos", "watermark": "not read from video frames"}
        try:
            stream = open(path, "rb")  # noqa: SIM115 - closed below
        except OSError as exc:
            not_checked["c2pa"] = _text(f"the file could not be opened: {exc}") or ""
            return self._provenance(None, None, [], [], not_checked)
        with stream:
            head = stream.read(12)
            stream.seek(0)
            mime = video_type(head)
            if mime is None:
                not_checked["c2pa"] = (
                    "this container is not read for Content Credentials (MP4, MOV and AVI are)"
                )
                return self._provenance(None, None, [], [], not_checked)
            with mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                manifests = sum(1 for _ in _occurrences(mapped, SIGNATURE_LABEL, MAX_MANIFESTS + 1))
            credentials = self.read_c2pa(mime, stream, manifests)
        return self._provenance(credentials, None, [], ["c2pa"], not_checked)

    @staticmethod
    def _header(data: bytes) -> Image.Image | None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)  # the header only
        except Exception:  # noqa: BLE001 - decode_upload has judged the upload; no header, no XMP
            return None

    @staticmethod
    def _provenance(
        credentials: ContentCredentials | None,
        xmp: XmpClaim | None,
        found: list[watermark.Found],
        checked: list[str],
        not_checked: dict[str, str],
    ) -> Provenance:
        return Provenance(
            checked=checked,
            not_checked=not_checked,
            c2pa=credentials,
            xmp=xmp,
            watermarks=[
                WatermarkFinding(
                    name=f.payload.name, method="invisible-watermark dwtDct", agreement=f.agreement
                )
                for f in found
            ],
            decides=bool(
                credentials and credentials.trusted and credentials.valid and credentials.ai == "generated"
            ),
        )


def reason(provenance: Provenance | None) -> str | None:
    """Why the verdict is `likely_fake` whatever the model says, or None when it is the model's."""
    if provenance is None or not provenance.decides or provenance.c2pa is None:
        return None
    credentials = provenance.c2pa
    declared = next((t for t in credentials.digital_source_types if classify(t) == "generated"), "")
    who = (credentials.signer.subject if credentials.signer else None) or "a trusted signer"
    return _text(
        f"Content Credentials signed by {who} (trusted) declare the image AI-generated "
        f"({declared.rsplit('/', 1)[-1]}); the model's P(fake) is reported beside it"
    )
