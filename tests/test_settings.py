"""Settings: one validated model; a bad value stops the start with one line naming it; the
README's table is the model's own."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from pydantic import ValidationError

from preprocessing import faces
from preprocessing.decode import DecodeLimits
from serving.settings import Settings, SettingsError, get_settings, markdown_table
from tests.helpers import ROOT


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("LOG_FORMAT", "jsno"),
        ("FACE_DETECTION", "ture"),
        ("MAX_FACES", "many"),
        ("MAX_FACES", "0"),
        ("RATE_LIMITS", "50 per hour"),
        ("REQUEST_TIMEOUT_S", "-1"),
        ("BATCH_POLICY", "eager"),
    ],
)
def test_a_bad_value_names_its_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], name: str, value: str
) -> None:
    monkeypatch.setenv(f"DEEPFAKE_{name}", value)
    with pytest.raises(ValidationError):
        Settings()
    get_settings.cache_clear()
    with pytest.raises(SettingsError) as stopped:
        get_settings()
    get_settings.cache_clear()
    assert stopped.value.code == 2
    message = capsys.readouterr().err.strip()
    assert message.count("\n") == 0 and f"DEEPFAKE_{name}" in message and repr(value) in message


def test_values_parse_as_a_deployer_writes_them(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "FACE_DETECTION": "FALSE",
        "CORS_ORIGINS": "https://a.example, https://b.example",
        "API_KEY": "s3cret-key",
        "REQUEST_TIMEOUT_S": "30",
    }.items():
        monkeypatch.setenv(f"DEEPFAKE_{name}", value)
    settings = Settings()
    assert settings.face_detection is False
    assert settings.cors_origins == ("https://a.example", "https://b.example")
    assert settings.api_key and settings.api_key.get_secret_value() == "s3cret-key"
    assert "s3cret-key" not in repr(settings)  # never in a log line
    assert settings.upload_timeout == 15  # half the request timeout, unless set


def test_defaults_are_those_of_the_facts_they_describe() -> None:
    settings = Settings()
    assert settings.limits == DecodeLimits()
    assert settings.max_faces == faces.DEFAULT_MAX_FACES
    # The detector's own choices unless set: its name from the model's metadata, its threshold.
    assert (settings.face_detector, settings.face_min_score, settings.detect_max_side) == (None, None, None)


def test_the_readme_table_is_the_settings_model() -> None:
    readme = (ROOT / "README.md").read_text()
    assert markdown_table() in readme, "README.md's settings table is stale: python -m serving.settings"


def test_the_server_does_not_start_on_a_bad_setting() -> None:
    env = {**os.environ, "DEEPFAKE_LOG_FORMAT": "jsno"}
    run = subprocess.run(
        [sys.executable, "-m", "bentoml", "serve", "service:DeepfakeDetector", "--port", "1"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode != 0
    assert "bad setting DEEPFAKE_LOG_FORMAT='jsno'" in run.stderr, run.stderr[-2000:]
    assert "Traceback" not in run.stderr, run.stderr[-2000:]
