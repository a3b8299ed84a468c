"""The served model's metadata: the single source of truth for labels, threshold, input size
and normalisation. `model_import.py` writes it into the BentoML model store; the services read
it back. Nothing else in the project hard-codes these facts."""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from preprocessing.faces import CROP_SIZE, DEFAULT_MARGIN
from preprocessing.tensor import Normalization

# The store name `model_import.py` imports under and the server serves by default.
DEFAULT_MODEL_NAME = "deepfake_classifier"
# The face detector's model files in the store (BlazeFace's .tflite), packed into the Bento.
DETECTOR_FILES_NAME = "face_detector_files"

Label = Literal["fake", "real"]
# What a person may conclude: the served P(fake) against the model's verdict bands. `no_face`:
# nothing was judged (no face found in a photo that is not itself a face crop).
VerdictName = Literal["likely_fake", "uncertain", "likely_real", "no_face"]
# How the model service runs the network (modeling/optimized.py): fp32 and bf16 on TensorFlow
# (the Keras file), fp16 on LiteRT, int8 on ONNX Runtime (a CLIP model: a quantized ONNX file)
# or LiteRT (any other model); the converted file is stored beside the Keras file.
Precision = Literal["fp32", "bf16", "fp16", "int8"]
Runtime = Literal["tensorflow", "litert", "onnxruntime"]


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


class StoredPrecision(BaseModel):
    """One way to run the model that the import stored: fp32 (the Keras file, the reference) or
    an optimized precision that passed the gate on the import's CPU, with its file."""

    model_config = ConfigDict(frozen=True)

    precision: Precision
    runtime: Runtime
    file: str = ""  # the converted file in the model's folder; "": the Keras file itself
    sha256: str = ""
    acceptance: Acceptance | None = None  # None for fp32


# The served probability's decision point: every model's own threshold is mapped onto it.
DECISION_POINT = 0.5
_EDGE = 1e-7  # raw outputs are clipped this far inside (0, 1) before taking a logit


@dataclass(frozen=True)
class Verdict:
    """One face (or image) judged: the label, the probability of that label, the served P(fake)
    (the decision is at 0.5: fake when >= 0.5), the model's raw output, and what a person may
    conclude (`verdict`)."""

    prediction: Label
    confidence: float
    fake_probability: float
    raw: float
    verdict: VerdictName


class ModelSpec(BaseModel):
    """What a model's single sigmoid output means and how its input must be prepared."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    schema_version: int = 1
    # labels[i] is class i; the raw sigmoid output is the probability of labels[1].
    # Legacy FaceNet files: class 0 = fake, class 1 = real, so the output is P(real).
    labels: tuple[Label, Label] = ("fake", "real")
    # The image is "fake" when P(fake) >= threshold.
    threshold: float = Field(0.5, gt=0.0, lt=1.0)
    input_size: tuple[int, int] = (CROP_SIZE[1], CROP_SIZE[0])  # (height, width)
    normalization: Normalization = "zero_one"
    # How faces are cut for this model (preprocessing.faces.crop_face): what it was trained on.
    face_margin: float = Field(DEFAULT_MARGIN, ge=0.0)
    face_align: bool = False
    # The face detector the training crops came from (preprocessing.faces); "" if unknown.
    detector: str = ""
    # The backbone the classifier is built on ("clip-vit-b16", "facenet"); "" if not stated.
    backbone: str = ""
    verdict_bands: VerdictBands = Field(default_factory=VerdictBands)
    group: GroupRule = Field(default_factory=GroupRule)
    # How the served probability was calibrated, and under which prior (informational).
    calibration: dict[str, Any] = Field(default_factory=dict)
    file_format: Literal["keras", "saved_model"] = "keras"
    # Every precision the import stored (fp32 first, then each one the gate accepted): the model
    # service picks one at start from the CPU's flags (modeling.optimized.pick_precision).
    # Empty for a model stored before this field: the single fields below are then what runs.
    precisions: tuple[StoredPrecision, ...] = ()
    # The precision the import's own CPU picks (what a model of the last version serves). fp32:
    # the Keras file (or SavedModel) on TensorFlow; bf16: the same file with TensorFlow's bf16
    # rewrite; fp16/int8: `optimized_file` (LiteRT or ONNX Runtime), stored beside the Keras
    # file, which stays the reference.
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
        """The model's own P(fake) for a raw output (before the decision point is moved)."""
        raw = min(max(float(raw), 0.0), 1.0)
        return raw if self.labels[1] == "fake" else 1.0 - raw

    def logit(self, raw: float) -> float:
        """The served log-odds of fake: the model's, shifted so that its threshold reads 0.5.

        A threshold t on a calibrated P(fake) is the decision a prior with fake odds (1-t)/t
        makes at 0.5, so the shift is a change of prior: the served P(fake) is calibrated
        under the prior that puts the model's decision point at 0.5 (the legacy fields then
        read coherently: a "real" never under 50 %, the threshold 50 %)."""
        p = min(max(self.fake_probability(raw), _EDGE), 1.0 - _EDGE)
        return math.log(p / (1.0 - p)) - math.log(self.threshold / (1.0 - self.threshold))

    def judge(self, raw: float) -> Verdict:
        return self.judge_logit(self.logit(raw), float(raw))

    def judge_logit(self, logit: float, raw: float = float("nan")) -> Verdict:
        """The verdict for a served log-odds of fake."""
        p_fake = 1.0 / (1.0 + math.exp(-logit))
        label: Label = "fake" if p_fake >= DECISION_POINT else "real"
        confidence = p_fake if label == "fake" else 1.0 - p_fake
        return Verdict(label, confidence, p_fake, raw, self.verdict_of(p_fake))

    def verdict_of(self, p_fake: float) -> VerdictName:
        if p_fake >= self.verdict_bands.fake_from:
            return "likely_fake"
        if p_fake <= self.verdict_bands.real_up_to:
            return "likely_real"
        return "uncertain"

    def group_shift(self, faces: int) -> float:
        """How far (in served log-odds) the most-fake of `faces` faces must clear the bar of one
        face, so that a real photo of that many faces is called fake no more often (Sidak:
        the largest of n real faces' logits exceeds the (1-alpha)^(1/n) quantile with
        probability alpha, on the normal fit of real faces' logits)."""
        std = self.group.real_logit_std
        if std is None or faces <= 1:
            return 0.0
        normal, alpha = NormalDist(), self.group.alpha
        return std * (normal.inv_cdf((1.0 - alpha) ** (1.0 / faces)) - normal.inv_cdf(1.0 - alpha))

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any]) -> ModelSpec:
        return cls.model_validate(metadata)

    def stored_precisions(self) -> tuple[StoredPrecision, ...]:
        """What the store holds: `precisions`, or for a model of the last version its one
        precision (with fp32, the Keras file, beside an optimized one)."""
        if self.precisions:
            return self.precisions
        fp32 = StoredPrecision(precision="fp32", runtime="tensorflow")
        if self.precision == "fp32":
            return (fp32,)
        single = StoredPrecision(
            precision=self.precision, runtime=self.runtime, file=self.optimized_file,
            sha256=self.optimized_sha256, acceptance=self.acceptance,
        )  # fmt: skip
        return (fp32, single)

    def to_metadata(self) -> dict[str, Any]:
        # The model store takes no None values; a field left out reads back as its default.
        return self.model_dump(mode="json", exclude_none=True)
