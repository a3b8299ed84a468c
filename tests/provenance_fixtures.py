"""Signed test files, made by the tests themselves: a test certificate authority and signing
certificates (made with `cryptography`, to the C2PA certificate profile), and files signed with
`c2pa.Builder`, the Content Authenticity Initiative's own signer.

`make_provenance_files(folder)` writes, and returns as `ProvenanceFiles`:

  trust.pem                 the trusted test CA (the server's DEEPFAKE_PROVENANCE_TRUST_ANCHORS)
  ai_generated.jpg          a face photo signed under the trusted CA, `c2pa.created` with
                            digitalSourceType trainedAlgorithmicMedia (what a generator writes)
  camera.jpg                the same photo signed as a camera capture (digitalCapture)
  ai_edited.jpg             camera.jpg opened as its parent ingredient and edited with
                            compositeWithTrainedAlgorithmicMedia (an AI edit of a real photo)
  edited_after_signing.jpg  ai_generated.jpg with a patch painted over its pixels and re-encoded,
                            its C2PA segments kept as they were: the hash no longer matches
  untrusted_ai.jpg          the AI declaration signed under a second CA that is not in trust.pem
  ai_generated.png          the AI declaration in a PNG (the manifest in its caBX chunk)
  xmp_claim.jpg             no manifest: only XMP saying trainedAlgorithmicMedia (unsigned)
  no_face_ai.jpg            a photo without a face, signed AI-generated under the trusted CA
  deep_ingredients.jpg      a chain of `depth` edits, each opening the previous file
  many_manifests.jpg        a composite of `wide` signed photos (componentOf ingredients): a
                            store of wide + 1 manifests

The C2PA certificate profile (C2PA 2.x, "Certificate profile"): X.509 v3; ECDSA P-256 with
SHA-256 (ES256); the end entity is no CA, has keyUsage digitalSignature (critical), an
extended key usage C2PA accepts (id-kp-emailProtection here; never anyExtendedKeyUsage),
subject and authority key identifiers, and is issued by a CA (self-signed end entities are
refused); the CA has basicConstraints cA (critical) and keyUsage keyCertSign.
"""

from __future__ import annotations

import datetime
import io
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from tests.helpers import FIXTURES

IPTC = "http://cv.iptc.org/newscodes/digitalsourcetype/"
FACE_PHOTO = FIXTURES / "astronaut.jpg"
NO_FACE_PHOTO = FIXTURES / "coffee_no_face.jpg"
XMP_CLAIM = (
    '<?xpacket begin="" id="W5M0MpCehiHzreSzNTczkc9d"?>'
    '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
    '<rdf:Description rdf:about="" xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/" '
    f'Iptc4xmpExt:DigitalSourceType="{IPTC}trainedAlgorithmicMedia"/>'
    '</rdf:RDF></x:xmpmeta><?xpacket end="w"?>'
)


@dataclass(frozen=True)
class Credential:
    """A signing certificate chain (PEM, end entity first) and its private key (PEM)."""

    chain: bytes
    key: bytes
    ca_pem: bytes
    subject: str  # as the server reports it: "CN=..., O=..., C=..."
    issuer: str


def _name(common: str, org: str) -> Any:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
        ]
    )


def _key_usage(*, sign: bool, ca: bool) -> Any:
    from cryptography import x509

    return x509.KeyUsage(
        digital_signature=sign, content_commitment=False, key_encipherment=False, data_encipherment=False,
        key_agreement=False, key_cert_sign=ca, crl_sign=ca, encipher_only=False, decipher_only=False,
    )  # fmt: skip


EMAIL_PROTECTION = "1.3.6.1.5.5.7.3.4"


