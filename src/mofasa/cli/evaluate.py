"""``mofasa evaluate`` (the protocol), ``mofasa evaluate reconstruction`` and ``mofasa relax``.

The parsers are always registered; a missing evaluation extra is answered when the command
runs, with the install hint (`require_evaluation`), never by a command that silently vanishes.
"""

from __future__ import annotations

import argparse
import json

from mofasa.data.prepare import UsageError

__all__ = ["RECONSTRUCTION", "add_evaluate_parsers", "require_evaluation"]

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
    except (ImportError, EvaluationSetupError) as exc:
        raise MissingExtraError(f"the evaluation tools are not usable ({exc}); "
                                f"{INSTALL_HINT}") from None


def add_evaluate_parsers(commands: argparse._SubParsersAction) -> None:
    """Add ``evaluate``, ``relax`` and the ``evaluate reconstruction`` route."""
    from mofasa.evaluation.cli import add_evaluate_parser, add_relax_parser

    ev = add_evaluate_parser(commands)
    ev.epilog = ("Also: `mofasa evaluate reconstruction --checkpoint CKPT --input DATA --out DIR` "
                 "measures how well an autoencoder reproduces real crystals (see its --help).")
    add_relax_parser(commands)
    _add_reconstruction(commands)


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
