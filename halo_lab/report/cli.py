"""``python -m halo_lab.report SWEEP_DIR [--out DIR] [--wandb auto|on|off] [--no-plots]``."""

from __future__ import annotations

import argparse
import logging
import sys

from halo_lab.report.runs import ReportError
from halo_lab.report.writer import build_report

log = logging.getLogger("halo_lab.report")


# ---------------------------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m halo_lab.report",
        description="Turn a halo_lab sweep directory into report.md + PNG plots (and a W&B summary table).",
    )
    parser.add_argument("sweep_dir", help="e.g. outputs/multirun/baseline/2026-01-01_12-00-00")
    parser.add_argument("--out", default=None, help="where report.md and the plots go (default: SWEEP_DIR)")
    parser.add_argument(
        "--wandb",
        default="auto",
        choices=("auto", "on", "off"),
        help="log the summary table to W&B: auto = when wandb is installed and WANDB_MODE is not "
        "disabled (offline unless WANDB_API_KEY is set or WANDB_MODE=online)",
    )
    parser.add_argument("--no-plots", action="store_true", help="only report.md")
    # a bad option: one line naming it (argparse would print its usage block first)
    parser.error = lambda message: parser.exit(2, f"halo_lab.report: error: {message} (--help: usage)\n")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        path = build_report(args.sweep_dir, args.out, wandb=args.wandb, plots=not args.no_plots)
    except ReportError as exc:
        print(f"halo_lab.report: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the output directory: a file, read-only, a missing parent, a full disk
        where = exc.filename or args.out or args.sweep_dir
        why = exc.strerror or " ".join(str(exc).split())
        if isinstance(exc, (FileExistsError, NotADirectoryError)):
            why += " (--out names a directory for report.md and the plots)"
        print(f"halo_lab.report: error: cannot write the report to {where}: {why}", file=sys.stderr)
        return 2
    print(path)
    return 0
