"""``report.html``: every rate with its count, plots, and one row per structure with its geometry
(shortest interatomic distance, density, cell) and a thumbnail that links to its CIF.

The page is static and self-contained apart from the files beside it (PNG plots, thumbnails and
``report_cifs/``; no scripts, no network), so it opens from disk in any browser.
"""

from __future__ import annotations

import html
import itertools
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from mofasa.data.crystal import Crystal
from mofasa.data.elements import SYMBOLS
from mofasa.evaluation.summary import SIZE_BINS, rate_key
from mofasa.evaluation.symmetry import CRYSTAL_SYSTEMS, SYMPRECS, symprec_tag
from mofasa.evaluation.validity import RULE_FLAGS
from mofasa.geometry.lattice import min_image_frac

__all__ = ["density", "plot_summary", "shortest_distance", "thumbnail", "write_report"]

#: above this many atoms the O(N^2) shortest-distance search is skipped ("-" in the table)
MAX_DISTANCE_ATOMS = 1000
#: folder beside report.html holding the CIF of each drawn structure (not ``cifs/``: that may
#: be an input folder of the evaluation itself)
CIF_DIR = "report_cifs"
#: thumbnail edge in pixels
THUMB_PX = 160
_G_CM3_PER_AMU_A3 = 1.66053906660  # 1 amu / Å^3 in g/cm^3
_EXTRA_FLAGS = ("no_carbon", "no_hydrogen", "no_metal", "check_failed")
_MODES = (("", "headline"), ("_strict", "strict"))


# ---------------------------------------------------------------------------- geometry
def _min_pair_distance(crystal: Crystal, shifts: np.ndarray, block: int = 256) -> float:
    """Smallest |x_j - x_i + s| over atom pairs and Cartesian shifts ``s`` (the zero shift
    skips i == j); row blocks keep memory at (block, N, 3)."""
    frac, n = crystal.frac, crystal.num_atoms
    best = np.inf
    for start in range(0, n, block):
        part = frac[start : start + block]
        diff = min_image_frac(frac[None, :, :] - part[:, None, :]) @ crystal.lattice
        rows = np.arange(len(part))
        for shift in shifts:
            dist = np.linalg.norm(diff + shift, axis=-1)
            if not shift.any():
                dist[rows, start + rows] = np.inf
            best = min(best, float(dist.min()))
    return best


def shortest_distance(crystal: Crystal, max_atoms: int = MAX_DISTANCE_ATOMS) -> float | None:
    """Shortest interatomic distance in Å, periodic: the closest pair over all images, an atom
    and its own image included (so a one-atom cell gives its shortest lattice vector).

    The minimum-image pairs give an upper bound d. Another image of a pair is at least half an
    interplanar spacing away, so when d is below that no image can be closer; otherwise the
    images within reach of d are searched as well (at most 3 cells along each axis, which
    bounds the cost on degenerate cells, where the answer is then an upper bound).

    Returns:
        The distance, or None for an empty crystal, one above ``max_atoms`` (O(N^2) search), or
        one with a flat or non-finite cell.
    """
    n = crystal.num_atoms
    finite = np.isfinite(crystal.frac).all() and np.isfinite(crystal.lattice).all()
    if n == 0 or n > max_atoms or not finite or not crystal.volume > 1e-8:
        return None
    lattice = crystal.lattice
    best = min(
        _min_pair_distance(crystal, np.zeros((1, 3))) if n > 1 else np.inf,
        float(np.linalg.norm(lattice, axis=1).min()),
    )
    areas = np.linalg.norm(np.cross(lattice[[1, 2, 0]], lattice[[2, 0, 1]]), axis=1)
    heights = abs(float(np.linalg.det(lattice))) / areas
    if best <= 0.5 * heights.min():
        return best
    reach = np.minimum(np.floor(best / heights + 0.5), 3).astype(int)
    images = [s for s in itertools.product(*(range(-r, r + 1) for r in reach)) if any(s)]
    shifts = np.asarray(images, dtype=np.float64) @ lattice
    return min(best, _min_pair_distance(crystal, shifts))


