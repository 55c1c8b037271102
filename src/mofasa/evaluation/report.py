"""``report.html``: the summary, PNG plots and a thumbnail of each structure (ASE + matplotlib).

The page is static and self-contained apart from the PNG files beside it (no scripts, no
network), so it opens from disk in any browser.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mofasa.evaluation.summary import SIZE_BINS
from mofasa.evaluation.validity import RULE_FLAGS

__all__ = ["plot_summary", "thumbnail", "write_report"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_summary(out: Path, records: Sequence[dict], summary: dict[str, Any]) -> list[str]:
    """Write the PNG plots into ``out``; return their file names."""
    plt = _pyplot()
    names = []

    rates, mode, xlabel = _plotted_flag_rates(summary)
    extra = ("no_carbon", "no_hydrogen", "no_metal", "check_failed")
    flags = [f for f in (*RULE_FLAGS, *extra) if rates.get(f) is not None]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.barh([f.removeprefix("has_") for f in flags], [100 * rates[f] for f in flags], color="C3")
    ax.invert_yaxis()
    ax.set_xlim(0, max([5.0, *(100 * rates[f] * 1.1 for f in flags)]))
    ax.set_xlabel(xlabel)
    ax.set_title(f"MOFChecker failures ({mode} mode)")
    fig.tight_layout()
    fig.savefig(out / "flag_rates.png", dpi=100)
    plt.close(fig)
    names.append("flag_rates.png")

    by_size = summary.get("valid_rate_by_size", {})
    labels = [b for b, _, _ in SIZE_BINS if b in by_size]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    ax.bar(labels, [100 * (by_size[b].get("valid_rate") or 0) for b in labels], color="C2")
    for x, b in enumerate(labels):
        ax.text(x, 1, f"n={by_size[b]['n']}", ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("% valid")
    ax.set_ylim(0, 100)
    ax.set_xlabel("atoms in the cell")
    ax.set_title("Validity by size")
    fig.tight_layout()
    fig.savefig(out / "valid_by_size.png", dpi=100)
    plt.close(fig)
    names.append("valid_by_size.png")

    systems = summary.get("crystal_systems", {})
    if systems:
        fig, ax = plt.subplots(figsize=(7, 3.6))
        keys = list(systems)
        all_names = list(dict.fromkeys(n for k in keys for n in systems[k]))
        width = 0.8 / len(keys)
        for j, k in enumerate(keys):
            xs = [i + j * width for i in range(len(all_names))]
            ax.bar(xs, [100 * systems[k].get(n, 0) for n in all_names], width, label=k)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(all_names))], all_names,
                      rotation=20)  # fmt: skip
        ax.set_ylabel("% of structures")
        ax.legend()
        ax.set_title("Crystal systems (spglib)")
        fig.tight_layout()
        fig.savefig(out / "crystal_systems.png", dpi=100)
        plt.close(fig)
        names.append("crystal_systems.png")

    sizes = [r["num_atoms"] for r in records if "num_atoms" in r]
    if sizes:
        fig, ax = plt.subplots(figsize=(7, 3.2))
        ax.hist(sizes, bins=min(50, max(5, len(set(sizes)))), color="C0")
        ax.set_xlabel("atoms in the cell")
        ax.set_ylabel("structures")
        ax.set_title("Size distribution")
        fig.tight_layout()
        fig.savefig(out / "atom_counts.png", dpi=100)
        plt.close(fig)
        names.append("atom_counts.png")
    return names


def _plotted_flag_rates(summary: dict[str, Any]) -> tuple[dict[str, float | None], str, str]:
    """(flag -> rate, mode label, axis label) for the flag plot: headline mode when it ran."""
    if summary.get("screen"):
        screened = summary.get("flag_rates_screened") or summary.get("flag_rates_screened_strict")
        mode = "headline" if summary.get("flag_rates_screened") else "strict"
        rates = {k: v["rate"] for k, v in (screened or {}).items() if isinstance(v, dict)}
        return rates, f"{mode}, screened", "% of the structures where the check ran"
    mode = "headline" if summary.get("flag_rates") else "strict"
    rates = summary.get("flag_rates") or summary.get("flag_rates_strict") or {}
    return rates, mode, "% of requested structures"


def thumbnail(crystal: Any, path: Path, size: float = 1.6) -> None:
    """A small PNG of the structure (ASE's ``plot_atoms``, slightly tilted)."""
    from ase.visualize.plot import plot_atoms

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(size, size))
    plot_atoms(crystal.to_ase(), ax, rotation="10x,20y,0z", radii=0.5, show_unit_cell=2)
    ax.set_axis_off()
    fig.subplots_adjust(0, 0, 1, 1)
    fig.savefig(path, dpi=80)
    plt.close(fig)


_CSS = """
body{font-family:sans-serif;margin:24px;color:#222}
table{border-collapse:collapse;font-size:13px}
td,th{border:1px solid #ccc;padding:3px 6px;text-align:left;vertical-align:middle}
th{background:#eee}
.ok{color:#1a7f37;font-weight:bold}.bad{color:#b42318;font-weight:bold}
.figs img{max-width:48%;margin:4px;border:1px solid #ddd}
.kpi{display:inline-block;margin:6px 18px 6px 0;font-size:15px}
.kpi b{font-size:22px;display:block}
"""


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _failing(rec: dict) -> str:
    fails = [f.removeprefix("has_") for f in RULE_FLAGS if rec.get(f) is True]
    fails += [f"no {f[4:]}" for f in ("has_carbon", "has_hydrogen", "has_metal")
              if rec.get(f) is False]  # fmt: skip
    if rec.get("check_status") not in (None, "ok"):
        fails.append(str(rec["check_status"]))
    elif rec.get("check_errors"):
        fails.append("check error")
    if rec.get("read_error"):
        fails.append("unreadable")
    if rec.get("flags_not_computed"):  # screening stopped at the first failure
        fails.append(f"{len(json.loads(rec['flags_not_computed']))} checks not run (screen)")
    return ", ".join(fails)


