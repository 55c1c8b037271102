"""``mofasa evaluate`` (the protocol), ``mofasa evaluate reconstruction`` and ``mofasa relax``.

The parsers are always registered; a missing evaluation extra is answered when the command
runs, with the install hint (`require_evaluation`), never by a command that silently vanishes.
"""

from __future__ import annotations

import argparse
import json

from mofasa.data.prepare import UsageError

__all__ = ["RECONSTRUCTION", "add_evaluate_parser", "add_evaluate_parsers", "add_relax_parser",
           "require_evaluation"]

RECONSTRUCTION = "evaluate-reconstruction"  # `mofasa evaluate reconstruction` routes here
INSTALL_HINT = "install them with `bash scripts/install_eval.sh` (see docs/EVALUATION.md)"


class MissingExtraError(UsageError):
    """An optional extra that a command needs is not installed."""


def require_evaluation() -> None:
    """Raise `MissingExtraError` (one line, with the install hint) unless the evaluation tools
    (mofchecker 0.9.6 with its fixes) import."""
    try:
        from mofasa.evaluation.compat import EvaluationSetupError, require_checkers
    except ImportError as exc:  # pragma: no cover - the package itself is broken
        raise MissingExtraError(f"the evaluation tools are not installed ({exc}); "
                                f"{INSTALL_HINT}") from None
    try:
        require_checkers()
    except (ImportError, EvaluationSetupError) as exc:  # an extra missing or broken
        raise MissingExtraError(f"the evaluation tools are not usable ({exc}); "
                                f"{INSTALL_HINT}") from None


def add_evaluate_parsers(commands: argparse._SubParsersAction) -> None:
    """Add ``evaluate``, ``relax`` and the ``evaluate reconstruction`` route."""
    ev = add_evaluate_parser(commands)
    ev.epilog = ("Also: `mofasa evaluate reconstruction --checkpoint CKPT --input DATA --out DIR` "
                 "measures how well an autoencoder reproduces real crystals (see its --help).")
    add_relax_parser(commands)
    _add_reconstruction(commands)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker (default 1)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _relax_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--calculator", default="chgnet",
        help="ML potential: chgnet (default, weights ship in its wheel) or emt (ASE toy, tests)",
    )  # fmt: skip
    p.add_argument("--fmax", type=float, default=0.02, help="force threshold, eV/Å (0.02)")
    p.add_argument("--steps", type=int, default=200, help="most FIRE steps (200)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    p.add_argument(
        "--relax-timeout", type=float, default=1800.0, help="seconds per relaxation (1800)"
    )


def add_evaluate_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``evaluate INPUT --out DIR ...`` to ``subparsers``."""
    p = subparsers.add_parser(
        "evaluate",
        help="validity (MOFChecker), novelty, uniqueness, symmetry, relaxation, topology, report",
        description=(
            "Evaluate MOF structures by the field's protocol: MOFChecker 0.9.6 validity "
            "(headline: mofchecker's constructor defaults; strict: as given), novelty and "
            "uniqueness (StructureMatcher), crystal systems (spglib), validity by size, optional "
            "relaxation (CHGNet + FIRE + FrechetCellFilter), pores (Zeo++) and topology (RCSR "
            "net via moffragmentor + Systre). --screen stops each structure's checks at the "
            "first failure (same verdicts, faster on generated batches). Writes "
            "DIR/summary.json, DIR/results.db (one row per input), plots and DIR/report.html. "
            "Re-running the same command resumes an interrupted run."
        ),
    )
    p.add_argument("input", help="folder or .tar[.gz|.xz] of CIFs, a CIF, or an ASE .db")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--reference", default=None,
        help="training data for novelty: a folder from `mofasa data prepare` (or CIFs / .db)",
    )  # fmt: skip
    p.add_argument("--reference-split", default="train", help="split of --reference (train)")
    p.add_argument("--relax", action="store_true", help="relax, then re-check validity")
    p.add_argument("--pores", action="store_true", help="Zeo++ pores via pyzeo (17-65 s/MOF)")
    p.add_argument(
        "--topology", action="store_true",
        help="RCSR net via moffragmentor 0.0.6 + Systre (needs java; ~5-15 s per MOF)",
    )  # fmt: skip
    p.add_argument(
        "--topology-timeout", type=float, default=180.0,
        help="seconds per topology job, fragmentation + Systre (180)",
    )  # fmt: skip
    p.add_argument(
        "--screen", action="store_true",
        help="stop each validity check at the first failing test: same valid/invalid verdicts, "
        "flags after the first failure not computed (for large generated batches)",
    )  # fmt: skip
    p.add_argument(
        "--modes", default="default,strict",
        help="validity modes, comma-separated: default (headline), strict",
    )  # fmt: skip
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per check (300)")
    p.add_argument(
        "--max-atoms", type=int, default=1000,
        help="larger inputs are not checked: their row says too_many_atoms (1000)",
    )  # fmt: skip
    p.add_argument(
        "--n-requested", type=int, default=None,
        help="denominator of the rates (default: number of inputs)",
    )  # fmt: skip
    p.add_argument("--thumbnails", type=int, default=100, help="structures drawn in the report")
    p.add_argument("--no-report", action="store_true", help="skip plots and report.html")
    _relax_options(p)
    _common(p)
    p.set_defaults(func=_cmd_evaluate)
    return p


def add_relax_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``relax INPUT --out DIR`` to ``subparsers``."""
    p = subparsers.add_parser(
        "relax",
        help="relax structures with an ML potential (CHGNet by default)",
        description=(
            "Relax cell and positions (FIRE + FrechetCellFilter, fmax 0.02 eV/Å, 200 steps by "
            "default). Writes DIR/relaxed.db, DIR/cifs/ and DIR/summary.json; resumable."
        ),
    )
    p.add_argument("input", help="folder or .tar[.gz|.xz] of CIFs, a CIF, or an ASE .db")
    p.add_argument("--out", required=True, help="output folder")
    _relax_options(p)
    _common(p)
    p.set_defaults(func=_cmd_relax)
    return p


