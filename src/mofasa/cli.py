"""`mofasa` command line: argparse subcommands, each with ``--help``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from mofasa import __version__


def _add_prepare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prepare",
        help="CIFs -> canonical, filtered, memory-mappable train/val/test dataset",
        description=(
            "Parse, check, canonicalise (primitive, Niggli, canonical atom order) and filter "
            "crystal structures, and write a compact dataset with a manifest.json. Broken "
            "inputs are skipped and listed with their reason. Re-running the same command on "
            "the same --out resumes an interrupted run."
        ),
    )
    p.add_argument(
        "--input",
        required=True,
        help="folder of CIFs, a .tar/.tar.gz/.tar.xz archive of CIFs, or core-mof[:SUBSET] "
        "(CoRE MOF 2019 from the optional PyPI package core-mof)",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--index",
        default=None,
        help="optional CSV with an id column (qmof_id or id), a split column "
        "(train/val/test) and optionally cif_sha256; without it, splits follow the hash rule",
    )
    p.add_argument("--max-atoms", type=int, default=500, help="most atoms in the primitive cell")
    p.add_argument("--min-distance", type=float, default=0.5, help="Å; closer atoms overlap")
    p.add_argument("--workers", type=int, default=0, help="processes (0: all cores)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=_cmd_prepare)


def _cmd_prepare(args: argparse.Namespace) -> int:
    from mofasa.data.prepare import PrepareConfig, prepare_dataset

    config = PrepareConfig(
        max_atoms=args.max_atoms, min_distance=args.min_distance, workers=args.workers
    )
    manifest = prepare_dataset(
        args.input, args.out, index=args.index, config=config, progress=not args.no_progress
    )
    summary = {k: manifest[k] for k in ("n_inputs", "n_accepted", "n_rejected", "splits")}
    summary["rejected_by_reason"] = manifest["rejected_by_reason"]
    summary["wall_time_s"] = manifest["wall_time_s"]
    print(json.dumps(summary, indent=1))
    print(f"wrote {args.out}/manifest.json")
    return 0


def _add_inspect(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="summarise a prepared dataset")
    p.add_argument("path", help="folder written by `mofasa data prepare`")
    p.set_defaults(func=_cmd_inspect)


def _cmd_inspect(args: argparse.Namespace) -> int:
    from mofasa.data.dataset import CrystalDataset

    for split in ("train", "val", "test"):
        ds = CrystalDataset(args.path, split)
        n = ds.num_atoms
        line = f"{split}: {len(ds)} structures"
        if len(ds):
            line += f", atoms {n.min()}-{n.max()} (median {int(sorted(n)[len(n) // 2])})"
        print(line)
    return 0


def _add_train(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser("train", help="train the autoencoder or the latent diffusion model")
    kinds = train.add_subparsers(dest="train_command", metavar="MODEL")
    p = kinds.add_parser(
        "autoencoder",
        help="train the crystal autoencoder",
        description=(
            "Train (or resume) the GNS autoencoder. CONFIG is a shipped name (tiny, small, base, "
            "large) or a YAML file; overrides are dotted key=value pairs, checked against the "
            "config's types (e.g. optim.lr=1e-4 data.path=prepared/qmof run.out_dir=runs/x). "
            "Works under torchrun for multi-GPU / multi-node DDP (gloo on CPU)."
        ),
    )
    p.add_argument("--config", default="small", help="shipped config name or YAML path")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    p.add_argument("--no-resume", action="store_true",
                   help="start fresh even if run.out_dir holds a checkpoint")
    p.add_argument("--init", default=None,
                   help="initial weights from another autoencoder checkpoint (when not resuming)")
    p.add_argument("--stop-after", type=int, default=None,
                   help="stop (with a checkpoint) after this many steps in this call")
    p.set_defaults(func=_cmd_train_autoencoder)
    from mofasa.sampling.cli import add_train_diffusion_parser

    add_train_diffusion_parser(kinds)
    train.set_defaults(func=lambda _args: (train.print_help(), 2)[1])


def _cmd_train_autoencoder(args: argparse.Namespace) -> int:
    from mofasa.training.autoencoder import load_ae_config, train_autoencoder

    cfg = load_ae_config(args.config, args.overrides)
    metrics = train_autoencoder(cfg, resume=not args.no_resume, init=args.init,
                                stop_after=args.stop_after)
    print(json.dumps({"out_dir": cfg.run.out_dir, **metrics}, indent=1))
    return 0


def _add_reconstruction(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "reconstruction",
        help="autoencoder reconstruction quality",
        description="Encode and decode structures; report type accuracy, coordinate RMSD, "
        "lattice errors and StructureMatcher match rate by atom-count bin.",
    )
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
    from mofasa.training.reconstruction import evaluate_reconstruction

    summary = evaluate_reconstruction(
        args.checkpoint, args.input, args.out, split=args.split, max_atoms=args.max_atoms,
        limit=args.limit, batch_size=args.batch_size, device=args.device,
        write_cifs=not args.no_cifs,
    )
    print(json.dumps({k: summary[k] for k in ("n_structures", "match_rate", "type_accuracy",
                                              "coord_rmsd")}, indent=1))
    return 0


def _add_evaluate(commands: argparse._SubParsersAction, argv: Sequence[str]) -> None:
    """`mofasa evaluate reconstruction ...` or the evaluator (`mofasa evaluate INPUT ...`)."""
    if len(argv) >= 2 and argv[0] == "evaluate" and argv[1] == "reconstruction":
        ev = commands.add_parser("evaluate", help="evaluate structures or reconstructions")
        _add_reconstruction(ev.add_subparsers(dest="evaluate_command", metavar="WHAT"))
        return
    try:
        from mofasa.evaluation.cli import add_evaluate_parser, add_relax_parser
    except ImportError:  # evaluation extras are optional
        return
    add_evaluate_parser(commands)
    add_relax_parser(commands)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mofasa", description="All-atom latent diffusion for metal-organic frameworks."
    )
    parser.add_argument("--version", action="version", version=f"mofasa {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    data = commands.add_parser("data", help="prepare and inspect datasets")
    data_sub = data.add_subparsers(dest="data_command", metavar="ACTION")
    _add_prepare(data_sub)
    _add_inspect(data_sub)
    data.set_defaults(func=lambda _args: (data.print_help(), 2)[1])
    from mofasa.sampling.cli import add_sample_parser

    add_sample_parser(commands)
    _add_train(commands)
    _add_evaluate(commands, list(argv or []))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mofasa`` console script."""
    from mofasa.data.errors import CrystalError
    from mofasa.data.prepare import UsageError
    from mofasa.training.config import ConfigError

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may follow options (argparse stops positionals at the first option)
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-")
                                                    for e in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (UsageError, CrystalError, ConfigError, FileNotFoundError) as exc:
        print(f"mofasa: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mofasa: interrupted (re-run the same command to resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
