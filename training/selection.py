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


def served_cost(
    costs: list[dict[str, Any]], family: str, size: int, gates: dict[str, bool], name: str
) -> dict[str, Any]:
    """ms per face at batch 32 from the first cost run that timed this network, against that
    run's FaceNet fp32, at the precision the import picks: bf16 where it was timed (a CPU with
    native bf16) and the import gate accepted it for this candidate (`gates`), else fp32."""
    found = None
    for number, table in enumerate(costs, 1):
        if family == "facenet-head":
            found = (number, table, table["facenet"])
            break
        row = next((r for r in table["rows"] if r["family"] == family and r["size"] == size), None)
        if row is not None:
            found = (number, table, {p: row[p] for p in ("fp32", "bf16") if p in row})
            break
    if found is None:
        raise ValueError(f"no cost run timed {family} at {size} px")
    run, table, timing = found
    reference = table["facenet_fp32_ms"]["32"]
    gate = True if family == "facenet-head" else gates.get(name)  # FaceNet's bf16 passed its gate
    picked = "bf16" if "bf16" in timing and gate else "fp32"
    return {
        "run": run,
        "precision": picked,
        "bf16_gate": gate,
        "ms_batch32": timing[picked]["32"],
        "ms_batch1": timing[picked]["1"],
        "fp32_ms_batch32": timing["fp32"]["32"],
        "fp32_ms_batch1": timing["fp32"]["1"],
        "bf16_ratio": timing["bf16"]["32"] / reference if "bf16" in timing else None,
        "fp32_ratio": timing["fp32"]["32"] / reference,
        "ratio": timing[picked]["32"] / reference,
        "facenet_fp32_ms_batch32": reference,
    }


def select(
    summaries: list[dict[str, Any]], costs: list[dict[str, Any]], gates: dict[str, bool] | None = None
) -> dict[str, Any]:
    """The winner by the protocol's rule, with every candidate's eligibility and cost. `gates`:
    candidate -> whether the import's gate accepted bf16 for its final model (None: not run;
    then fp32 is what the import would serve)."""
    gates = gates or {}
    rows = []
    for s in summaries:
        cost = served_cost(costs, s["family"], s["size"], gates, s["candidate"])
        reasons = []
        if s["oof"]["false_accusation"] > MAX_FALSE_ACCUSATION:
            reasons.append(f"false accusations {s['oof']['false_accusation']:.3f} > {MAX_FALSE_ACCUSATION}")
        if cost["ratio"] > MAX_COST_RATIO:
            why = f"cost {cost['ratio']:.2f}x FaceNet fp32 at {cost['precision']}"
            if cost["precision"] == "fp32" and cost["bf16_ratio"] is not None:
                gate = {None: "bf16 gate not run", False: "bf16 refused by the gate"}.get(
                    cost["bf16_gate"], ""
                )
                why += f" ({gate}; bf16 would be {cost['bf16_ratio']:.2f}x)"
            reasons.append(why + f" > {MAX_COST_RATIO:g}x")
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
        "highest_auc_candidate_any_cost": max(
            (r for r in rows if r["oof"]["false_accusation"] <= MAX_FALSE_ACCUSATION),
            key=lambda r: (r["oof"]["roc_auc"], r["l2"] or 0.0),
        )["candidate"],
        "close_candidates": [r["candidate"] for r in close],
        "costlier_and_better": [r["candidate"] for r in better_costlier],
        "rule": (
            f"highest pooled out-of-fold ROC AUC among candidates with false accusations <= "
            f"{MAX_FALSE_ACCUSATION:.0%} and cost per face (batch 32, the import's precision) <= "
            f"{MAX_COST_RATIO:g}x FaceNet fp32; within {TIE_MARGIN} of it: the largest l2, then the "
            "fewest head parameters, then the cheapest"
        ),
        "rows": rows,
        "cost_runs": [{k: c[k] for k in ("cpu", "facenet_fp32_ms")} for c in costs],
        "gates": gates,
    }


