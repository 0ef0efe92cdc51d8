"""Reproduce the rate figures: run (or resume) a study, then draw its figures.

    python simulations/reproduce.py --preset quick            # CPU, minutes -> results/quick, figures/quick
    python simulations/reproduce.py --preset full             # GPU-sized    -> results/full,  figures/full
    python simulations/reproduce.py --config simulations/example.toml --results results/mine --figures figures/mine
"""

from __future__ import annotations

import argparse
import sys

from moe_estimation.cli import main as cli_main


def main(args) -> int:
    results = args.results or f"results/{args.preset or 'custom'}"
    figures = args.figures or f"figures/{args.preset or 'custom'}"
    study = ["study", "--out", results]
    study += ["--preset", args.preset] if args.preset else ["--config", args.config]
    if args.no_progress:
        study.append("--no-progress")
    rc = cli_main(study)
    if rc:
        return rc
    return cli_main(["plot", "--results", results, "--out", figures])


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    g = p.add_mutually_exclusive_group()
    g.add_argument("--preset", choices=["quick", "full", "tiny"], help="a named study (default quick)")
    g.add_argument("--config", help="a TOML study configuration")
    p.add_argument("--results", help="where the tables go (default results/PRESET)")
    p.add_argument("--figures", help="where the figures go (default figures/PRESET)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    a = p.parse_args()
    if a.preset is None and a.config is None:
        a.preset = "quick"
    sys.exit(main(a))
