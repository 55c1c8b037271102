"""``mofasa db``: filter a samples.db / results.db and export the selection (see
`mofasa.data.database`)."""

from __future__ import annotations

import argparse
import sys

__all__ = ["add_db_parser", "cmd_db"]


def add_db_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``db PATH [filters] [exports]`` to ``subparsers``."""
    p = subparsers.add_parser(
        "db",
        help="filter a samples.db or results.db and export CIFs, extxyz or CSV",
        description=(
            "Select rows of an ASE database written by `mofasa sample` (OUT/samples.db) or "
            "`mofasa evaluate` (DIR/results.db) by validity, MOFChecker flags, elements, atom "
            "count and novelty, in index order; print a one-line count and optionally export "
            "the selection. Validity, novelty and flags need a results.db; a filter on a key "
            "the database does not hold is an error (exit 2), not an empty selection."
        ),
    )
    p.add_argument("path", help="ASE SQLite database (samples.db or results.db)")
    validity = p.add_mutually_exclusive_group()
    validity.add_argument("--valid", action="store_true", help="valid structures only")
    validity.add_argument(
        "--invalid", action="store_true", help="structures not valid (failed or unreadable)"
    )
    p.add_argument(
        "--strict", action="store_true",
        help="--valid/--invalid and --flag in the strict mode (valid_strict, strict_<flag>) "
        "instead of the headline one",
    )  # fmt: skip
    novelty = p.add_mutually_exclusive_group()
    novelty.add_argument("--novel", action="store_true", help="novel structures only")
    novelty.add_argument("--not-novel", action="store_true", help="structures not novel")
    p.add_argument(
        "--flag", action="append", default=[], metavar="NAME=BOOL",
        help="MOFChecker flag value, e.g. has_atomic_overlaps=false (repeatable; rows where "
        "the check did not run never match)",
    )  # fmt: skip
    p.add_argument("--elements", default=None, metavar="Zn,C,H,O",
                   help="structures containing all of these elements")  # fmt: skip
    p.add_argument("--only-elements", action="store_true",
                   help="with --elements: no element outside the list instead")  # fmt: skip
    p.add_argument("--min-atoms", type=int, default=None, metavar="N", help="at least N atoms")
    p.add_argument("--max-atoms", type=int, default=None, metavar="N", help="at most N atoms")
    p.add_argument("--limit", type=int, default=None, metavar="K", help="first K matches")
    p.add_argument("--export-cifs", default=None, metavar="DIR", help="one CIF per structure")
    p.add_argument("--export-extxyz", default=None, metavar="FILE", help="one extended-XYZ file")
    p.add_argument("--export-csv", default=None, metavar="FILE", help="key-value pairs as CSV")
    p.set_defaults(func=cmd_db)
    return p


def cmd_db(args: argparse.Namespace) -> int:
    """Run ``mofasa db``; returns the exit code (2 on bad input, with a one-line error)."""
    from mofasa.data import database

    try:
        if args.only_elements and not args.elements:
            raise database.DatabaseQueryError("--only-elements needs --elements")
        query = database.Query(
            valid=True if args.valid else False if args.invalid else None,
            strict=args.strict,
            novel=True if args.novel else False if args.not_novel else None,
            flags=dict(database.parse_flag(f) for f in args.flag),
            elements=database.parse_elements(args.elements) if args.elements else (),
            only_elements=args.only_elements,
            min_atoms=args.min_atoms,
            max_atoms=args.max_atoms,
            limit=args.limit,
        )
        selection = database.select_rows(args.path, query)
        written: dict[str, tuple[int, str]] = {}
        if args.export_cifs:
            written["CIFs"] = (database.export_cifs(selection, args.export_cifs), args.export_cifs)
        if args.export_extxyz:
            n = database.export_extxyz(selection, args.export_extxyz)
            written["extxyz frames"] = (n, args.export_extxyz)
        if args.export_csv:
            written["CSV rows"] = (database.export_csv(selection, args.export_csv), args.export_csv)
    except (database.DatabaseQueryError, OSError) as exc:
        print(f"mofasa db: error: {exc}", file=sys.stderr)
        return 2
    print(database.summary_line(selection, written))
    return 0
