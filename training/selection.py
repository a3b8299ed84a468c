"""The selection rule of the frozen protocol (training/PROTOCOL.md) and the comparison table.

Inputs: the candidates' summaries (`<cache>/compare/<name>.json`, `training.compare`) and the
cost table of `bench/model_cost.py` (ms per face of every candidate network and of today's
FaceNet, measured in one run). Output: the winner, the reasons each other candidate lost, and
the table (text for the model card and eval report, JSON beside it).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from training.protocol import (
    MAX_COST_RATIO,
    MAX_FALSE_ACCUSATION,
    MIN_LOSO_GROUPS,
    TARGETS,
    TIE_MARGIN,
    candidates,
)


def load_summaries(cache: Path) -> list[dict[str, Any]]:
    folder = Path(cache) / "compare"
    found = []
    for candidate in candidates():
        path = folder / f"{candidate.name}.json"
        if path.is_file():
            found.append(json.loads(path.read_text()))
    return found


def served_cost(costs: dict[str, Any], family: str, size: int) -> dict[str, Any]:
    """ms per face at batch 32: fp32, and at the precision the import picks (bf16 where the
    CPU has it natively and bf16 was measured; the gate is checked when the winner is imported)."""
    reference = costs["facenet_fp32_ms"]["32"]
    if family == "facenet-head":
        timing = {p: costs["facenet_first"][p] for p in costs["facenet_first"]}
        timing = {
            p: {b: (costs["facenet_first"][p][b] + costs["facenet_last"][p][b]) / 2 for b in ("1", "32")}
            for p in timing
        }
    else:
        row = next(r for r in costs["rows"] if r["family"] == family and r["size"] == size)
        timing = {p: row[p] for p in ("fp32", "bf16") if p in row}
    picked = "bf16" if "bf16" in timing else "fp32"
    return {
        "precision": picked,
        "ms_batch32": timing[picked]["32"],
        "ms_batch1": timing[picked]["1"],
        "fp32_ms_batch32": timing["fp32"]["32"],
        "fp32_ms_batch1": timing["fp32"]["1"],
        "ratio": timing[picked]["32"] / reference,
    }


def select(summaries: list[dict[str, Any]], costs: dict[str, Any]) -> dict[str, Any]:
    """The winner by the protocol's rule, with every candidate's eligibility and cost."""
    rows = []
    for s in summaries:
        cost = served_cost(costs, s["family"], s["size"])
        reasons = []
        if s["oof"]["false_accusation"] > MAX_FALSE_ACCUSATION:
            reasons.append(f"false accusations {s['oof']['false_accusation']:.3f} > {MAX_FALSE_ACCUSATION}")
        if cost["ratio"] > MAX_COST_RATIO:
            reasons.append(f"cost {cost['ratio']:.2f}x FaceNet fp32 > {MAX_COST_RATIO}x")
        rows.append({**s, "cost": cost, "eligible": not reasons, "excluded_because": reasons})
    eligible = [r for r in rows if r["eligible"]]
    if not eligible:
        raise ValueError("no candidate meets the protocol's false-accusation and cost bounds")
    best = max(r["oof"]["roc_auc"] for r in eligible)
    close = [r for r in eligible if r["oof"]["roc_auc"] >= best - TIE_MARGIN]
    winner = sorted(
        close,
        key=lambda r: (
            -(r["l2"] if r["l2"] is not None else -1.0),
            r["head_parameters"],
            r["cost"]["ms_batch32"],
        ),
    )[0]
    top = max(eligible, key=lambda r: r["oof"]["roc_auc"])
    better_costlier = [
        r for r in rows if not r["eligible"] and r["oof"]["roc_auc"] > winner["oof"]["roc_auc"]
        and r["oof"]["false_accusation"] <= MAX_FALSE_ACCUSATION
    ]  # fmt: skip
    return {
        "winner": winner["candidate"],
        "best_eligible_auc": best,
        "highest_auc_candidate": top["candidate"],
        "close_candidates": [r["candidate"] for r in close],
        "costlier_and_better": [r["candidate"] for r in better_costlier],
        "rule": (
            f"highest pooled out-of-fold ROC AUC among candidates with false accusations <= "
            f"{MAX_FALSE_ACCUSATION:.0%} and cost per face (batch 32, the import's precision) <= "
            f"{MAX_COST_RATIO:g}x FaceNet fp32; within {TIE_MARGIN} of it: the largest l2, then the "
            "fewest head parameters, then the cheapest"
        ),
        "rows": rows,
        "cost_run": {k: costs[k] for k in ("cpu", "facenet_fp32_ms")},
    }


def comparison_lines(selection: dict[str, Any]) -> list[str]:
    """The comparison table as text (model card, eval report)."""
    header = (
        f"{'candidate':<28} {'OOF AUC (95% CI)':<20} {'src-eq AUC':>10} {'degr.':>6} {'FA':>6} {'caught':>6} "
        f"{'uncert':>6} {'LOSO min':>8} {'ms/face':>8} {'xFN':>5}  chosen / why not"
    )
    lines = [header, "-" * len(header)]
    order = sorted(selection["rows"], key=lambda r: (r["family"] != "facenet-head", -r["oof"]["roc_auc"]))
    for r in order:
        o, eq = r["oof"], r["oof_source_equal"]
        lo, hi = o["roc_auc_95ci"]
        degraded = r.get("oof_degraded_copies", {}).get("roc_auc", float("nan"))
        verdict = "CHOSEN" if r["candidate"] == selection["winner"] else "; ".join(r["excluded_because"])
        if not verdict:
            verdict = (
                "lower AUC"
                if r["candidate"] not in selection["close_candidates"]
                else "close, less regularised"
            )
        lines.append(
            f"{r['candidate']:<28} {o['roc_auc']:.3f} ({lo:.3f}-{hi:.3f})  {eq['roc_auc']:>10.3f} "
            f"{degraded:>6.3f} "
            f"{o['false_accusation']:>6.3f} {o['fakes_caught']:>6.3f} {o['uncertain']:>6.3f} "
            f"{r['loso_min_auc']:>8.3f} {r['cost']['ms_batch32']:>8.1f} {r['cost']['ratio']:>5.2f}  {verdict}"
        )
    ref = selection["cost_run"]["facenet_fp32_ms"]
    lines += [
        "",
        "OOF: pooled out of fold (5 identity folds), clean crops, served threshold 0.5; src-eq: the same AUC",
        "with every source weighted equally; degr.: AUC on the held-out crops' degraded copies; FA: real",
        "faces called fake; caught: fakes called fake; uncert: faces between the verdict bands; LOSO min:",
        f"the lowest leave-a-source-out AUC over sources with >= {MIN_LOSO_GROUPS} groups; ms/face: in",
        "process,"
        "batch 32, at the precision the import picks (bf16 here), xFN: over FaceNet fp32 at batch 32 in the",
        f"same run ({ref['32']:.1f} ms/face; {selection['cost_run']['cpu']}).",
        f"Rule: {selection['rule']}.",
        f"Targets: OOF AUC >= {TARGETS['oof_auc']}, FA <= {TARGETS['oof_false_accusation']}, caught >= "
        f"{TARGETS['oof_fakes_caught']}, uncertain <= {TARGETS['oof_uncertain']}; LOSO AUC >= "
        f"{TARGETS['loso_auc']}.",
    ]
    return lines


def write_comparison(cache: Path, costs_path: Path, log: Callable[[str], None] = print) -> dict[str, Any]:
    costs = json.loads(Path(costs_path).read_text())
    selection = select(load_summaries(cache), costs)
    out = Path(cache) / "compare"
    (out / "selection.json").write_text(json.dumps(selection, indent=1) + "\n")
    text = "\n".join(comparison_lines(selection)) + "\n"
    (out / "comparison.txt").write_text(text)
    log(text)
    log(f"winner: {selection['winner']}")
    return selection
