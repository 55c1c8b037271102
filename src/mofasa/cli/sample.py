"""``mofasa sample``: settings from the flags, checked before any work, then the writer."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

__all__ = ["add_sample_parser"]


def add_sample_parser(commands: argparse._SubParsersAction) -> None:
    """Add ``sample`` to the top-level subparsers."""
    p = commands.add_parser(
        "sample",
        help="generate crystals (unconditionally or from conditions)",
        description=(
            "Sample structures and write OUT/cifs/*.cif and an ASE database OUT/samples.db "
            "(one row per structure). Structure i depends only on (seed, i), and structures "
            "already in the database are skipped: re-running the same command continues an "
            "interrupted run without duplicating or losing rows, and a larger --num extends it."
        ),
    )
    p.add_argument("--model", default="default",
                   help="'default' (the bundled model) or a diffusion checkpoint path")
    p.add_argument("--num", type=int, default=100, help="number of structures")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--atoms", type=int, default=None, help="fixed number of atoms N")
    size.add_argument("--atoms-from", default="data",
                      help="'data': draw N from the model's training atom-count histogram "
                      "(default); or a prepared dataset folder whose train split to draw from")
    p.add_argument("--steps", type=int, default=None,
                   help="sampler steps, >= 1 (default: the model's configured count)")
    p.add_argument("--sampler", choices=("ddim", "ddpm"), default=None,
                   help="deterministic DDIM or ancestral DDPM (default: the model's)")
    p.add_argument("--refine", type=int, default=None,
                   help="corrector steps after the last step, >= 0 (coordinate-family models; "
                   "default: the model's)")
    p.add_argument("--restarts", type=int, default=None,
                   help="restart passes: noise back to the model's restart time and integrate "
                   "again, before the corrector steps, >= 0 (coordinate-family models; "
                   "default: the model's)")
    p.add_argument("--guidance", type=float, default=1.0,
                   help="classifier-free guidance scale (needs a condition; 1: none)")
    c = p.add_argument_group("conditions (one at a time; the model must be trained with them)")
    c.add_argument("--formula", default=None,
                   help="exact composition, e.g. 'Zn4O13C24H12' (any order, spaces, explicit "
                   "1); N is its atom count")
    c.add_argument("--elements", default=None,
                   help="exactly these elements, e.g. Zn,C,H,O; N drawn from p(N | elements)")
    c.add_argument("--metal", default=None,
                   help="this metal with any non-metals, e.g. Zn; N drawn from p(N | metal)")
    c.add_argument("--bonds-from", default=None, metavar="REF.cif",
                   help="the formula and bond graph of a reference structure")
    c.add_argument("--inpaint", default=None, metavar="REF.cif",
                   help="keep part of a reference (with --keep) and generate the rest")
    c.add_argument("--keep", default=None,
                   help="with --inpaint: metals, metal-node (metals + their bonded atoms), "
                   "linkers (every non-metal) or site indices of REF.cif, e.g. 0,4,7")
    c.add_argument("--free-lattice", action="store_true",
                   help="with --inpaint: generate the lattice too (default: the reference's)")
    c.add_argument("--restrain-bonds", type=int, default=0, metavar="STEPS",
                   help="with --bonds-from: after sampling, STEPS Adam steps pulling the given "
                   "bonds to covalent-radius sums and other pairs out of bonding distance "
                   "(0: off; figures with it are not the model's alone; e.g. 300)")
    p.add_argument("--batch-size", type=int, default=64, help="structures per batch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast for the denoiser")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--evaluate", action="store_true",
                   help="run mofasa evaluate --screen on the samples afterwards")
    p.add_argument("--reference", default=None,
                   help="training data for novelty in --evaluate (prepared dataset folder)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=_cmd_sample)


def _cmd_sample(args: argparse.Namespace) -> int:
    from mofasa.sampling.settings import SampleSettings, SampleSettingsError
    from mofasa.sampling.store import write_samples

    settings = SampleSettings(
        model=args.model, num=args.num, seed=args.seed, atoms=args.atoms,
        atoms_from=args.atoms_from, steps=args.steps, sampler=args.sampler,
        refine=args.refine, restarts=args.restarts, guidance=args.guidance,
        batch_size=args.batch_size, device=args.device, bf16=args.bf16,
        formula=args.formula, elements=args.elements, metal=args.metal,
        bonds_from=args.bonds_from, inpaint=args.inpaint, keep=args.keep,
        free_lattice=args.free_lattice, restrain_bonds=args.restrain_bonds,
    ).check()  # fmt: skip
    if args.reference is not None and not Path(args.reference).exists():
        raise SampleSettingsError(f"--reference {args.reference}: no such file or folder")
    if args.reference is not None and not args.evaluate:
        raise SampleSettingsError("--reference is only used with --evaluate")
    summary = write_samples(args.out, settings, progress=not args.no_progress)
    print(json.dumps(summary, indent=1))
    if args.evaluate:
        return _evaluate(Path(args.out), args.num, args.reference, not args.no_progress)
    return 0


def _evaluate(out: Path, num: int, reference: str | None, progress: bool) -> int:
    """Screen ``out/samples.db`` with the evaluator (exit 2 with a hint when not installed)."""
    from mofasa.cli.evaluate import require_evaluation

    require_evaluation()
    from mofasa.evaluation.runner import EvaluationConfig, evaluate

    config = EvaluationConfig(reference=reference, screen=True, n_requested=num,
                              progress=progress)
    result = evaluate(str(out / "samples.db"), out / "evaluation", config)
    print(json.dumps({"evaluation": str(out / "evaluation"), **{
        k: v for k, v in result.summary.items() if isinstance(v, (int, float, str))}}, indent=1))
    return 0
