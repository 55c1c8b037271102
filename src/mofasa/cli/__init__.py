"""The ``mofasa`` command line: one parser, always the same, every command with ``--help``.

Commands: ``data prepare|inspect``, ``train autoencoder|diffusion``, ``sample``, ``evaluate``
(and ``evaluate reconstruction``), ``relax``, ``db``. Usage errors (bad values, missing files,
missing extras) print one line and exit 2; anything else is a bug and shows its traceback.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence

from mofasa import __version__
from mofasa.cli.data import add_data_parser
from mofasa.cli.db import add_db_parser
from mofasa.cli.evaluate import RECONSTRUCTION, add_evaluate_parsers
from mofasa.cli.sample import add_sample_parser
from mofasa.cli.train import add_train_parser

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The whole ``mofasa`` parser (independent of the arguments and of installed extras)."""
    parser = argparse.ArgumentParser(
        prog="mofasa", description="All-atom latent diffusion for metal-organic frameworks."
    )
    parser.add_argument("--version", action="version", version=f"mofasa {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_data_parser(commands)
    add_train_parser(commands)
    add_sample_parser(commands)
    add_evaluate_parsers(commands)
    add_db_parser(commands)
    # argparse lists every subparser; the reconstruction route is shown under `evaluate`
    commands._choices_actions = [a for a in commands._choices_actions
                                 if a.dest != RECONSTRUCTION]
    return parser


def _route(argv: list[str]) -> list[str]:
    """``evaluate reconstruction ...`` -> the reconstruction command (a fixed alias: argparse
    cannot put a sub-command beside the evaluator's positional INPUT)."""
    if argv[:2] == ["evaluate", "reconstruction"]:
        return [RECONSTRUCTION, *argv[2:]]
    return argv


def _usage_errors() -> tuple[type[BaseException], ...]:
    from mofasa.checkpoint import DeviceError
    from mofasa.config import ConfigError
    from mofasa.data.errors import CrystalError
    from mofasa.data.prepare import UsageError
    from mofasa.sampling.settings import SampleSettingsError

    return (UsageError, CrystalError, ConfigError, DeviceError, SampleSettingsError,
            FileNotFoundError)


def _one_line_warnings(message: Warning | str, category: type[Warning], *_args: object,
                       **_kwargs: object) -> None:
    print(f"mofasa: warning: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mofasa`` console script; returns the exit code."""
    argv = _route(list(sys.argv[1:] if argv is None else argv))
    parser = build_parser()
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
    warnings.showwarning = _one_line_warnings
    try:
        return int(args.func(args) or 0)
    except _usage_errors() as exc:
        print(f"mofasa {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mofasa: interrupted (re-run the same command to resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
