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
        ("TRUSTED_PROXIES", "10.0.0.0/33"),
        ("UI_API_ORIGINS", "https://api.example.org/path"),
        ("HEADER_TIMEOUT_S", "60"),
        ("KEY_FAILURE_LIMITS", "often"),
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


# Settings that bound nothing a client can make the server do: what to serve, how to batch,
# how to judge, where to write, how to log. Every other setting is a limit and says which
# threat it answers; a new setting must be put on one side or the other.
NOT_LIMITS = {
    "model_tag", "max_batch_size", "max_latency_ms", "batch_policy", "api_workers", "face_detection",
    "require_face", "face_detector", "face_min_score", "detect_max_side", "face_tiles", "video_frames",
    "video_full_every", "jobs_dir", "log_format", "job_store", "job_stale_after_s", "provenance",
    "provenance_watermarks", "precision",
}  # fmt: skip


def test_every_limit_says_which_threat_it_answers() -> None:
    from serving.settings import threat_of

    unclassified = {name for name, field in Settings.model_fields.items() if threat_of(field) is None}
    assert unclassified == NOT_LIMITS


def test_security_md_lists_every_limit_as_the_settings_model_does() -> None:
    from serving.settings import security_table

    security = (ROOT / "SECURITY.md").read_text()
    assert security_table() in security, "SECURITY.md's limits are stale: python -m serving.settings security"


def test_a_bad_api_key_is_named_but_not_shown(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A key with a newline (a file's) would never match: refused at start, without printing it."""
    monkeypatch.setenv("DEEPFAKE_API_KEY", "s3cret-from-a-file\n")
    get_settings.cache_clear()
    with pytest.raises(SettingsError):
        get_settings()
    get_settings.cache_clear()
    message = capsys.readouterr().err
    assert "DEEPFAKE_API_KEY" in message and "s3cret" not in message
    monkeypatch.setenv("DEEPFAKE_API_KEY", "")
    assert Settings().api_key is None  # set but empty: no key, as before