def density(crystal: Crystal) -> float | None:
    """Mass density in g/cm^3 (ASE's IUPAC atomic masses); None for an empty crystal."""
    from ase.data import atomic_masses

    if crystal.num_atoms == 0 or crystal.volume <= 0:
        return None
    mass = float(atomic_masses[crystal.numbers].sum())
    return mass / crystal.volume * _G_CM3_PER_AMU_A3


def _geometry(crystal: Crystal | None) -> dict[str, str]:
    """Table cells of one structure: shortest distance, density, cell (escaped text)."""
    if crystal is None or crystal.num_atoms == 0:
        return {"d_min": "", "density": "", "cell": ""}
    d = shortest_distance(crystal)
    rho = density(crystal)
    a, b, c, al, be, ga = crystal.parameters
    big = crystal.num_atoms > MAX_DISTANCE_ATOMS
    skipped = f"- (&gt; {MAX_DISTANCE_ATOMS} atoms)" if big else "-"
    return {
        "d_min": f"{d:.3f}" if d is not None else skipped,
        "density": f"{rho:.3f}" if rho is not None else "",
        "cell": f"{a:.3f}, {b:.3f}, {c:.3f}<br>{al:.2f}, {be:.2f}, {ga:.2f}",
    }


# ---------------------------------------------------------------------------- figures
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _count(rate: float | None, n: int) -> int | None:
    """Numerator of a rate (summaries written before counts were stored)."""
    return None if rate is None else round(rate * n)


def _flag_stats(summary: dict[str, Any], suffix: str) -> dict[str, tuple[float | None, int, int]]:
    """flag -> (rate, count, denominator) of one mode (``suffix`` "" or "_strict"); empty when
    that mode did not run. Screen mode: over the structures where the check ran."""
    if summary.get("screen"):
        screened = summary.get("flag_rates_screened" + suffix) or {}
        return {f: (v["rate"], v["flagged"], v["computed"]) for f, v in screened.items()
                if isinstance(v, dict)}  # fmt: skip
    rates = summary.get("flag_rates" + suffix) or {}
    counts = summary.get("flag_counts" + suffix) or {}
    n = summary["n_requested"]
    return {f: (r, counts.get(f, _count(r, n)), n) for f, r in rates.items()}


def _plot_flags(out: Path, summary: dict[str, Any]) -> str:
    plt = _pyplot()
    suffix, mode = next(((s, m) for s, m in _MODES if _flag_stats(summary, s)), _MODES[0])
    stats = _flag_stats(summary, suffix)
    flags = [f for f in (*RULE_FLAGS, *_EXTRA_FLAGS) if stats.get(f, (None,))[0] is not None]
    rates = [100 * stats[f][0] for f in flags]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.barh([f.removeprefix("has_") for f in flags], rates, color="C3")
    for y, f in enumerate(flags):  # the count beside each bar: 100% of 3 is not 100% of 3000
        ax.text(rates[y], y, f" {stats[f][1]}/{stats[f][2]}", va="center", fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, max([5.0, *(r * 1.25 for r in rates)]))
    screened = summary.get("screen")
    ax.set_xlabel("% of the structures where the check ran" if screened
                  else "% of requested structures")  # fmt: skip
    ax.set_title(f"MOFChecker failures ({mode}{', screened' if screened else ''} mode)")
    fig.tight_layout()
    fig.savefig(out / "flag_rates.png", dpi=100)
    plt.close(fig)
    return "flag_rates.png"