def comparison_lines(selection: dict[str, Any]) -> list[str]:
    """The comparison table as text (model card, eval report)."""
    header = (
        f"{'candidate':<28} {'OOF AUC (95% CI)':<20} {'src-eq AUC':>10} {'degr.':>6} {'FA':>6} {'caught':>6} "
        f"{'uncert':>6} {'LOSO min':>8} {'ms/face':>8} {'xFN':>5}  chosen / why not"
    )
    lines = [header, "-" * len(header)]
    order = sorted(selection["rows"], key=lambda r: (r["family"] != "facenet-head", -r["oof"]["roc_auc"]))

    def num(value: Any, width: int, digits: int = 3) -> str:
        return f"{value:>{width}.{digits}f}" if isinstance(value, (int, float)) else f"{'-':>{width}}"

    for r in order:
        o, eq = r["oof"], r["oof_source_equal"]
        lo, hi = o["roc_auc_95ci"]
        degraded = r.get("oof_degraded_copies", {}).get("roc_auc")
        verdict = "CHOSEN" if r["candidate"] == selection["winner"] else "; ".join(r["excluded_because"])
        if not verdict:
            verdict = (
                "lower AUC"
                if r["candidate"] not in selection["close_candidates"]
                else "close, less regularised"
            )
        loso = r["loso_min_auc"] if r.get("loso_run", True) else None
        lines.append(
            f"{r['candidate']:<28} {o['roc_auc']:.3f} ({lo:.3f}-{hi:.3f})  {num(eq['roc_auc'], 10)} "
            f"{num(degraded, 6)} {num(o['false_accusation'], 6)} {num(o['fakes_caught'], 6)} "
            f"{num(o['uncertain'], 6)} {num(loso, 8)} {num(r['cost']['ms_batch32'], 8, 1)} "
            f"{num(r['cost']['ratio'], 5, 2)}  {verdict}"
        )
    refs = ", ".join(
        f"run {i}: {c['facenet_fp32_ms']['32']:.1f}" for i, c in enumerate(selection["cost_runs"], 1)
    )
    lines += [
        "",
        "OOF: pooled out of fold (5 identity folds), clean crops, served threshold 0.5; src-eq: the same AUC",
        "with every source weighted equally; degr.: AUC on the held-out crops' degraded copies; FA: real",
        "faces called fake; caught: fakes called fake; uncert: faces between the verdict bands; LOSO min:",
        f"the lowest leave-a-source-out AUC over sources with >= {MIN_LOSO_GROUPS} groups (nan: not run);",
        "ms/face: in process, batch 32, at the precision the import picks (fp32 unless the gate accepted",
        "bf16 for that model); xFN: over FaceNet fp32 at batch 32 in the same run (FaceNet fp32 ms/face,",
        f"{refs}; {selection['cost_runs'][0]['cpu']}; how it was measured: models/MODEL_CARD.md).",
        f"Rule: {selection['rule']}.",
        f"Targets: OOF AUC >= {TARGETS['oof_auc']}, FA <= {TARGETS['oof_false_accusation']}, caught >= "
        f"{TARGETS['oof_fakes_caught']}, uncertain <= {TARGETS['oof_uncertain']}; LOSO AUC >= "
        f"{TARGETS['loso_auc']}.",
    ]
    return lines


def write_comparison(
    cache: Path,
    costs_paths: list[Path],
    log: Callable[[str], None] = print,
    gates: dict[str, bool] | None = None,
) -> dict[str, Any]:
    costs = [json.loads(Path(p).read_text()) for p in costs_paths]
    gates_file = Path(cache) / "compare" / "gates.json"
    if gates is None and gates_file.is_file():
        gates = json.loads(gates_file.read_text())
    selection = select(load_summaries(cache), costs, gates)
    out = Path(cache) / "compare"
    (out / "selection.json").write_text(json.dumps(selection, indent=1) + "\n")
    text = "\n".join(comparison_lines(selection)) + "\n"
    (out / "comparison.txt").write_text(text)
    log(text)
    log(f"winner: {selection['winner']}")
    return selection
