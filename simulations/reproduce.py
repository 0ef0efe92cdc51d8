"""Reproduce every figure: the rate study, the prefix-tuned transformer, then all plots.

    python simulations/reproduce.py --preset quick   # CPU, 7 minutes on 2 cores -> results/quick*, figures/quick
    python simulations/reproduce.py --preset quick --teacher   # + the teacher-student study (CPU, several hours)
    python simulations/reproduce.py --preset full    # the GPU-sized rate study (+ the quick transformer)
    python simulations/reproduce.py --preset robust-quick --no-transformer   # four starting-point schedules
    python simulations/reproduce.py --config simulations/example.toml --results results/mine --figures figures/mine

Both halves resume: run the same command again after an interruption and finished work is kept.
"""

from __future__ import annotations

import argparse
import sys

from moe_estimation.cli import main as cli_main


def main(args) -> int:
    name = args.preset or "custom"
    results = args.results or f"results/{name}"
    figures = args.figures or f"figures/{name}"
    flags = ["--no-progress"] if args.no_progress else []
    study = ["study", "--out", results, *flags]
    study += ["--preset", args.preset] if args.preset else ["--config", args.config]
    rc = cli_main(study)
    if rc:
        return rc
    dirs = [results]
    if not args.no_transformer:
        transformer = f"results/transformer-{'tiny' if args.preset == 'tiny' else 'quick'}"
        rc = cli_main(["transformer", "--preset", "tiny" if args.preset == "tiny" else "quick", "--out", transformer,
                       *flags])
        if rc:
            return rc
        dirs.append(transformer)
    if args.teacher:  # quick: teacher-quick, then teacher-more (the same design for the other students and truth)
        names = {"tiny": ["teacher-tiny"], "full": ["teacher"], "robust": ["teacher"]}.get(
            args.preset, ["teacher-quick", "teacher-more"])
        for name in names:
            teacher = f"results/{name}"
            rc = cli_main(["transformer", "--preset", name, "--out", teacher, *flags])
            if rc:
                return rc
            dirs.append(teacher)
    return cli_main(["plot", "--results", *dirs, "--out", figures])


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    g = p.add_mutually_exclusive_group()
    g.add_argument("--preset", choices=["quick", "full", "robust-quick", "robust", "tiny"],
                   help="a named rate study (default quick)")
    g.add_argument("--config", help="a TOML study configuration")
    p.add_argument("--results", help="where the rate tables go (default results/PRESET)")
    p.add_argument("--figures", help="where the figures go (default figures/PRESET)")
    p.add_argument("--no-transformer", action="store_true", help="skip the transformer learning curves")
    p.add_argument("--teacher", action="store_true",
                   help="also run the teacher-student study (teacher-quick and teacher-more; teacher for full and "
                        "robust) and draw its panels into the combined figure")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    a = p.parse_args()
    if a.preset is None and a.config is None:
        a.preset = "quick"
    sys.exit(main(a))
