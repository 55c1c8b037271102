"""Figures from per-structure records: rates over the number requested, bins, shares."""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Sequence
from typing import Any

from mofasa.data.sizes import SIZE_BINS, size_bin
from mofasa.evaluation.symmetry import CRYSTAL_SYSTEMS, SYMPRECS, symprec_tag
from mofasa.evaluation.validity import COMPOSITION_FLAGS, REPORTED_FLAGS, RULE_FLAGS

#: outcomes of a topology job (as `mofasa.evaluation.topology.STATUSES`, kept here so that the
#: summary never imports moffragmentor's side)
TOPOLOGY_STATUSES = ("ok", "unnamed", "error", "timeout", "crash")

__all__ = ["PREFIXES", "SIZE_BINS", "VALID_KEY", "rate_key", "size_bin", "summarize"]

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


def rate_key(count_key: str) -> str:
    """Summary key of a count's rate: valid_strict -> valid_rate_strict, novel -> novel_rate."""
    head, _, tail = count_key.partition("_")
    return f"{head}_rate" + (f"_{tail}" if tail else "")


def _flag_counts(records: Sequence[dict], prefix: str) -> dict[str, int]:
    """Number of structures with each flag set (composition flags: missing)."""
    out = {}
    for flag in RULE_FLAGS + REPORTED_FLAGS:
        out[flag] = sum(r.get(prefix + flag) is True for r in records)
    for flag in COMPOSITION_FLAGS:  # "has_metal": False is the failure
        out["no_" + flag.removeprefix("has_")] = sum(r.get(prefix + flag) is False for r in records)
    out["check_failed"] = sum(
        r.get(prefix + "check_status") not in (None, "ok") or bool(r.get(prefix + "check_errors"))
        for r in records
    )
    return out


def _flag_rates(records: Sequence[dict], prefix: str, n: int) -> dict[str, float | None]:
    """Share of requested structures with each flag set (composition flags: missing)."""
    return {flag: _rate(count, n) for flag, count in _flag_counts(records, prefix).items()}


def _flag_rates_screened(records: Sequence[dict], prefix: str) -> dict[str, dict[str, Any]]:
    """Screening mode: each flag's share among the structures where that check ran.

    A check that was not run (the structure had failed an earlier one) is neither a pass nor a
    failure, so it is left out of that flag's denominator (``computed``).
    """
    out: dict[str, dict[str, Any]] = {}
    for flag in (*RULE_FLAGS, *REPORTED_FLAGS, *COMPOSITION_FLAGS):
        values = [r[prefix + flag] for r in records if isinstance(r.get(prefix + flag), bool)]
        bad = flag not in COMPOSITION_FLAGS  # composition flags fail when False
        name = flag if flag not in COMPOSITION_FLAGS else "no_" + flag.removeprefix("has_")
        flagged = sum(v is bad for v in values)
        out[name] = {"rate": _rate(flagged, len(values)), "flagged": flagged,
                     "computed": len(values)}  # fmt: skip
    return out


def _stopped_at(records: Sequence[dict], prefix: str) -> dict[str, int]:
    """Screening mode: how many structures each test stopped (their first failure)."""
    key = prefix + "screen_stopped_at"
    return dict(Counter(r[key] for r in records if r.get(key)).most_common())


