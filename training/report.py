"""The evaluation report as text (and JSON) and the ROC plot as a PNG drawn with Pillow."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from training.metrics import calibration_table, roc_auc, roc_curve

COLOURS = (
    (31, 119, 180),
    (214, 39, 40),
    (44, 160, 44),
    (148, 103, 189),
    (255, 127, 14),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
)


def per_source(
    y_fake: np.ndarray, p_fake: np.ndarray, sources: np.ndarray, threshold: float
) -> list[dict[str, Any]]:
    """Each source: its size, mean P(fake), accuracy at the threshold, and its AUC against
    every image of the other class in the same evaluation set."""
    y, s, src = np.asarray(y_fake, bool), np.asarray(p_fake), np.asarray(sources)
    rows = []
    for source in sorted(set(src.tolist())):
        inside = src == source
        label_fake = bool(y[inside][0])
        against = inside | (y != label_fake)
        rows.append(
            {
                "source": source,
                "label": "fake" if label_fake else "real",
                "n": int(inside.sum()),
                "mean_p_fake": float(s[inside].mean()),
                "accuracy": float(np.mean((s[inside] >= threshold) == y[inside])),
                "auc_vs_other_class": roc_auc(y[against], s[against]),
            }
        )
    return rows


def text_report(title: str, lines: Sequence[str], evaluations: Sequence[dict[str, Any]]) -> str:
    """`evaluations`: dicts with name, metrics, per_source and calibration (see `evaluation_dict`)."""
    out = [title, "=" * len(title), "", *lines, ""]
    for ev in evaluations:
        m = ev["metrics"]
        out += [ev["name"], "-" * len(ev["name"])]
        lo, hi = m["roc_auc_95ci"]
        groups = f", {m['n_groups']} groups" if "n_groups" in m else ""
        out.append(f"images: {m['n']} ({m['n_real']} real, {m['n_fake']} fake{groups})")
        how = m.get("ci_method", "bootstrap over images")
        out.append(f"ROC AUC: {m['roc_auc']:.3f} (95% interval {_f(lo)}-{_f(hi)}, {how})")
        if "false_accusation" in m:
            bands = m["bands"]
            out.append(
                f"at the served threshold 0.5: false accusations (real called fake) "
                f"{_f(m['false_accusation'])}, "
                f"fakes caught {_f(m['fakes_caught'])}; uncertain ({bands['real_up_to']:.3f} < P(fake) < "
                f"{bands['fake_from']:.3f}) {m['uncertain']:.3f} of all faces"
            )
        if "left_out" in m:
            left = m["left_out"]
            out.append(
                f"left-out source alone: {left['n']} faces, called fake {left['called_fake']:.3f}, "
                + ", ".join(f"{k} {v:.3f}" for k, v in left.items() if k not in ("n", "called_fake"))
            )
        out.append(
            f"at threshold P(fake) >= {m['threshold']:.3f}: accuracy {m['accuracy']:.3f}, balanced "
            f"accuracy {m['balanced_accuracy']:.3f}, fake recall {_f(m['fake_recall'])}, real recall "
            f"{_f(m['real_recall'])}"
        )
        out.append(
            f"calibration: log loss {m['log_loss']:.3f}, Brier {m['brier']:.3f}, ECE {m['ece']:.3f} "
            f"(classes weighted equally: {m['ece_class_balanced']:.3f})"
        )
        header = f"{'source':<12} {'label':<5} {'n':>5} {'mean P(fake)':>13} {'accuracy':>9}"
        out += ["", f"{header} {'AUC vs other class':>19}"]
        for row in ev["per_source"]:
            out.append(
                f"{row['source']:<12} {row['label']:<5} {row['n']:>5} {row['mean_p_fake']:>13.3f} "
                f"{row['accuracy']:>9.3f} {_f(row['auc_vs_other_class']):>19}"
            )
        out += [
            "",
            "calibration table, each class weighted equally (the model is calibrated for an even prior):",
            f"{'P(fake) bin':<12} {'n':>5} {'mean P(fake)':>13} {'fraction fake':>14}",
        ]
        for row in ev["calibration"]:
            mean, fraction = _f(row["mean_p_fake"]), _f(row["fraction_fake"])
            out.append(f"{row['bin']:<12} {row['count']:>5} {mean:>13} {fraction:>14}")
        out.append("")
    return "\n".join(out) + "\n"


def loso_target_table(folds: Sequence[Any]) -> list[str]:
    """One line per left-out source, against the targets (AUC >= 0.80, false accusations <= 10 %,
    fakes caught >= 50 %, uncertain <= 30 %); the rate that the left-out source decides is
    marked with * (its own faces: real ones for a real source, fakes for a fake source)."""
    if not folds:
        return []
    header = f"{'left out':<26} {'n real':>6} {'n fake':>6} {'AUC':>6} {'95% CI (groups)':>15}"
    lines = [
        "leave a source out, at the served threshold 0.5 (targets: AUC >= 0.80, false accusations <= 0.10,",
        "fakes caught >= 0.50, uncertain <= 0.30; * = the rate measured on the left-out source itself):",
        f"{header} {'false acc.':>10} {'caught':>7} {'uncertain':>9} {'t*':>6}  meets",
    ]
    for fold in folds:
        m = fold.scored.metrics
        lo, hi = m["roc_auc_95ci"]
        real = fold.label == "real"
        fa = f"{_f(m['false_accusation'])}{'*' if real else ' '}"
        caught = f"{_f(m['fakes_caught'])}{' ' if real else '*'}"
        meets = all(
            [
                m["roc_auc"] >= 0.80,
                (m["false_accusation"] or 0) <= 0.10,
                (m["fakes_caught"] or 0) >= 0.50,
                m["uncertain"] <= 0.30,
            ]
        )
        lines.append(
            f"{fold.source + ' (' + fold.label + ')':<26} {m['n_real']:>6} {m['n_fake']:>6} "
            f"{m['roc_auc']:>6.3f} "
            f"{_f(lo):>7}-{_f(hi):<7} {fa:>10} {caught:>7} {m['uncertain']:>9.3f} "
            f"{fold.operating.balanced_threshold:>6.3f}  {'yes' if meets else 'no'}"
        )
    return lines


def probe_lines(probe: dict[str, Any]) -> list[str]:
    means = probe["class_means"]
    lines = [
        f"shortcut probe (training.probe): logistic regression on {', '.join(probe['coefficients'])}, "
        f"{probe['folds']}-fold by group",
        f"  ROC AUC {probe['roc_auc']:.3f} on the {probe['n_rows']} training rows (crops and augmented "
        f"copies, weighted as in training; unweighted {probe['roc_auc_unweighted']:.3f}); "
        f"{probe['n_crops']} crops alone "
        f"{probe['roc_auc_clean_crops']:.3f}; accepted at <= {probe['max_auc']:.2f}: "
        f"{'PASSED' if probe['passed'] else 'FAILED'}",
        "  class means (weighted): "
        + "; ".join(
            f"{name} real {means['real'][name]:.3f} fake {means['fake'][name]:.3f}"
            for name in probe["coefficients"]
        ),
    ]
    return lines


def evaluation_dict(
    name: str, y_fake: np.ndarray, p_fake: np.ndarray, sources: np.ndarray, metrics: dict[str, Any]
) -> dict[str, Any]:
    return {
        "name": name,
        "metrics": metrics,
        "per_source": per_source(y_fake, p_fake, sources, metrics["threshold"]),
        "calibration": calibration_table(y_fake, p_fake, balanced=True),
    }


def roc_png(curves: Sequence[tuple[str, np.ndarray, np.ndarray]], title: str, size: int = 640) -> Image.Image:
    """ROC curves `(label, y_fake, p_fake)` on one white square plot, with a legend."""
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    font = _font(13)
    left, top, right, bottom = 64, 40, size - 20, size - 56
    width, height = right - left, bottom - top

    def xy(fpr: float, tpr: float) -> tuple[float, float]:
        return left + fpr * width, bottom - tpr * height

    for tick in np.linspace(0, 1, 6):
        x, y = xy(tick, tick)
        draw.line([(x, top), (x, bottom)], fill=(230, 230, 230))
        draw.line([(left, y), (right, y)], fill=(230, 230, 230))
        draw.text((x - 9, bottom + 6), f"{tick:.1f}", fill="black", font=font)
        draw.text((left - 30, y - 7), f"{tick:.1f}", fill="black", font=font)
    draw.rectangle([left, top, right, bottom], outline="black")
    draw.line([xy(0, 0), xy(1, 1)], fill=(160, 160, 160), width=1)
    for index, (label, y_fake, p_fake) in enumerate(curves):
        colour = COLOURS[index % len(COLOURS)]
        fpr, tpr = roc_curve(y_fake, p_fake)
        draw.line([xy(f, t) for f, t in zip(fpr, tpr, strict=True)], fill=colour, width=2 if index else 3)
        ly = bottom - 18 - 16 * (len(curves) - 1 - index)
        draw.line([(left + width * 0.45, ly + 7), (left + width * 0.45 + 18, ly + 7)], fill=colour, width=3)
        auc = roc_auc(y_fake, p_fake)
        draw.text((left + width * 0.45 + 24, ly), f"{label} (AUC {auc:.3f})", fill="black", font=font)
    draw.text((left, 12), title, fill="black", font=_font(15))
    draw.text(
        (left + width / 2 - 70, size - 28), "false positive rate (real judged fake)", fill="black", font=font
    )
    label = Image.new("RGB", (height, 18), "white")
    ImageDraw.Draw(label).text(
        (height / 2 - 80, 2), "true positive rate (fakes caught)", fill="black", font=font
    )
    image.paste(label.rotate(90, expand=True), (6, top))
    return image


def _font(size: int) -> Any:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _f(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.3f}"


def clean_json(value: Any) -> Any:
    """NaN becomes None and NumPy scalars plain numbers: the model store wants strict JSON."""
    if isinstance(value, dict):
        return {str(k): clean_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean_json(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
