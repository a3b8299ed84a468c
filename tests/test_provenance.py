"""Provenance beside the verdict (serving/provenance.py), with real signed files the tests make
(tests/provenance_fixtures.py: a test CA, signing certificates to the C2PA profile, files signed
with `c2pa.Builder`): every signed file read right by the reader and in every route's answer,
the rule that combines it with the model, no network, and hostile manifests answered 4xx or
"invalid", never 5xx, within the time bound.

Two services in process: `trusting` (DEEPFAKE_PROVENANCE_TRUST_ANCHORS = the test CA) and the
shared default `app` (no trust list: nothing trusted); the Python client on the shared server.
"""

from __future__ import annotations

import http.server
import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bentoml
import pytest
from PIL import Image
from starlette.testclient import TestClient

from preprocessing.decode import DecodeLimits, decode_upload
from serving.pipeline import DRAFT_SIDE
from serving.provenance import (
    IPTC,
    Provenance,
    ProvenanceOptions,
    ProvenanceReader,
    load_trust_anchors,
    xmp_source_type,
)
from tests.helpers import FIXTURES, ServerProcess
from tests.inprocess import service_app
from tests.provenance_fixtures import (
    FACE_PHOTO,
    ProvenanceFiles,
    actions,
    hostile_images,
    hostile_video,
    make_credential,
    make_provenance_files,
    sign,
    sign_video,
)

TIME_BUDGET_S = 2.0  # a hang guard, as the decode fuzzing's: the reads take milliseconds
DETECT = "/api/v1/detect/"
GENERATED = f"{IPTC}trainedAlgorithmicMedia"