def _plot_sizes(out: Path, summary: dict[str, Any]) -> str:
    """Valid share per protocol bin, every bin shown (an empty one: no bar, n=0)."""
    plt = _pyplot()
    by_size = summary.get("valid_rate_by_size", {})
    labels = [b for b, _, _ in SIZE_BINS]
    key = "valid_rate" if summary.get("valid_rate") is not None else "valid_rate_strict"
    heights = [100 * (by_size.get(b, {}).get(key) or 0) for b in labels]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    ax.bar(labels, heights, color="C2")
    for x, b in enumerate(labels):
        ax.text(x, 1, f"n={by_size.get(b, {}).get('n', 0)}", ha="center", va="bottom", fontsize=8)
    ax.set_ylabel(f"% valid ({'headline' if key == 'valid_rate' else 'strict'})")
    ax.set_ylim(0, 100)
    ax.set_xlabel("atoms in the cell")
    ax.set_title("Validity by size")
    fig.tight_layout()
    fig.savefig(out / "valid_by_size.png", dpi=100)
    plt.close(fig)
    return "valid_by_size.png"


def _plot_systems(out: Path, systems: dict[str, dict[str, float]], n: int) -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    keys = list(systems)
    all_names = list(dict.fromkeys(name for k in keys for name in systems[k]))
    width = 0.8 / len(keys)
    for j, k in enumerate(keys):
        xs = [i + j * width for i in range(len(all_names))]
        ax.bar(xs, [100 * systems[k].get(name, 0) for name in all_names], width, label=k)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(all_names))], all_names, rotation=20)
    ax.set_ylabel("% of structures")
    ax.legend()
    ax.set_title(f"Crystal systems (spglib; n = {n})")
    fig.tight_layout()
    fig.savefig(out / "crystal_systems.png", dpi=100)
    plt.close(fig)
    return "crystal_systems.png"


def _plot_atom_counts(out: Path, sizes: list[int]) -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.hist(sizes, bins=min(50, max(5, len(set(sizes)))), color="C0")
    ax.set_xlabel("atoms in the cell")
    ax.set_ylabel("structures")
    ax.set_title(f"Size distribution (n = {len(sizes)})")
    fig.tight_layout()
    fig.savefig(out / "atom_counts.png", dpi=100)
    plt.close(fig)
    return "atom_counts.png"


def plot_summary(out: Path, records: Sequence[dict], summary: dict[str, Any]) -> list[str]:
    """Write the PNG plots into ``out``; return their file names."""
    names = [_plot_flags(out, summary), _plot_sizes(out, summary)]
    systems = summary.get("crystal_systems", {})
    if systems:
        n = sum(f"crystal_system_{symprec_tag(SYMPRECS[0])}" in r for r in records)
        names.append(_plot_systems(out, systems, n))
    sizes = [r["num_atoms"] for r in records if "num_atoms" in r]
    if sizes:
        names.append(_plot_atom_counts(out, sizes))
    return names


def thumbnail(crystal: Crystal, path: Path, size: float = THUMB_PX / 80) -> None:
    """A PNG of the structure (ASE's ``plot_atoms``, Jmol colours, slightly tilted), 80 dpi."""
    from ase.visualize.plot import plot_atoms

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(size, size))
    plot_atoms(crystal.to_ase(), ax, rotation="10x,20y,0z", radii=0.5, show_unit_cell=2)
    ax.set_axis_off()
    fig.subplots_adjust(0, 0, 1, 1)
    fig.savefig(path, dpi=80)
    plt.close(fig)


# ---------------------------------------------------------------------------- HTML pieces
_CSS = """
body{font-family:sans-serif;margin:24px;color:#222}
table{border-collapse:collapse;font-size:13px;margin-bottom:12px}
td,th{border:1px solid #ccc;padding:3px 6px;text-align:left;vertical-align:middle}
th{background:#eee}
td.num{text-align:right;white-space:nowrap}
.ok{color:#1a7f37;font-weight:bold}.bad{color:#b42318;font-weight:bold}
.figs img{max-width:48%;margin:4px;border:1px solid #ddd}
.kpi{display:inline-block;margin:6px 18px 6px 0;font-size:15px}
.kpi b{font-size:22px;display:block}.kpi small{color:#555}
.key span{display:inline-block;margin:2px 10px 2px 0;font-size:13px}
.key i{display:inline-block;width:13px;height:13px;border:1px solid #555;border-radius:50%;
vertical-align:-2px;margin-right:4px}
"""