def make_credential(ca_name: str, signer_name: str, org: str, eku: str = EMAIL_PROTECTION) -> Credential:
    """A test CA and an end-entity signing certificate under it, to the C2PA profile, whose
    extended key usage is `eku` (an OID)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_subject = _name(ca_name, org)
    ca_id = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_subject)
        .issuer_name(ca_subject)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(sign=False, ca=True), critical=True)
        .add_extension(ca_id, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_id), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(signer_name, org))
        .issuer_name(ca_subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(sign=True, ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.ObjectIdentifier(eku)]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )

    def pem(certificate: Any) -> bytes:
        return certificate.public_bytes(serialization.Encoding.PEM)

    return Credential(
        chain=pem(cert) + pem(ca_cert),
        key=key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
        ca_pem=pem(ca_cert),
        subject=f"CN={signer_name}, O={org}, C=US",
        issuer=f"CN={ca_name}, O={org}, C=US",
    )


def actions(*steps: tuple[str, str | None]) -> dict[str, Any]:
    """A `c2pa.actions` assertion: (action, digital source type name or None) each."""
    listed = [
        {"action": action, **({"digitalSourceType": IPTC + source} if source else {})}
        for action, source in steps
    ]
    return {"label": "c2pa.actions", "data": {"actions": listed}}


def sign(
    data: bytes,
    mime: str,
    credential: Credential,
    assertions: list[dict[str, Any]],
    *,
    generator: str = "provenance-tests 1.0",
    parent: tuple[bytes, str] | None = None,
) -> bytes:
    """`data` signed with `c2pa.Builder`: the manifest holds `assertions` (and, with `parent`,
    that file as the parent ingredient, opened by an edit)."""
    import c2pa

    name, _, version = generator.partition(" ")
    manifest = {
        "claim_generator_info": [{"name": name, "version": version or "1"}],
        "title": "test file",
        "assertions": assertions,
    }
    context = c2pa.Context.from_dict(
        {"builder": {"thumbnail": {"enabled": False}}, "verify": {"remote_manifest_fetch": False}}
    )
    signer = c2pa.Signer.from_info(
        c2pa.C2paSignerInfo(c2pa.C2paSigningAlg.ES256, credential.chain, credential.key, None)
    )
    with c2pa.Builder(manifest, context=context) as builder:
        if parent is not None:
            builder.set_intent(c2pa.C2paBuilderIntent.EDIT)  # adds c2pa.opened of the parent
            builder.add_ingredient(
                {"title": "parent", "relationship": "parentOf"}, parent[1], io.BytesIO(parent[0])
            )
        out = io.BytesIO()
        builder.sign(signer, mime, io.BytesIO(data), out)
    return out.getvalue()


def jpeg_segments(data: bytes) -> list[tuple[int, int, int]]:
    """(marker, offset, length with the marker) of each JPEG segment before the scan."""
    segments, pos = [], 2
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        segments.append((marker, pos, length + 2))
        if marker == 0xDA:
            break
        pos += 2 + length
    return segments


def edited_after_signing(signed: bytes) -> bytes:
    """`signed` with a patch painted over the photo and re-encoded, its C2PA segments (APP11)
    put back where they were: what an editor that keeps metadata would write."""
    kept = b"".join(signed[at : at + size] for marker, at, size in jpeg_segments(signed) if marker == 0xEB)
    image = Image.open(io.BytesIO(signed)).convert("RGB")
    ImageDraw.Draw(image).rectangle((10, 10, 90, 90), fill=(200, 30, 30))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    edited = buffer.getvalue()
    app0 = next((at + size for marker, at, size in jpeg_segments(edited) if marker == 0xE0), 2)
    return edited[:app0] + kept + edited[app0:]


def jpeg_with_xmp(source: Path, xmp: str) -> bytes:
    buffer = io.BytesIO()
    Image.open(source).save(buffer, "JPEG", quality=90, xmp=xmp.encode())
    return buffer.getvalue()


def png_of(source: Path) -> bytes:
    buffer = io.BytesIO()
    Image.open(source).convert("RGB").save(buffer, "PNG")
    return buffer.getvalue()


@dataclass(frozen=True)
class ProvenanceFiles:
    folder: Path
    trusted: Credential
    untrusted: Credential

    @property
    def trust(self) -> Path:
        return self.folder / "trust.pem"

    def __getitem__(self, name: str) -> Path:
        return self.folder / name


def composite(data: bytes, credential: Credential, parts: list[bytes]) -> bytes:
    """`data` signed as a composite of `parts` (each a signed photo, a componentOf ingredient)."""
    import c2pa

    context = c2pa.Context.from_dict({"builder": {"thumbnail": {"enabled": False}}})
    signer = c2pa.Signer.from_info(
        c2pa.C2paSignerInfo(c2pa.C2paSigningAlg.ES256, credential.chain, credential.key, None)
    )
    manifest = {"claim_generator_info": [{"name": "TestComposer", "version": "1"}],
                "assertions": [actions(("c2pa.created", "compositeCapture"))]}  # fmt: skip
    with c2pa.Builder(manifest, context=context) as builder:
        for i, part in enumerate(parts):
            builder.add_ingredient(
                {"title": f"part {i}", "relationship": "componentOf"}, "image/jpeg", io.BytesIO(part)
            )
        out = io.BytesIO()
        builder.sign(signer, "image/jpeg", io.BytesIO(data), out)
    return out.getvalue()


def make_provenance_files(folder: Path, depth: int = 12, wide: int = 33) -> ProvenanceFiles:
    folder.mkdir(parents=True, exist_ok=True)
    trusted = make_credential("Provenance Test Root CA", "Test Image Generator", "Provenance Tests")
    untrusted = make_credential("Unlisted Root CA", "Unlisted Generator", "Somebody Else")
    (folder / "trust.pem").write_bytes(trusted.ca_pem)
    photo = FACE_PHOTO.read_bytes()
    generated = [actions(("c2pa.created", "trainedAlgorithmicMedia"))]
    ai = sign(photo, "image/jpeg", trusted, generated, generator="TestGen 2.1")
    camera = sign(
        photo, "image/jpeg", trusted, [actions(("c2pa.created", "digitalCapture"))], generator="TestCam 1.0"
    )
    files = {
        "ai_generated.jpg": ai,
        "camera.jpg": camera,
        "ai_edited.jpg": sign(
            camera,
            "image/jpeg",
            trusted,
            [actions(("c2pa.edited", "compositeWithTrainedAlgorithmicMedia"))],
            generator="TestEditor 3.0",
            parent=(camera, "image/jpeg"),
        ),  # fmt: skip
        "edited_after_signing.jpg": edited_after_signing(ai),
        "untrusted_ai.jpg": sign(photo, "image/jpeg", untrusted, generated, generator="OtherGen 1.0"),
        "ai_generated.png": sign(
            png_of(FACE_PHOTO), "image/png", trusted, generated, generator="TestGen 2.1"
        ),
        "xmp_claim.jpg": jpeg_with_xmp(FACE_PHOTO, XMP_CLAIM),
        "no_face_ai.jpg": sign(
            NO_FACE_PHOTO.read_bytes(), "image/jpeg", trusted, generated, generator="TestGen 2.1"
        ),
    }
    chain = camera
    for _ in range(depth):
        chain = sign(
            chain, "image/jpeg", trusted, [actions(("c2pa.edited", None))], generator="TestEditor 3.0",
            parent=(chain, "image/jpeg"),
        )  # fmt: skip
    files["deep_ingredients.jpg"] = chain
    parts = [
        sign(photo, "image/jpeg", trusted, [actions(("c2pa.created", "digitalCapture"))]) for _ in range(wide)
    ]
    files["many_manifests.jpg"] = composite(photo, trusted, parts)  # each part its own manifest
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return ProvenanceFiles(folder, trusted, untrusted)


def sign_video(source: Path, credential: Credential, source_type: str = "trainedAlgorithmicMedia") -> bytes:
    """An MP4 signed with a C2PA manifest (its BMFF hash and `uuid` box) declaring `source_type`."""
    return sign(source.read_bytes(), "video/mp4", credential, [actions(("c2pa.created", source_type))])


# ---------------------------------------------------------------- hostile files
# JUMBF (ISO/IEC 19566-5) boxes as C2PA stores them: LBox (4 bytes, big endian; 1: an 8-byte
# XLBox follows), TBox ('jumb' superbox, 'jumd' description), then the content. In JPEG they
# travel in APP11 segments: "JP", box instance En (2 bytes), sequence Z (4 bytes), the bytes.
C2PA_UUID = bytes.fromhex("6332706100110010800000aa00389b71")  # "c2pa" + the JUMBF UUID tail
BMFF_C2PA_UUID = bytes.fromhex("d8fec3d61b0e483c92975828877ec481")


def box(kind: bytes, content: bytes, size: int | None = None) -> bytes:
    return struct.pack(">I", len(content) + 8 if size is None else size) + kind + content


def description(label: bytes = b"c2pa") -> bytes:
    return box(b"jumd", C2PA_UUID + b"\x03" + label + b"\x00")


def app11(jumbf: bytes, instance: int = 1, first_sequence: int = 1, chunk: int = 65_000) -> bytes:
    """`jumbf` in APP11 segments (each repeats the box header after the first, as C2PA does)."""
    header, body = jumbf[:8], jumbf[8:]
    out, sequence = b"", first_sequence
    for start in range(0, max(len(body), 1), chunk):
        payload = (
            b"JP" + struct.pack(">HI", instance, sequence & 0xFFFFFFFF) + header + body[start : start + chunk]
        )
        out += b"\xff\xeb" + struct.pack(">H", len(payload) + 2) + payload
        sequence += 1
    return out


def in_jpeg(segments: bytes, source: Path = FACE_PHOTO) -> bytes:
    data = source.read_bytes()
    app0 = next((at + size for marker, at, size in jpeg_segments(data) if marker == 0xE0), 2)
    return data[:app0] + segments + data[app0:]


def png_chunk(kind: bytes, content: bytes, length: int | None = None) -> bytes:
    import zlib

    declared = len(content) if length is None else length
    return struct.pack(">I", declared) + kind + content + struct.pack(">I", zlib.crc32(kind + content))


def in_png(chunk: bytes, source: Path = FACE_PHOTO) -> bytes:
    data = png_of(source)
    return data[:33] + chunk + data[33:]  # after the signature (8) and IHDR (25)


def hostile_images(files: ProvenanceFiles) -> dict[str, bytes]:
    """Images whose C2PA part is malformed or hostile; every one decodes as an image."""
    signed = files["ai_generated.jpg"].read_bytes()
    first = next(at for marker, at, _ in jpeg_segments(signed) if marker == 0xEB)
    lbox = first + 4 + 8  # the superbox's LBox inside the first APP11 segment
    nested = b""
    for _ in range(5_000):  # a superbox in a superbox, 5,000 deep
        nested = box(b"jumb", description() + nested)
    many_boxes = box(b"jumb", description() + b"".join(box(b"jumb", description()) for _ in range(20_000)))
    return {
        "lbox_4gb.jpg": signed[:lbox] + struct.pack(">I", 0xFFFFFFFF) + signed[lbox + 4 :],
        "lbox_zero.jpg": signed[:lbox] + struct.pack(">I", 0) + signed[lbox + 4 :],
        "xlbox_huge.jpg": in_jpeg(
            app11(struct.pack(">I", 1) + b"jumb" + struct.pack(">Q", 2**64 - 1) + description())
        ),
        "superbox_5000_deep.jpg": in_jpeg(app11(nested)),
        "superbox_20000_wide.jpg": in_jpeg(app11(many_boxes)),
        "sequence_wraps.jpg": in_jpeg(
            app11(box(b"jumb", description() + b"\0" * 200_000), first_sequence=2**32 - 2)
        ),
        "claims_in_9mb.jpg": in_jpeg(app11(box(b"jumb", description() + box(b"json", b"{" * 9_000_000)))),
        "truncated_manifest.jpg": signed[: first + 600] + signed[first + 4 + 3000 :],
        "random_manifest.jpg": in_jpeg(app11(box(b"jumb", description() + bytes(range(256)) * 200))),
        "png_cabx_2gb.png": in_png(png_chunk(b"caBX", box(b"jumb", description()), length=0x7FFFFFF0)),
        "png_cabx_garbage.png": in_png(png_chunk(b"caBX", b"\xff" * 4096)),
    }


def hostile_video(source: Path) -> bytes:
    """`source` (an MP4) with a C2PA `uuid` box after `ftyp` whose JUMBF claims 4 GB."""
    data = source.read_bytes()
    (ftyp,) = struct.unpack(">I", data[:4])
    jumbf = struct.pack(">I", 0xFFFFFFF0) + b"jumb" + description() + b"\0" * 64
    uuid = box(b"uuid", BMFF_C2PA_UUID + b"\0\0\0\0" + b"manifest\0" + struct.pack(">Q", 0) + jumbf)
    return data[:ftyp] + uuid + data[ftyp:]