def _row(rec: dict, thumb: str | None, topology: bool = False) -> str:
    def cell(v: Any) -> str:
        return html.escape("" if v is None else str(v))

    valid = rec.get("valid") is True
    img = f'<img src="{thumb}" width="96" height="96" alt="">' if thumb else ""
    yes_no = {True: "yes", False: "no", None: ""}
    return (
        f"<tr><td>{rec['input_index']}</td><td>{img}</td><td>{cell(rec.get('name'))}</td>"
        f"<td>{cell(rec.get('num_atoms'))}</td><td>{cell(rec.get('composition'))}</td>"
        f'<td class="{"ok" if valid else "bad"}">{"valid" if valid else "invalid"}</td>'
        f"<td>{cell(yes_no[rec.get('valid_strict')])}</td>"
        f"<td>{cell(_failing(rec))}</td>"
        f"<td>{cell(yes_no[rec.get('novel')])}</td><td>{cell(yes_no[rec.get('unique')])}</td>"
        f"<td>{cell(rec.get('crystal_system_001'))}</td>"
        + (f"<td>{cell(_net(rec))}</td>" if topology else "")
        + "</tr>"
    )


def _net(rec: dict) -> str:
    status = rec.get("topology_status")
    if status == "ok":
        return str(rec.get("topology"))
    return f"({status})" if status else ""


def _topology_section(summary: dict[str, Any]) -> str:
    t = summary.get("topology")
    if not t:
        return ""
    nets = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{v}</td>"
                   f"<td>{t['nets_valid'].get(k, 0)}</td></tr>"
                   for k, v in list(t["nets"].items())[:30])  # fmt: skip
    status = ", ".join(f"{html.escape(k)}: {v}" for k, v in t["status_counts"].items())
    return (
        "<h2>Topology</h2><p>RCSR nets from moffragmentor 0.0.6 + Systre: "
        f"{t['n_named']} of {t['n_attempted']} structures named "
        f"({_pct(t['named_share_of_attempted'])}; {_pct(t['named_rate'])} of requested), "
        f"{t['n_distinct_nets']} distinct nets. Outcomes: {status}.</p>"
        '<table id="nets"><tr><th>net</th><th>structures</th><th>of them valid</th></tr>'
        f"{nets}</table>"
    )


def write_report(
    out: Path, records: Sequence[dict], summary: dict[str, Any], store: Any, thumbnails: int = 100
) -> Path:
    """Write plots, thumbnails (first ``thumbnails`` structures) and ``report.html``."""
    out = Path(out)
    plots = plot_summary(out, records, summary)
    thumbs = out / "thumbnails"
    thumbs.mkdir(exist_ok=True)
    rows = []
    for k, rec in enumerate(records):
        thumb = None
        if k < thumbnails and not rec.get("read_error"):
            name = f"thumbnails/{rec['input_index']:06d}.png"
            if not (out / name).is_file():
                crystal = store.crystal(rec)
                if crystal is not None and crystal.num_atoms:
                    thumbnail(crystal, out / name)
            thumb = name if (out / name).is_file() else None
        rows.append(_row(rec, thumb, topology="topology" in summary))
    s = summary
    kpis = [
        ("requested", s["n_requested"]), ("evaluated", s["n_evaluated"]),
        ("valid (headline)", _pct(s["valid_rate"])),
        ("valid (strict)", _pct(s["valid_rate_strict"])),
        ("novel", _pct(s.get("novel_rate"))), ("unique", _pct(s.get("unique_rate"))),
        ("VNU", _pct(s.get("vnu_rate"))),
    ]  # fmt: skip
    if "valid_rate_relaxed" in s:
        kpis.insert(4, ("valid (relaxed)", _pct(s["valid_rate_relaxed"])))
    if "topology" in s:
        kpis.append(("net named", _pct(s["topology"]["named_rate"])))
    screen_note = (
        "<p><b>Screen mode:</b> each structure's checks stopped at its first failure; verdicts "
        "are the full mode's, and each flag's rate is over the structures where that check ran."
        "</p>"
        if s.get("screen")
        else ""
    )
    net_header = "<th>net (RCSR)</th>" if "topology" in s else ""
    kpi_html = "".join(f'<span class="kpi"><b>{v}</b>{html.escape(k)}</span>' for k, v in kpis)
    figs = "".join(f'<img src="{p}" alt="{p}">' for p in plots)
    page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>mofasa evaluation</title><style>{_CSS}</style></head>
<body>
<h1>mofasa evaluation</h1>
<p>MOFChecker 0.9.6 rule (C, H and a metal; none of the 12 flags). Headline: mofchecker's
constructor defaults; strict: the structure as given. Rates are over the number requested.
Novelty and uniqueness: pymatgen StructureMatcher (ltol 0.2, stol 0.3, angle_tol 5).</p>
{screen_note}
<div id="kpis">{kpi_html}</div>
<h2>Plots</h2><div class="figs">{figs}</div>
{_topology_section(s)}
<h2>Structures</h2>
<table id="structures"><tr><th>#</th><th>view</th><th>name</th><th>atoms</th><th>composition</th>
<th>headline</th><th>strict</th><th>failed checks</th><th>novel</th><th>unique</th>
<th>crystal system (0.01)</th>{net_header}</tr>
{"".join(rows)}
</table>
<h2>summary.json</h2><pre>{html.escape(json.dumps(summary, indent=1, default=str))}</pre>
</body></html>
"""
    path = out / "report.html"
    path.write_text(page)
    return path