def _headline(summary: dict) -> dict:
    keys = ("n_requested", "n_evaluated", "valid_rate", "valid_rate_strict", "valid_rate_relaxed",
            "novel_rate", "unique_rate", "vnu_rate")  # fmt: skip
    out = {k: summary[k] for k in keys if k in summary}
    if summary.get("screen"):
        out["screen"] = True
    if "topology" in summary:
        t = summary["topology"]
        out["topology"] = {k: t[k] for k in ("named_rate", "status_counts", "nets")}
    return out


def _cmd_evaluate(args: argparse.Namespace) -> int:
    """``mofasa evaluate``: usage errors (`EvaluationUsageError`, raised before any work) and a
    missing extra exit 2 through `mofasa.cli.main`; anything else is a bug and keeps its
    traceback."""
    require_evaluation()
    from mofasa.evaluation.runner import EvaluationConfig, evaluate

    config = EvaluationConfig(
        reference=args.reference, reference_split=args.reference_split,
        modes=tuple(m.strip() for m in args.modes.split(",") if m.strip()),
        relax=args.relax, calculator=args.calculator, fmax=args.fmax, steps=args.steps,
        device=args.device, pores=args.pores, topology=args.topology,
        topology_timeout=args.topology_timeout, screen=args.screen,
        workers=args.workers, timeout=args.timeout, max_atoms=args.max_atoms,
        relax_timeout=args.relax_timeout, threads=args.threads, n_requested=args.n_requested,
        thumbnails=args.thumbnails, report=not args.no_report, progress=not args.no_progress,
    )  # fmt: skip
    from mofasa.evaluation.compat import EvaluationSetupError

    try:
        result = evaluate(args.input, args.out, config)
    except EvaluationSetupError as exc:  # an optional tool (topology, pores) is missing
        raise MissingExtraError(str(exc)) from None
    print(json.dumps(_headline(result.summary), indent=1))
    print(
        f"wrote {args.out}/summary.json, results.db" + ("" if args.no_report else ", report.html")
    )
    return 0


def _cmd_relax(args: argparse.Namespace) -> int:
    """``mofasa relax``; returns the exit code."""
    require_evaluation()
    from mofasa.evaluation.runner import relax_structures

    try:
        summary = relax_structures(
            args.input, args.out, calculator=args.calculator, fmax=args.fmax, steps=args.steps,
            device=args.device, workers=args.workers, timeout=args.relax_timeout,
            threads=args.threads, progress=not args.no_progress,
        )  # fmt: skip
    except ValueError as exc:  # relax_structures reports bad settings as ValueError
        raise UsageError(str(exc)) from None
    print(json.dumps(summary["relaxation"], indent=1))
    print(f"wrote {args.out}/relaxed.db, cifs/, summary.json")
    return 0


def _add_reconstruction(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        RECONSTRUCTION, prog="mofasa evaluate reconstruction",
        description="Encode and decode structures; report type accuracy, coordinate RMSD, "
        "lattice errors and StructureMatcher match rate by atom-count bin. Needs only the "
        "base install.",
    )  # fmt: skip
    p.add_argument("--checkpoint", required=True,
                   help="autoencoder (or diffusion) checkpoint, or 'default'")
    p.add_argument("--input", required=True,
                   help="folder / archive of CIFs, or a prepared dataset folder (uses --split)")
    p.add_argument("--split", default="val", help="split of a prepared dataset")
    p.add_argument("--max-atoms", type=int, default=None, help="skip larger structures")
    p.add_argument("--limit", type=int, default=None, help="evaluate at most this many")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="auto")
    p.add_argument("--no-cifs", action="store_true", help="do not write reconstructed CIFs")
    p.set_defaults(func=_cmd_reconstruction)


def _cmd_reconstruction(args: argparse.Namespace) -> int:
    from mofasa.evaluation.reconstruction import evaluate_reconstruction

    summary = evaluate_reconstruction(
        args.checkpoint, args.input, args.out, split=args.split, max_atoms=args.max_atoms,
        limit=args.limit, batch_size=args.batch_size, device=args.device,
        write_cifs=not args.no_cifs,
    )
    print(json.dumps({k: summary[k] for k in ("n_structures", "match_rate", "type_accuracy",
                                              "coord_rmsd")}, indent=1))
    return 0
