"""What needs a server of its own: calls the batching queue sheds, and a graceful stop.

One server for both, with the slow model and `max_latency_ms=1` (any call that has to queue
is shed); the shutdown test stops it, so it runs last."""

from __future__ import annotations

import concurrent.futures
import signal
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.helpers import ServerProcess, image_bytes

DETECT = "/api/v1/detect/"
JPEG = image_bytes("JPEG", size=(200, 150))


@pytest.fixture(scope="module")
def shedding_server(slow_tag: str) -> Iterator[ServerProcess]:
    env = {
        "DEEPFAKE_MODEL_TAG": slow_tag,
        "DEEPFAKE_FACE_DETECTION": "false",
        "DEEPFAKE_MAX_LATENCY_MS": "1",  # any call that has to queue is shed
    }
    with ServerProcess(env=env) as running:
        yield running


def test_calls_the_model_service_sheds_answer_503_service_overloaded(shedding_server: ServerProcess) -> None:
    """Past max_latency_ms the model service drops queued calls (a bare 503); that is
    overload, not a broken model: SERVICE_OVERLOADED with Retry-After, and the server goes on."""
    server = shedding_server

    def one(_: int) -> httpx.Response:
        return server.post(DETECT, files={"file": ("a.jpg", JPEG, "image/jpeg")})

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(one, range(48)))
    shed = [a for a in answers if a.status_code == 503]
    assert shed, "nothing was shed: the test did not overload the model"
    assert {a.json()["error_code"] for a in shed} == {"SERVICE_OVERLOADED"}
    assert all(a.headers["retry-after"] for a in shed)
    assert {a.status_code for a in answers} <= {200, 503}
    assert one(0).status_code == 200  # alone again: served


def test_sigterm_lets_requests_in_flight_finish(shedding_server: ServerProcess) -> None:
    """SIGTERM to `bentoml serve` (what Kubernetes sends): the request in flight is answered
    200, then every process exits within the bound."""
    server = shedding_server
    assert server.process is not None
    big = image_bytes("PNG", size=(1600, 1200), seed=4)  # seven variants: hundreds of ms
    answers: list[httpx.Response | BaseException] = []

    def send() -> None:
        try:
            answers.append(
                httpx.post(
                    f"{server.url}/api/v1/detect/augmented", files={"file": ("a.png", big)}, timeout=60
                )
            )
        except httpx.HTTPError as exc:
            answers.append(exc)

    thread = threading.Thread(target=send)
    thread.start()
    time.sleep(0.15)  # sent, being decoded or in the model
    stopped_at = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    thread.join(timeout=60)
    assert server.process.wait(timeout=60) is not None
    took = time.monotonic() - stopped_at
    print(f"\nSIGTERM: in-flight answer {answers}, stopped in {took:.1f} s")
    assert len(answers) == 1 and isinstance(answers[0], httpx.Response), answers
    assert answers[0].status_code == 200, answers[0].text
