"""The served model's metadata: the single source of truth for labels, threshold, input size
and normalisation. `model_import.py` writes it into the BentoML model store; the services read
it back. Nothing else in the project hard-codes these facts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Normalization = Literal["zero_one", "minus_one_one", "raw"]
Label = Literal["fake", "real"]
# What a person may conclude: the served P(fake) against the model's verdict bands. `no_face`:
# nothing was judged (no face found in a photo that is not itself a face crop).
VerdictName = Literal["likely_fake", "uncertain", "likely_real", "no_face"]
# How the model service runs the network (modeling/optimized.py): fp32 and bf16 on TensorFlow
# (the Keras file), fp16 and int8 on LiteRT (a converted file beside it).
Precision = Literal["fp32", "bf16", "fp16", "int8"]
Runtime = Literal["tensorflow", "litert"]


class VerdictBands(BaseModel):
    """Served P(fake) <= `real_up_to` reads likely_real, >= `fake_from` likely_fake, between
    the two: uncertain. Set on validation for the default model (its recipe says how)."""

    model_config = ConfigDict(frozen=True)

    real_up_to: float = Field(0.3, ge=0.0, le=0.5)
    fake_from: float = Field(0.7, ge=0.5, le=1.0)


class GroupRule(BaseModel):
    """An image with n faces is judged by its most-fake face, against a bar raised with n so
    that a real photo of n faces is called fake no more often than a photo of one (Sidak, on a
    normal fit of real faces' served logits: `real_logit_std`). None: no correction."""

    model_config = ConfigDict(frozen=True)

    alpha: float = Field(0.05, gt=0.0, lt=0.5)
    real_logit_std: float | None = Field(None, gt=0.0)


class Acceptance(BaseModel):
    """The gate an optimized precision passed (or failed) at import, against fp32 TensorFlow."""

    model_config = ConfigDict(frozen=True)

    accepted: bool
    reason: str = ""  # why not, when not accepted
    max_p_fake_change: float  # largest |P(fake) - fp32 P(fake)| over evaluation crops and fixtures
    p99_p_fake_change: float = 0.0
    mean_p_fake_change: float = 0.0
    limit: float
    crops: int  # evaluation crops and fixtures scored
    fixtures: int
    label_flips: int  # over all crops scored; the gate counts the fixtures'
    fixture_flips: int
    calibration_crops: int = 0  # int8: crops the activation ranges came from
    calibration_sha256: str = ""  # of the calibration-set folder
    cpu: str = ""  # where it was measured


@dataclass(frozen=True)
class Verdict:
    """One image (or face) judged: the label, the probability of that label, and P(fake)."""

    prediction: Label
    confidence: float
    fake_probability: float
    raw: float


class ModelSpec(BaseModel):
    """What a model's single sigmoid output means and how its input must be prepared."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    schema_version: int = 1
    # labels[i] is class i; the raw sigmoid output is the probability of labels[1].
    # Legacy FaceNet files: class 0 = fake, class 1 = real, so the output is P(real).
    labels: tuple[Label, Label] = ("fake", "real")
    # The image is "fake" when P(fake) >= threshold.
    threshold: float = Field(0.5, gt=0.0, lt=1.0)
    input_size: tuple[int, int] = (160, 160)  # (height, width)
    normalization: Normalization = "zero_one"
    # How faces are cut for this model (preprocessing.faces.crop_face): what it was trained on.
    face_margin: float = Field(0.25, ge=0.0)
    face_align: bool = False
    # The face detector the training crops came from (preprocessing.faces); "" if unknown.
    detector: str = ""
    verdict_bands: VerdictBands = Field(default_factory=VerdictBands)
    group: GroupRule = Field(default_factory=GroupRule)
    # How the served probability was calibrated, and under which prior (informational).
    calibration: dict[str, Any] = Field(default_factory=dict)
    file_format: Literal["keras", "saved_model"] = "keras"
    # What the model service runs. fp32: the Keras file (or SavedModel) on TensorFlow; bf16: the
    # same file with TensorFlow's bf16 rewrite; fp16/int8: `optimized_file` on LiteRT, stored
    # beside the Keras file, which stays the reference.
    precision: Precision = "fp32"
    runtime: Runtime = "tensorflow"
    optimized_file: str = ""
    optimized_sha256: str = ""
    acceptance: Acceptance | None = None
    # Loaded with Keras safe_mode off: only for files the importer was told to trust.
    trusted_code: bool = False
    description: str = ""
    placeholder: bool = False
    source: dict[str, Any] = Field(default_factory=dict)
    frameworks: dict[str, str] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    card: dict[str, Any] = Field(default_factory=dict)

    @field_validator("labels")
    @classmethod
    def _both_labels(cls, labels: tuple[str, str]) -> tuple[str, str]:
        if set(labels) != {"fake", "real"}:
            raise ValueError("labels must be 'fake' and 'real', one per class")
        return labels

    @property
    def output_meaning(self) -> str:
        return f"P({self.labels[1]})"

    def fake_probability(self, raw: float) -> float:
        raw = min(max(float(raw), 0.0), 1.0)
        return raw if self.labels[1] == "fake" else 1.0 - raw

    def judge(self, raw: float) -> Verdict:
        p_fake = self.fake_probability(raw)
        if p_fake >= self.threshold:
            return Verdict("fake", p_fake, p_fake, float(raw))
        return Verdict("real", 1.0 - p_fake, p_fake, float(raw))

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any]) -> ModelSpec:
        return cls.model_validate(metadata)

    def to_metadata(self) -> dict[str, Any]:
        # The model store takes no None values; a field left out reads back as its default.
        return self.model_dump(mode="json", exclude_none=True)