def _pct(value: float | None, count: int | None = None, n: int | None = None) -> str:
    """``75.0% (3/4)``; ``n/a`` for a rate that was not computed."""
    if value is None:
        return "n/a"
    text = f"{100 * value:.1f}%"
    return text if count is None or n is None else f"{text} ({count}/{n})"


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


def _link(target: str | None, inner: str) -> str:
    return f'<a href="{html.escape(quote(target))}">{inner}</a>' if target else inner


def _row(rec: dict, geometry: dict[str, str], thumb: str | None, cif: str | None,
         topology: bool = False) -> str:  # fmt: skip
    def cell(v: Any) -> str:
        return html.escape("" if v is None else str(v))

    valid = rec.get("valid") is True
    img = (f'<img src="{html.escape(thumb)}" width="{THUMB_PX}" height="{THUMB_PX}" '
           'alt="structure">' if thumb else "")  # fmt: skip
    yes_no = {True: "yes", False: "no", None: ""}
    return (
        f"<tr><td>{rec['input_index']}</td><td>{_link(cif, img)}</td>"
        f"<td>{_link(cif, cell(rec.get('name')))}</td>"
        f'<td class="num">{cell(rec.get("num_atoms"))}</td><td>{cell(rec.get("composition"))}</td>'
        f'<td class="num">{geometry["d_min"]}</td><td class="num">{geometry["density"]}</td>'
        f'<td class="num">{geometry["cell"]}</td>'
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
    named = _pct(t["named_share_of_attempted"], t["n_named"], t["n_attempted"])
    of_requested = _pct(t["named_rate"], t["n_named"], summary["n_requested"])
    return (
        "<h2>Topology</h2><p>RCSR nets from moffragmentor 0.0.6 + Systre: "
        f"{t['n_named']} of {t['n_attempted']} structures named "
        f"({named} of attempted; {of_requested} of requested), "
        f"{t['n_distinct_nets']} distinct nets. Outcomes: {status}.</p>"
        '<table id="nets"><tr><th>net</th><th>structures</th><th>of them valid</th></tr>'
        f"{nets}</table>"
    )


def _flag_table(summary: dict[str, Any]) -> str:
    """Each check's failure rate with its count, per validity mode that ran."""
    modes = [(m, _flag_stats(summary, s)) for s, m in _MODES if _flag_stats(summary, s)]
    if not modes:
        return ""
    head = "".join(f"<th>{m}</th>" for m, _ in modes)
    rows = []
    for flag in (*RULE_FLAGS, "has_3d_connected_graph", *_EXTRA_FLAGS):
        if all(stats.get(flag, (None,))[0] is None for _, stats in modes):
            continue
        reported = flag == "has_3d_connected_graph"  # True is no failure: a share, apart
        label = flag + (" = true (reported, not in the rule)" if reported else "")
        cells = "".join(f'<td class="num">{_pct(*stats[flag]) if flag in stats else "n/a"}</td>'
                        for _, stats in modes)  # fmt: skip
        rows.append(f"<tr><td>{html.escape(label)}</td>{cells}</tr>")
    over = ("structures where the check ran (screen mode)" if summary.get("screen")
            else "structures requested")  # fmt: skip
    return (f"<h2>Checks</h2><p>Share of {over} failing each check.</p>"
            f'<table id="flags"><tr><th>check</th>{head}</tr>{"".join(rows)}</table>')  # fmt: skip


def _size_table(summary: dict[str, Any]) -> str:
    """Every protocol bin (mofasa.data.sizes), empty ones as "-" with n = 0."""
    by_size = summary.get("valid_rate_by_size", {})
    modes = [(k, m) for k, m in (("valid", "headline"), ("valid_strict", "strict"))
             if summary.get(rate_key(k)) is not None]  # fmt: skip
    head = "".join(f"<th>valid ({m})</th>" for _, m in modes)
    rows = []
    for label, _, _ in SIZE_BINS:
        entry = by_size.get(label, {})
        n = entry.get("n", 0)
        cells = []
        for key, _ in modes:
            rate = entry.get(rate_key(key))
            text = _pct(rate, entry.get("n_" + key, _count(rate, n)), n) if n else "-"
            cells.append(f'<td class="num">{text}</td>')
        rows.append(f'<tr><td>{html.escape(label)}</td><td class="num">{n}</td>'
                    f'{"".join(cells)}</tr>')  # fmt: skip
    return (
        "<h2>Validity by size</h2>"
        f'<table id="by_size"><tr><th>atoms</th><th>n</th>{head}</tr>{"".join(rows)}</table>'
    )


def _systems_table(records: Sequence[dict]) -> str:
    """Crystal-system shares with counts, per spglib tolerance."""
    columns = []
    for symprec in SYMPRECS:
        key = f"crystal_system_{symprec_tag(symprec)}"
        counts = Counter(r[key] for r in records if key in r and not r.get("read_error"))
        if counts:
            columns.append((symprec, counts, sum(counts.values())))
    if not columns:
        return ""
    names = [s for s in (*CRYSTAL_SYSTEMS, "undetermined") if any(c[s] for _, c, _ in columns)]
    head = "".join(f"<th>symprec {p:g}</th>" for p, _, _ in columns)
    rows = "".join(
        f"<tr><td>{name}</td>"
        + "".join(f'<td class="num">{_pct(c[name] / n, c[name], n)}</td>' for _, c, n in columns)
        + "</tr>"
        for name in names
    )
    return (f'<h2>Crystal systems</h2><table id="systems"><tr><th>crystal system</th>{head}</tr>'
            f"{rows}</table>")  # fmt: skip


def _element_key(numbers: Iterable[int]) -> str:
    """Colour swatch per element drawn in the thumbnails (ASE's Jmol colours)."""
    from ase.data.colors import jmol_colors

    zs = sorted({int(z) for z in numbers})
    if not zs:
        return ""
    swatches = []
    for z in zs:
        r, g, b = (int(255 * v + 0.5) for v in jmol_colors[z])
        swatches.append(f'<span><i style="background:rgb({r},{g},{b})"></i>{SYMBOLS[z]}</span>')
    return f'<p class="key" id="element-key">Colours (Jmol): {"".join(swatches)}</p>'


def _kpis(s: dict[str, Any]) -> str:
    """Headline figures, each rate with its (count/requested) underneath."""
    n, counts = s["n_requested"], s.get("counts", {})
    keys = [("valid (headline)", "valid"), ("valid (strict)", "valid_strict"),
            ("novel", "novel"), ("unique", "unique"), ("VNU", "vnu")]  # fmt: skip
    if "valid_rate_relaxed" in s:
        keys.insert(2, ("valid (relaxed)", "valid_relaxed"))
    kpis = [("requested", str(n), ""), ("evaluated", str(s["n_evaluated"]), f"of {n}")]
    for label, key in keys:
        rate = s.get(rate_key(key))
        count = counts.get(key, _count(rate, n))
        kpis.append((label, _pct(rate), f"({count}/{n})" if rate is not None else ""))
    if "topology" in s:
        t = s["topology"]
        kpis.append(("net named", _pct(t["named_rate"]), f"({t['n_named']}/{n})"))
    return "".join(f'<span class="kpi"><b>{value} <small>{sub}</small></b>{html.escape(label)}'
                   "</span>" for label, value, sub in kpis)  # fmt: skip


# ---------------------------------------------------------------------------- the page
def _structure_files(out: Path, rec: dict, crystal: Crystal | None,
                     source: str | None) -> tuple[str | None, str | None]:  # fmt: skip
    """(thumbnail, CIF) paths relative to ``out``, written once (kept on a resumed run)."""
    if crystal is None or crystal.num_atoms == 0:
        return None, None
    from mofasa.data.cif import write_cif

    i = int(rec["input_index"])
    thumb = f"thumbnails/{i:06d}.png"
    if not (out / thumb).is_file():
        thumbnail(crystal, out / thumb)
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(rec.get("name")))
    cif = f"{CIF_DIR}/{i:06d}_{safe[:80]}.cif"
    if not (out / cif).is_file():
        provenance = {"input_index": i, "name": str(rec.get("name")), "source": source or ""}
        write_cif(crystal, out / cif, provenance=provenance)
    return thumb, cif