# What each signed file must read as: (present, valid, trusted, validation_state, failures,
# active manifest's AI declaration, decides the verdict).
EXPECTED: dict[str, tuple[bool, bool | None, bool, str | None, list[str], str | None, bool]] = {
    "ai_generated.jpg": (True, True, True, "Trusted", [], "generated", True),
    "ai_generated.png": (True, True, True, "Trusted", [], "generated", True),
    "camera.jpg": (True, True, True, "Trusted", [], None, False),
    "ai_edited.jpg": (True, True, True, "Trusted", [], "edited", False),
    "edited_after_signing.jpg": (
        True,
        False,
        False,
        "Invalid",
        ["assertion.dataHash.mismatch"],
        "generated",
        False,
    ),
    "untrusted_ai.jpg": (True, True, False, "Valid", ["signingCredential.untrusted"], "generated", False),
    "xmp_claim.jpg": (False, None, False, None, [], None, False),
    "no_face_ai.jpg": (True, True, True, "Trusted", [], "generated", True),
    "deep_ingredients.jpg": (True, True, True, "Trusted", [], None, False),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> ProvenanceFiles:
    return make_provenance_files(tmp_path_factory.mktemp("provenance"))


@pytest.fixture(scope="module")
def reader(files: ProvenanceFiles) -> ProvenanceReader:
    return ProvenanceReader(ProvenanceOptions(trust_anchors=load_trust_anchors(str(files.trust))))


@pytest.fixture(scope="module")
def trusting(served_tag: str, files: ProvenanceFiles) -> Iterator[TestClient]:
    env = {"DEEPFAKE_MODEL_TAG": served_tag, "DEEPFAKE_PROVENANCE_TRUST_ANCHORS": str(files.trust)}
    with service_app(env) as client:
        yield client


def decoded(data: bytes) -> Image.Image:
    """The image as the pipeline decodes it (what the watermark reader sees)."""
    return decode_upload(data, DecodeLimits(), draft_size=(DRAFT_SIDE, DRAFT_SIDE))


def timed_read(reader: ProvenanceReader, data: bytes, image: Image.Image | None = None) -> Provenance:
    started = time.perf_counter()
    provenance = reader.read_image(data, image)
    assert time.perf_counter() - started < TIME_BUDGET_S
    return provenance


def post(client: TestClient, path: Path | str, route: str = DETECT, **fields: str) -> Any:
    path = Path(path)
    return client.post(route, files={"file": (path.name, path.read_bytes(), "image/jpeg")}, data=fields)


# ---------------------------------------------------------------- the reader


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_signed_file_reads_right(reader: ProvenanceReader, files: ProvenanceFiles, name: str) -> None:
    data = files[name].read_bytes()
    provenance = timed_read(reader, data, decoded(data))
    c2pa = provenance.c2pa
    assert c2pa is not None and provenance.checked == ["c2pa", "xmp", "watermark"]
    present, valid, trusted, state, failures, ai, decides = EXPECTED[name]
    seen = (
        c2pa.present,
        c2pa.valid,
        c2pa.trusted,
        c2pa.validation_state,
        c2pa.failures,
        c2pa.ai,
        provenance.decides,
    )
    assert seen == (present, valid, trusted, state, failures, ai, decides), c2pa
    if present:
        credential = files.untrusted if name.startswith("untrusted") else files.trusted
        assert c2pa.signer is not None and (c2pa.signer.subject, c2pa.signer.issuer) == (
            credential.subject,
            credential.issuer,
        )
        assert c2pa.claim_generator and c2pa.error is None
    assert provenance.watermarks == []


def test_what_the_signed_files_declare(reader: ProvenanceReader, files: ProvenanceFiles) -> None:
    def read(name: str) -> Provenance:
        return timed_read(reader, files[name].read_bytes())

    assert read("camera.jpg").c2pa.digital_source_types == [f"{IPTC}digitalCapture"]  # type: ignore[union-attr]
    assert read("ai_generated.jpg").c2pa.digital_source_types == [GENERATED]  # type: ignore[union-attr]
    edited = read("ai_edited.jpg").c2pa
    assert edited is not None and edited.digital_source_types == [
        f"{IPTC}compositeWithTrainedAlgorithmicMedia"
    ]
    assert (edited.ingredients_ai, edited.claim_generator) == (None, "TestEditor 3.0")  # its parent: a camera
    claim = read("xmp_claim.jpg").xmp
    assert claim is not None and (claim.digital_source_type, claim.ai) == (GENERATED, "generated")


def test_an_ai_image_edited_by_a_trusted_editor_keeps_its_history(
    reader: ProvenanceReader, files: ProvenanceFiles
) -> None:
    ai = files["ai_generated.jpg"].read_bytes()
    cropped = sign(
        ai, "image/jpeg", files.trusted, [actions(("c2pa.cropped", None))], parent=(ai, "image/jpeg")
    )
    c2pa = timed_read(reader, cropped).c2pa
    assert c2pa is not None and (c2pa.trusted, c2pa.ai, c2pa.ingredients_ai) == (True, None, "generated")
    assert not timed_read(reader, cropped).decides  # the active manifest itself declares no generation


@pytest.mark.parametrize(
    "eku", ["1.3.6.1.5.5.7.3.36", "1.3.6.1.4.1.62558.2.1"], ids=["documentSigning", "c2pa-claimSigning"]
)
def test_the_other_signer_profiles_the_specification_allows(eku: str) -> None:
    """Signers whose certificates carry the C2PA profile's other extended key usages are
    trusted under their CA (this library version alone reads them "invalid": SIGNER_EKUS).
    Signed without the library's own check after signing, which uses its default list."""
    import c2pa

    credential = make_credential("EKU Test CA", "EKU Signer", "EKU Tests", eku=eku)
    context = c2pa.Context.from_dict(
        {"builder": {"thumbnail": {"enabled": False}}, "verify": {"verify_after_sign": False}}
    )
    signer = c2pa.Signer.from_info(
        c2pa.C2paSignerInfo(c2pa.C2paSigningAlg.ES256, credential.chain, credential.key, None)
    )
    with c2pa.Builder(
        {"assertions": [actions(("c2pa.created", "trainedAlgorithmicMedia"))]}, context=context
    ) as builder:
        out = io.BytesIO()
        builder.sign(signer, "image/jpeg", io.BytesIO(FACE_PHOTO.read_bytes()), out)
    reader = ProvenanceReader(ProvenanceOptions(trust_anchors=credential.ca_pem.decode()))
    provenance = reader.read_image(out.getvalue())
    assert provenance.c2pa is not None and (provenance.c2pa.trusted, provenance.decides) == (True, True)


def test_without_a_trust_list_nothing_is_trusted(files: ProvenanceFiles) -> None:
    untrusting = ProvenanceReader(ProvenanceOptions())
    for name in ("ai_generated.jpg", "camera.jpg", "ai_generated.png"):
        provenance = untrusting.read_image(files[name].read_bytes())
        c2pa = provenance.c2pa
        assert c2pa is not None and (c2pa.valid, c2pa.trusted, c2pa.validation_state) == (
            True,
            False,
            "Valid",
        )
        assert "signingCredential.untrusted" in c2pa.failures and not provenance.decides


def test_an_unsigned_photo_declares_nothing(reader: ProvenanceReader) -> None:
    data = FACE_PHOTO.read_bytes()
    provenance = timed_read(reader, data, decoded(data))
    assert provenance.c2pa is not None and provenance.c2pa.present is False and provenance.c2pa.valid is None
    assert (provenance.xmp, provenance.watermarks, provenance.decides) == (None, [], False)


def test_a_bmp_is_said_not_checked(reader: ProvenanceReader) -> None:
    buffer = io.BytesIO()
    Image.open(FACE_PHOTO).save(buffer, "BMP")
    provenance = reader.read_image(buffer.getvalue(), decoded(buffer.getvalue()))
    assert provenance.c2pa is None and set(provenance.not_checked) == {"c2pa", "xmp"}
    assert provenance.checked == ["watermark"]


DST = b"http://cv.iptc.org/newscodes/digitalsourcetype/"


@pytest.mark.parametrize(
    ("xmp", "expected"),
    [
        (b'<r Iptc4xmpExt:DigitalSourceType="' + DST + b'trainedAlgorithmicMedia"/>', "generated"),
        (b"<E:DigitalSourceType>" + DST + b"compositeSynthetic</E:DigitalSourceType>", "edited"),
        (b'<x:DigitalSourceType rdf:resource="' + DST + b'digitalCapture"/>', None),
    ],
    ids=["attribute", "element", "resource"],
)
def test_xmp_source_type_forms(xmp: bytes, expected: str | None) -> None:
    claim = xmp_source_type(b"<x:xmpmeta>" + xmp + b"</x:xmpmeta>")
    assert claim is not None and claim.ai == expected


def test_a_hostile_xmp_packet_is_read_in_bounded_time() -> None:
    started = time.perf_counter()
    assert xmp_source_type(b"a:DigitalSourceType=" + b'"' * 2_000_000) is None
    assert xmp_source_type(b"<a:DigitalSourceType>" + b"x" * 5_000_000) is None
    assert time.perf_counter() - started < TIME_BUDGET_S


class _Counting(http.server.BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        _Counting.hits.append(self.path)
        self.send_response(404)
        self.end_headers()

    def log_message(self, *_: Any) -> None:
        pass


def test_a_remote_manifest_is_not_fetched_unless_the_operator_says_so(files: ProvenanceFiles) -> None:
    """The file points to its manifest on a server (here one on loopback that counts requests):
    the default reader never asks it; the reader with remote manifests on does."""
    import c2pa

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Counting)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/manifest.c2pa"
    try:
        context = c2pa.Context.from_dict({"builder": {"thumbnail": {"enabled": False}}})
        signer = c2pa.Signer.from_info(
            c2pa.C2paSignerInfo(c2pa.C2paSigningAlg.ES256, files.trusted.chain, files.trusted.key, None)
        )
        with c2pa.Builder(
            {"assertions": [actions(("c2pa.created", "digitalCapture"))]}, context=context
        ) as builder:
            builder.set_no_embed()
            builder.set_remote_url(url)
            out = io.BytesIO()
            builder.sign(signer, "image/jpeg", io.BytesIO(FACE_PHOTO.read_bytes()), out)
        remote = out.getvalue()
        _Counting.hits.clear()
        offline = ProvenanceReader(ProvenanceOptions()).read_image(remote).c2pa
        assert _Counting.hits == []
        assert offline is not None and (offline.present, offline.trusted, offline.remote_url) == (
            True,
            False,
            url,
        )
        online = ProvenanceReader(ProvenanceOptions(remote_manifests=True)).read_image(remote).c2pa
        assert _Counting.hits == ["/manifest.c2pa"]  # the switch is real: it asks when told to
        assert online is not None and not online.trusted
    finally:
        server.shutdown()


def test_a_store_of_too_many_manifests_is_not_handed_to_the_library(
    reader: ProvenanceReader, files: ProvenanceFiles
) -> None:
    """Each manifest costs the library milliseconds to validate: a store past the bound is said
    present and not validated, never trusted (the deep chain, 13 manifests, is validated)."""
    from serving.provenance import MAX_MANIFESTS

    c2pa = timed_read(reader, files["many_manifests.jpg"].read_bytes()).c2pa
    assert c2pa is not None and (c2pa.present, c2pa.valid, c2pa.trusted) == (True, None, False)
    held = files["many_manifests.jpg"].read_bytes().count(b"c2pa.signature\x00")
    assert held > MAX_MANIFESTS and c2pa.error == (
        f"not validated: the file holds {held} manifests, over the {MAX_MANIFESTS} this server validates"
    )


def test_hostile_manifests_are_invalid_never_an_error(
    reader: ProvenanceReader, files: ProvenanceFiles
) -> None:
    for name, data in hostile_images(files).items():
        try:
            image = decoded(data)
        except Exception:  # noqa: BLE001 - some do not decode: the route answers 4xx (below)
            image = None
        provenance = timed_read(reader, data, image)
        c2pa = provenance.c2pa
        assert c2pa is not None, name
        # Malformed boxes are refused by the library; a tampered length field that the
        # library does not use leaves the signed parts intact (it still validates).
        assert c2pa.valid is not True or c2pa.validation_state in ("Trusted", "Valid"), (name, c2pa)
        if c2pa.present and c2pa.valid is False:
            assert c2pa.error or c2pa.failures, (name, c2pa)


# ---------------------------------------------------------------- the answers


def test_the_answer_carries_what_the_reader_reads(
    trusting: TestClient, reader: ProvenanceReader, files: ProvenanceFiles
) -> None:
    for name in sorted(EXPECTED):
        data = files[name].read_bytes()
        body = post(trusting, files[name], require_face="false").json()
        assert body["provenance"] == reader.read_image(data, decoded(data)).model_dump(mode="json"), name


def test_a_trusted_ai_declaration_decides_and_the_model_is_still_reported(
    trusting: TestClient, files: ProvenanceFiles
) -> None:
    plain = post(trusting, FACE_PHOTO).json()  # the same pixels, no manifest
    body = post(trusting, files["ai_generated.jpg"]).json()
    assert (body["verdict"], body["prediction"], body["confidence"]) == ("likely_fake", "fake", 1.0)
    assert body["fake_probability"] == pytest.approx(plain["fake_probability"])  # the model's, unchanged
    assert body["model_verdict"] == plain["verdict"] == plain["model_verdict"]
    assert files.trusted.subject in body["reason"] and "trainedAlgorithmicMedia" in body["reason"]
    assert [f["verdict"] for f in body["faces"]] == [f["verdict"] for f in plain["faces"]]
    assert plain["reason"] is None and plain["provenance"]["c2pa"]["present"] is False


@pytest.mark.parametrize(
    "name", ["camera.jpg", "ai_edited.jpg", "edited_after_signing.jpg", "untrusted_ai.jpg", "xmp_claim.jpg"]
)
def test_anything_else_changes_nothing(trusting: TestClient, files: ProvenanceFiles, name: str) -> None:
    """A capture, an AI edit, a tampered file, an untrusted signer, an unsigned claim: reported,
    the verdict the model's. (edited_after_signing's pixels differ: judged on its own.)"""
    body = post(trusting, files[name]).json()
    assert body["reason"] is None and body["provenance"]["decides"] is False
    assert (body["verdict"], body["prediction"]) == (body["model_verdict"], body["prediction"])
    assert (body["fake_probability"] >= 0.5) == (body["prediction"] == "fake")


def test_no_face_but_a_trusted_ai_declaration_is_a_verdict(
    trusting: TestClient, files: ProvenanceFiles
) -> None:
    refused = post(trusting, FIXTURES / "coffee_no_face.jpg")
    assert (refused.status_code, refused.json()["error_code"]) == (422, "NO_FACE")
    body = post(trusting, files["no_face_ai.jpg"]).json()
    assert (body["verdict"], body["model_verdict"], body["fake_probability"]) == (
        "likely_fake",
        "no_face",
        None,
    )
    assert (body["prediction"], body["face_count"]) == ("fake", 0)


def test_augmented_and_the_client_route_carry_it_too(trusting: TestClient, files: ProvenanceFiles) -> None:
    augmented = post(trusting, files["ai_generated.jpg"], "/api/v1/detect/augmented").json()
    assert (augmented["verdict"], augmented["consensus_prediction"], augmented["consensus"]) == (
        "likely_fake",
        "FAKE",
        "fake",
    )
    assert augmented["reason"] and augmented["original_prediction"]["reason"] == augmented["reason"]
    assert augmented["provenance"]["c2pa"]["trusted"] is True
    client = post(trusting, files["camera.jpg"], "/detect").json()
    assert client["provenance"]["c2pa"]["digital_source_types"] == [f"{IPTC}digitalCapture"]
    assert client["reason"] is None


def test_the_default_server_trusts_no_one(app: TestClient, files: ProvenanceFiles) -> None:
    body = post(app, files["ai_generated.jpg"]).json()
    c2pa = body["provenance"]["c2pa"]
    assert (c2pa["valid"], c2pa["trusted"], c2pa["ai"]) == (True, False, "generated")
    assert body["reason"] is None and body["verdict"] == body["model_verdict"]


def test_provenance_off(served_tag: str, files: ProvenanceFiles) -> None:
    with service_app({"DEEPFAKE_MODEL_TAG": served_tag, "DEEPFAKE_PROVENANCE": "false"}) as off:
        body = post(off, files["ai_generated.jpg"]).json()
    assert body["provenance"]["checked"] == [] and set(body["provenance"]["not_checked"]) == {
        "c2pa",
        "xmp",
        "watermark",
    }
    assert body["reason"] is None


def test_hostile_manifests_never_answer_5xx(trusting: TestClient, files: ProvenanceFiles) -> None:
    statuses = {}
    for name, data in hostile_images(files).items():
        started = time.perf_counter()
        response = trusting.post(
            DETECT, files={"file": (name, data, "image/jpeg")}, data={"require_face": "false"}
        )
        statuses[name] = response.status_code
        assert time.perf_counter() - started < 30, name
        if response.status_code == 200:
            assert response.json()["provenance"]["c2pa"]["present"] in (True, False)
    assert all(400 <= status < 500 or status == 200 for status in statuses.values()), statuses


def test_the_docs_describe_provenance(app: TestClient) -> None:
    schemas = app.get("/docs.json").json()["components"]["schemas"]
    assert {"Provenance", "ContentCredentials", "XmpClaim", "WatermarkFinding", "Signer"} <= set(schemas)
    assert "provenance" in schemas["DetectResponse"]["properties"]
    assert {"provenance", "reason"} <= set(schemas["VideoResponse"]["properties"])


def test_the_python_client_gets_it(server: ServerProcess, files: ProvenanceFiles) -> None:
    with bentoml.SyncHTTPClient(server.url) as client:
        result = client.detect(file=files["ai_generated.jpg"])
    c2pa = result["provenance"]["c2pa"]
    assert (c2pa["present"], c2pa["valid"], c2pa["trusted"], c2pa["ai"]) == (True, True, False, "generated")


# ---------------------------------------------------------------- video


def test_a_signed_video_carries_its_credentials(trusting: TestClient, files: ProvenanceFiles) -> None:
    from tests.videos import clip

    signed = sign_video(clip("moving.mp4"), files.trusted)
    response = trusting.post(
        "/api/v1/detect/video", files={"file": ("ai.mp4", signed, "video/mp4")}, data={"frames": "6"}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    c2pa = body["provenance"]["c2pa"]
    assert (c2pa["valid"], c2pa["trusted"], c2pa["ai"], body["provenance"]["decides"]) == (
        True,
        True,
        "generated",
        True,
    )
    assert (body["verdict"], body["prediction"]) == ("likely_fake", "fake") and body["reason"]
    plain = trusting.post(
        "/api/v1/detect/video",
        files={"file": ("moving.mp4", clip("moving.mp4").read_bytes(), "video/mp4")},
        data={"frames": "6"},
    ).json()
    assert plain["provenance"]["c2pa"]["present"] is False and plain["reason"] is None
    assert body["model_verdict"] == plain["verdict"]


def test_a_hostile_video_manifest_is_not_a_5xx(trusting: TestClient) -> None:
    from tests.videos import clip

    response = trusting.post(
        "/api/v1/detect/video",
        files={"file": ("x.mp4", hostile_video(clip("moving.mp4")), "video/mp4")},
        data={"frames": "4"},
    )
    assert response.status_code < 500, response.text
    if response.status_code == 200:
        c2pa = response.json()["provenance"]["c2pa"]
        assert c2pa["trusted"] is False
