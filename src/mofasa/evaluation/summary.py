"""Figures from per-structure records: rates over the number requested, bins, shares."""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Sequence
from typing import Any

from mofasa.data.sizes import SIZE_BINS, size_bin
from mofasa.evaluation.symmetry import CRYSTAL_SYSTEMS, SYMPRECS, symprec_tag
from mofasa.evaluation.validity import COMPOSITION_FLAGS, REPORTED_FLAGS, RULE_FLAGS

__all__ = ["PREFIXES", "SIZE_BINS", "VALID_KEY", "size_bin", "summarize"]

#: key prefix of each (structure, validity mode) pair in the records
PREFIXES = {
    ("raw", "default"): "",
    ("raw", "strict"): "strict_",
    ("relaxed", "default"): "relaxed_",
    ("relaxed", "strict"): "relaxed_strict_",
}
#: key of the verdict of each prefix
VALID_KEY = {"": "valid", "strict_": "valid_strict", "relaxed_": "valid_relaxed",
             "relaxed_strict_": "valid_relaxed_strict"}  # fmt: skip



def _rate(count: int, n: int) -> float | None:
    return round(count / n, 6) if n else None


def _flag_rates(records: Sequence[dict], prefix: str, n: int) -> dict[str, float | None]:
    """Share of requested structures with each flag set (composition flags: missing)."""
    out = {}
    for flag in RULE_FLAGS + REPORTED_FLAGS:
        out[flag] = _rate(sum(r.get(prefix + flag) is True for r in records), n)
    for flag in COMPOSITION_FLAGS:  # "has_metal": False is the failure
        out["no_" + flag.removeprefix("has_")] = _rate(
            sum(r.get(prefix + flag) is False for r in records), n
        )
    failed = sum(
        r.get(prefix + "check_status") not in (None, "ok") or bool(r.get(prefix + "check_errors"))
        for r in records
    )
    out["check_failed"] = _rate(failed, n)
    return out


def summarize(
    records: Sequence[dict[str, Any]],
    n_requested: int | None = None,
    relaxed: bool = False,
    modes: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Summary figures; every rate is over ``n_requested`` (default: number of records).

    Structures that could not be read, whose check crashed or timed out, count in the
    denominator and as not valid, not novel and not unique. The rates of a validity mode that
    was not run (``modes``; default: the modes found in the records) are None, not 0.
    """
    n = int(n_requested if n_requested is not None else len(records))
    read = [r for r in records if not r.get("read_error")]
    if modes is None:
        ran = {p for p in VALID_KEY if any(p + "check_status" in r for r in records)}
    else:
        stages = ("raw", "relaxed") if relaxed else ("raw",)
        ran = {PREFIXES[(stage, mode)] for stage in stages for mode in modes}
    out: dict[str, Any] = {
        "n_requested": n,
        "n_inputs": len(records),
        "n_evaluated": len(read),
        "n_unreadable": len(records) - len(read),
    }
    # a mode that was not run gives None, not 0
    for prefix, key in VALID_KEY.items():
        if prefix.startswith("relaxed") and not relaxed:
            continue
        valid = sum(r.get(key) is True for r in records)
        out[key.replace("valid", "valid_rate", 1)] = _rate(valid, n) if prefix in ran else None
    has_novelty = any("novel" in r for r in records)
    out["novel_rate"] = (
        _rate(sum(r.get("novel") is True for r in records), n) if has_novelty else None
    )
    out["unique_rate"] = _rate(sum(r.get("unique") is True for r in records), n)
    out["vnu_rate"] = _rate(sum(r.get("vnu") is True for r in records), n) if has_novelty else None
    for prefix, suffix in (("", ""), ("strict_", "_strict"), ("relaxed_", "_relaxed"),
                           ("relaxed_strict_", "_relaxed_strict")):  # fmt: skip
        if relaxed or not prefix.startswith("relaxed"):  # None: mode not run
            out["flag_rates" + suffix] = _flag_rates(records, prefix, n) if prefix in ran else None
    out["valid_rate_by_size"] = _by_size(records, ran)
    out["crystal_systems"] = _crystal_systems(read)
    out["failures"] = _failures(records)
    if relaxed:
        out["relaxation"] = _relaxation(records)
    if any("lcd" in r for r in records):
        out["pores"] = _pores(read)
    return out


def _by_size(records: Sequence[dict], ran: set[str]) -> dict[str, dict[str, Any]]:
    out = {}
    for label, _, _ in SIZE_BINS:
        members = [r for r in records if r.get("size_bin") == label]
        if members:
            out[label] = {"n": len(members)}
            for prefix in sorted(ran):
                key = VALID_KEY[prefix]
                valid = sum(r.get(key) is True for r in members)
                out[label][key.replace("valid", "valid_rate", 1)] = _rate(valid, len(members))
    return out


def _crystal_systems(records: Sequence[dict]) -> dict[str, dict[str, float]]:
    out = {}
    for symprec in SYMPRECS:
        key = f"crystal_system_{symprec_tag(symprec)}"
        counts = Counter(r[key] for r in records if key in r)
        total = sum(counts.values())
        if total:
            names = [s for s in (*CRYSTAL_SYSTEMS, "undetermined") if counts.get(s)]
            out[f"symprec_{symprec:g}"] = {s: round(counts[s] / total, 6) for s in names}
    return out


def _failures(records: Sequence[dict]) -> dict[str, int]:
    counts: Counter = Counter()
    for r in records:
        if r.get("read_error"):
            counts["unreadable"] += 1
        for key, value in r.items():
            if key.endswith("status") and value not in (None, "ok"):
                counts[f"{key.removesuffix('_status')}_{value}"] += 1
    return dict(sorted(counts.items()))


def _stats(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"mean": None, "median": None}
    return {
        "mean": round(statistics.fmean(values), 4),
        "median": round(statistics.median(values), 4),
    }


def _relaxation(records: Sequence[dict]) -> dict[str, Any]:
    done = [r for r in records if r.get("relax_status") == "ok"]
    return {
        "n_relaxed": len(done),
        "n_failed": sum(r.get("relax_status") not in (None, "ok") for r in records),
        "converged_rate": _rate(sum(r.get("relax_converged") is True for r in done), len(done)),
        "steps": _stats([r["relax_steps"] for r in done]),
        "seconds": _stats([r["relax_seconds"] for r in done]),
        "rmsd_A": _stats([r["relax_rmsd"] for r in done]),
        "calculator": next((r.get("relax_calculator") for r in done), None),
    }


def _pores(records: Sequence[dict]) -> dict[str, Any]:
    return {k: _stats([r[k] for r in records if k in r]) for k in ("lcd", "pld", "asa_m2_g")}