def summarize(
    records: Sequence[dict[str, Any]],
    n_requested: int | None = None,
    relaxed: bool = False,
    modes: Sequence[str] | None = None,
    screen: bool = False,
) -> dict[str, Any]:
    """Summary figures; every rate is over ``n_requested`` (default: number of records).

    Structures that could not be read, whose check crashed or timed out, count in the
    denominator and as not valid, not novel and not unique. The rates of a validity mode that
    was not run (``modes``; default: the modes found in the records) are None, not 0.

    With ``screen`` (validity checks stopped at the first failure) the verdicts and valid rates
    are those of the full mode, but a flag's share over all structures would count unrun
    checks as passes: ``flag_rates*`` are then None and ``flag_rates_screened*`` give, per
    flag, the share among the structures where it ran, with both counts.
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
        "screen": bool(screen),
    }
    # a mode that was not run gives None, not 0; counts: the numerator of each rate
    counts: dict[str, int | None] = {}
    for prefix, key in VALID_KEY.items():
        if prefix.startswith("relaxed") and not relaxed:
            continue
        counts[key] = sum(r.get(key) is True for r in records) if prefix in ran else None
    has_novelty = any("novel" in r for r in records)
    for key in ("novel", "unique", "vnu"):
        known = has_novelty or key == "unique"
        counts[key] = sum(r.get(key) is True for r in records) if known else None
    for key, count in counts.items():
        out[rate_key(key)] = None if count is None else _rate(count, n)
    out["counts"] = counts
    for prefix, suffix in (("", ""), ("strict_", "_strict"), ("relaxed_", "_relaxed"),
                           ("relaxed_strict_", "_relaxed_strict")):  # fmt: skip
        if not relaxed and prefix.startswith("relaxed"):
            continue
        if screen:
            out["flag_rates" + suffix] = None
            out["flag_counts" + suffix] = None
            out["flag_rates_screened" + suffix] = (
                _flag_rates_screened(records, prefix) if prefix in ran else None
            )
            out["screen_stopped_at" + suffix] = (
                _stopped_at(records, prefix) if prefix in ran else None
            )
        else:  # None: mode not run
            out["flag_rates" + suffix] = _flag_rates(records, prefix, n) if prefix in ran else None
            out["flag_counts" + suffix] = _flag_counts(records, prefix) if prefix in ran else None
    if screen:
        out["flag_rates_note"] = (
            "screen mode: checks stop at the first failure (order: settings.screen_order), so "
            "each flag_rates_screened rate is over the structures where that check ran "
            "('computed'), not over n_requested; verdicts and valid rates equal the full mode's"
        )
    out["valid_rate_by_size"] = _by_size(records, ran)
    out["crystal_systems"] = _crystal_systems(read)
    out["failures"] = _failures(records)
    if relaxed:
        out["relaxation"] = _relaxation(records)
    if any("lcd" in r for r in records):
        out["pores"] = _pores(read)
    if any("topology_status" in r for r in records):
        out["topology"] = _topology(records, n)
    return out


def _by_size(records: Sequence[dict], ran: set[str]) -> dict[str, dict[str, Any]]:
    """Per protocol bin, every bin even when empty (n 0, rates None): structures, valid share
    and count (``n_valid``, ``n_valid_strict``, ...) of each mode that ran."""
    out = {}
    for label, _, _ in SIZE_BINS:
        members = [r for r in records if r.get("size_bin") == label]
        out[label] = {"n": len(members)}
        for prefix in sorted(ran):
            key = VALID_KEY[prefix]
            valid = sum(r.get(key) is True for r in members)
            out[label][key.replace("valid", "valid_rate", 1)] = _rate(valid, len(members))
            out[label]["n_" + key] = valid
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
        if r.get("read_error"):  # refused at reading: counted by its reason code
            counts[f"refused_{r.get('read_reason') or 'unreadable'}"] += 1
        for key, value in r.items():
            # "unnamed" is an answer (a net not in the RCSR archive), not a failure
            if key.endswith("status") and value not in (None, "ok", "unnamed"):
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


def _topology(records: Sequence[dict], n: int) -> dict[str, Any]:
    """Counts of RCSR nets and of outcomes; shares over requested and over attempted."""
    tried = [r for r in records if "topology_status" in r]
    named = [r for r in tried if r.get("topology_status") == "ok" and r.get("topology")]
    nets = Counter(r["topology"] for r in named)
    # valid in the headline mode, or in the strict one when only that ran
    key = "valid" if any(r.get("check_status") for r in records) else "valid_strict"
    valid_nets = Counter(r["topology"] for r in named if r.get(key) is True)
    status = Counter(r["topology_status"] for r in tried)
    return {
        "n_attempted": len(tried),
        "n_named": len(named),
        "named_rate": _rate(len(named), n),
        "named_share_of_attempted": _rate(len(named), len(tried)),
        "status_counts": {s: status[s] for s in TOPOLOGY_STATUSES if status.get(s)},
        "nets": dict(nets.most_common()),
        "nets_valid": dict(valid_nets.most_common()),
        "n_distinct_nets": len(nets),
        "seconds": _stats([r["topology_seconds"] for r in tried if "topology_seconds" in r]),
    }


def _pores(records: Sequence[dict]) -> dict[str, Any]:
    return {k: _stats([r[k] for r in records if k in r]) for k in ("lcd", "pld", "asa_m2_g")}
