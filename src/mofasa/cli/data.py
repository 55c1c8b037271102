"""``mofasa data prepare`` and ``mofasa data inspect``."""

from __future__ import annotations

import argparse
import json

__all__ = ["add_data_parser"]


def add_data_parser(commands: argparse._SubParsersAction) -> None:
    """Add ``data`` (with ``prepare`` and ``inspect``) to the top-level subparsers."""
    data = commands.add_parser("data", help="prepare and inspect datasets")
    sub = data.add_subparsers(dest="data_command", metavar="ACTION")
    _add_prepare(sub)
    _add_inspect(sub)
    data.set_defaults(func=lambda _args: (data.print_help(), 2)[1])


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
        "--input", required=True,
        help="folder of CIFs, a .tar/.tar.gz/.tar.xz archive of CIFs, or core-mof[:SUBSET] "
        "(CoRE MOF 2019 from the optional PyPI package core-mof)",
    )  # fmt: skip
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--index", default=None,
        help="optional CSV with an id column (qmof_id or id), a split column "
        "(train/val/test) and optionally cif_sha256; without it, splits follow the hash rule",
    )  # fmt: skip
    p.add_argument("--max-atoms", type=int, default=500, help="most atoms in the primitive cell")
    p.add_argument("--max-input-atoms", type=int, default=4000,
                   help="most atoms in a file as read, checked before any symmetry work "
                   "(larger ones are rejected as too_many_atoms at once)")
    p.add_argument("--file-timeout", type=float, default=120.0,
                   help="seconds one file may take; a slower one is rejected as timeout")
    p.add_argument("--min-distance", type=float, default=0.5, help="Å; closer atoms overlap")
    p.add_argument("--workers", type=int, default=0, help="processes (0: all cores)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=_cmd_prepare)


def _cmd_prepare(args: argparse.Namespace) -> int:
    from mofasa.data.prepare import PrepareConfig, prepare_dataset

    config = PrepareConfig(
        max_atoms=args.max_atoms, min_distance=args.min_distance, workers=args.workers,
        max_input_atoms=args.max_input_atoms, file_timeout=args.file_timeout,
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
