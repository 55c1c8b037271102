"""Command-line back-ends: ``mofasa sample ...`` and ``mofasa train diffusion ...``.

``mofasa/cli.py`` registers them with :func:`add_sample_parser` (on the top-level subparsers)
and :func:`add_train_diffusion_parser` (on the ``train`` subparsers); each parser's ``func`` takes
the parsed ``Namespace`` and returns an exit code.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["add_sample_parser", "add_train_diffusion_parser", "run_sample",
           "run_train_diffusion"]


def add_sample_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``sample`` to ``subparsers``; returns the new parser."""
    p = subparsers.add_parser(
        "sample",
        help="generate crystals with a latent diffusion model",
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
                   help="sampler steps (default: the model's configured count)")
    p.add_argument("--sampler", choices=("ddim", "ddpm"), default=None,
                   help="deterministic DDIM or ancestral DDPM (default: the model's)")
    p.add_argument("--guidance", type=float, default=1.0,
                   help="classifier-free guidance scale (no effect without a condition)")
    p.add_argument("--batch-size", type=int, default=64, help="structures per batch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--evaluate", action="store_true",
                   help="run mofasa.evaluation on the samples afterwards (if installed)")
    p.add_argument("--reference", default=None,
                   help="training data for novelty in --evaluate (prepared dataset folder)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run_sample)
    return p


def run_sample(args: argparse.Namespace) -> int:
    """``mofasa sample``: write the samples (and evaluate them); returns the exit code."""
    from mofasa.sampling.store import SamplingSettingsError, write_samples

    if args.num < 0 or args.batch_size < 1:
        print("mofasa sample: --num must be >= 0 and --batch-size >= 1", file=sys.stderr)
        return 2
    try:
        summary = write_samples(
            args.out, args.model, args.num, atoms=args.atoms, atoms_from=args.atoms_from,
            steps=args.steps, sampler=args.sampler, seed=args.seed, batch_size=args.batch_size,
            device=args.device, guidance=args.guidance, bf16=args.bf16,
            progress=not args.no_progress,
        )
    except (SamplingSettingsError, FileNotFoundError) as exc:
        print(f"mofasa sample: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=1))
    if args.evaluate:
        return _evaluate(Path(args.out), args.num, args.reference, not args.no_progress)
    return 0


def _evaluate(out: Path, num: int, reference: str | None, progress: bool) -> int:
    """Run the evaluator on ``out/samples.db`` when it is installed."""
    try:
        from mofasa.evaluation import evaluate
        from mofasa.evaluation.compat import EvaluationSetupError
    except ImportError as exc:
        print(f"evaluation is not installed ({exc}); see docs/EVALUATION.md")
        return 0
    try:
        result = evaluate(str(out / "samples.db"), out / "evaluation", reference=reference,
                          n_requested=num, progress=progress)
    except (ImportError, EvaluationSetupError) as exc:
        print(f"evaluation is not installed or broken: {exc}")
        return 0
    print(json.dumps({"evaluation": str(out / "evaluation"), **{
        k: v for k, v in result.summary.items() if isinstance(v, (int, float, str))}}, indent=1))
    return 0


def add_train_diffusion_parser(train_subparsers: argparse._SubParsersAction
                               ) -> argparse.ArgumentParser:
    """Add ``diffusion`` to the ``train`` subparsers; returns the new parser."""
    p = train_subparsers.add_parser(
        "diffusion",
        help="train the latent diffusion model",
        description=(
            "Train (or resume) the latent diffusion model on the frozen autoencoder's latents. "
            "CONFIG is a shipped name (tiny, small, base) or a YAML file; overrides are dotted "
            "key=value pairs checked against the config's types (e.g. optim.lr=1e-4 "
            "model.backbone.depth=8 diffusion.self_cond_prob=0 run.out_dir=runs/x). A resumed "
            "run needs no --autoencoder (its checkpoint embeds it). Works under torchrun."
        ),
    )
    p.add_argument("--autoencoder", default=None,
                   help="autoencoder checkpoint (default: the config's 'autoencoder' key)")
    p.add_argument("--config", default="small", help="shipped config name or YAML path")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    p.add_argument("--no-resume", action="store_true",
                   help="start fresh even if run.out_dir holds a checkpoint")
    p.add_argument("--stop-after", type=int, default=None,
                   help="stop (with a checkpoint) after this many steps in this call")
    p.set_defaults(func=run_train_diffusion)
    return p


def run_train_diffusion(args: argparse.Namespace) -> int:
    """``mofasa train diffusion``; returns the exit code."""
    from mofasa.training.diffusion import load_diffusion_config, train_diffusion

    cfg = load_diffusion_config(args.config, args.overrides)
    metrics = train_diffusion(cfg, args.autoencoder, resume=not args.no_resume,
                              stop_after=args.stop_after)
    print(json.dumps({"out_dir": cfg.run.out_dir, **metrics}, indent=1))
    return 0