def _rows(out: Path, records: Sequence[dict], summary: dict[str, Any], store: Any,
          thumbnails: int) -> tuple[list[str], set[int]]:  # fmt: skip
    """Table rows, and the elements drawn in the thumbnails."""
    (out / "thumbnails").mkdir(exist_ok=True)
    (out / CIF_DIR).mkdir(exist_ok=True)
    source = (summary.get("settings") or {}).get("source")
    rows, drawn = [], set()
    for k, rec in enumerate(records):
        crystal = None if rec.get("read_error") else store.crystal(rec)
        thumb, cif = None, None
        if k < thumbnails:
            thumb, cif = _structure_files(out, rec, crystal, source)
            if thumb is not None:
                drawn.update(int(z) for z in crystal.numbers)
        rows.append(_row(rec, _geometry(crystal), thumb, cif, topology="topology" in summary))
    return rows, drawn


def write_report(
    out: Path, records: Sequence[dict], summary: dict[str, Any], store: Any, thumbnails: int = 100
) -> Path:
    """Write plots, thumbnails and CIFs (first ``thumbnails`` structures) and ``report.html``.

    Every row gets its shortest interatomic distance, density and cell, computed from the
    structure in ``store`` (``store.crystal(record)``).
    """
    out = Path(out)
    plots = plot_summary(out, records, summary)
    rows, drawn = _rows(out, records, summary, store, thumbnails)
    s = summary
    screen_note = (
        "<p><b>Screen mode:</b> each structure's checks stopped at its first failure; verdicts "
        "are the full mode's, and each flag's rate is over the structures where that check ran."
        "</p>"
        if s.get("screen")
        else ""
    )
    net_header = "<th>net (RCSR)</th>" if "topology" in s else ""
    figs = "".join(f'<img src="{p}" alt="{p}">' for p in plots)
    page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>mofasa evaluation</title><style>{_CSS}</style></head>
<body>
<h1>mofasa evaluation</h1>
<p>MOFChecker 0.9.6 rule (C, H and a metal; none of the 12 flags). Headline: mofchecker's
constructor defaults; strict: the structure as given. Rates are over the number requested,
with (count/denominator) beside each. Novelty and uniqueness: pymatgen StructureMatcher
(ltol 0.2, stol 0.3, angle_tol 5).</p>
{screen_note}
<div id="kpis">{_kpis(s)}</div>
<h2>Plots</h2><div class="figs">{figs}</div>
{_flag_table(s)}
{_size_table(s)}
{_systems_table(records)}
{_topology_section(s)}
<h2>Structures</h2>
<p>d<sub>min</sub>: shortest interatomic distance over all periodic images (Å; not computed
above {MAX_DISTANCE_ATOMS} atoms). Thumbnails and names link to the structure's CIF
({CIF_DIR}/).</p>
{_element_key(drawn)}
<table id="structures"><tr><th>#</th><th>view</th><th>name</th><th>atoms</th><th>composition</th>
<th>d<sub>min</sub> (Å)</th><th>density (g/cm³)</th><th>a, b, c (Å)<br>α, β, γ (°)</th>
<th>headline</th><th>strict</th><th>failed checks</th><th>novel</th><th>unique</th>
<th>crystal system (0.01)</th>{net_header}</tr>
{"".join(rows)}
</table>
<p>All figures: <a href="summary.json">summary.json</a>; one row per input:
results.db (select and export with <code>mofasa db</code>).</p>
</body></html>
"""
    path = out / "report.html"
    path.write_text(page)
    return path
