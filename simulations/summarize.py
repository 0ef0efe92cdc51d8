"""Print the README's result tables (markdown) from the tables that the studies wrote.

    python simulations/summarize.py --study results/quick --transformer results/transformer-quick \\
        --bench benchmarks/cpu.json --step benchmarks/cpu-step.json --precision benchmarks/precision-cpu.json
    python simulations/summarize.py --compare results/full results/full-gpu   # two runs of one study
    python simulations/summarize.py --robust results/robust-quick            # a study over several schedules
    python simulations/summarize.py --teacher results/teacher-quick results/teacher-more   # teacher-student
    python simulations/summarize.py --inference tables/quick --power tables/power-quick.csv   # distributions, power
    python simulations/summarize.py --paired tables/robust-non-shared tables/tolerance-non-shared   # fit settings

A folder's fits may be compressed (fits.csv.gz, as the large committed studies are); it is read as it is.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from moe_estimation.report.summary import (  # noqa: F401  (the table makers live in the package: moe-estimation summarize)
    study_table,
    robust_table,
    parts_table,
    transformer_table,
    bench_table,
    step_table,
    workers_table,
    precision_table,
    compare_table,
    paired_runs_markdown,
    teacher_table,
    control_markdown,
    by_key_markdown,
    spread_markdown,
    bounds_markdown,
    lowest_markdown,
    failing_markdown,
    differences_markdown,
    power_markdown,
    minimax_markdown,
    inverse_markdown,
    le_cam_markdown,
    geometry_markdown,
)


def main(args) -> int:
    if args.study:
        print(study_table(Path(args.study)), "\n")
        print(parts_table(Path(args.study)), "\n")
    if args.robust:
        print(robust_table(Path(args.robust)), "\n")
    if args.inference:
        path = Path(args.inference)
        print(failing_markdown(path), "\n")
        print(differences_markdown(path), "\n")
        print(control_markdown(path), "\n")
        print(by_key_markdown(path), "\n")
        print(spread_markdown(path), "\n")
        print(bounds_markdown(path), "\n")
        if pd.read_csv(path / "lowest.csv")["schedule"].nunique() > 1:
            print(lowest_markdown(path), "\n")
    if args.minimax:
        print(minimax_markdown(Path(args.minimax)), "\n")
    if args.geometry:
        print(geometry_markdown(Path(args.geometry)), "\n")
    if args.inverse:
        print(inverse_markdown(Path(args.inverse)), "\n")
        if (Path(args.inverse) / "le_cam.csv").is_file():
            print(le_cam_markdown(Path(args.inverse)), "\n")
    if args.power:
        print(power_markdown(Path(args.power)), "\n")
    if args.teacher:
        print(teacher_table([Path(t) for t in args.teacher]), "\n")
    if args.transformer:
        print(transformer_table(Path(args.transformer)), "\n")
    if args.bench:
        print(bench_table(Path(args.bench)), "\n")
    if args.step:
        print(step_table(Path(args.step)), "\n")
    if args.workers:
        print(workers_table(Path(args.workers)), "\n")
    if args.precision:
        print(precision_table(Path(args.precision)), "\n")
    if args.compare:
        print(compare_table(*map(Path, args.compare)))
    if args.paired:
        print(paired_runs_markdown(*map(Path, args.paired)))
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--study", help="a study's output directory")
    p.add_argument("--robust", help="a study over several starting-point schedules (e.g. results/robust-quick)")
    p.add_argument("--inference", help="a study's output directory: its failing fractions, quantile slopes and "
                                       "paired differences (failing.csv, rates.csv, differences.csv)")
    p.add_argument("--minimax", help="a study with truths that move with n (e.g. tables/minimax-quick): the worst "
                                     "case over each family (minimax.csv, minimax_rates.csv)")
    p.add_argument("--geometry", help="a study of drawn geometries (e.g. tables/geometry): the failing fractions and "
                                      "slopes by factor (geometry.csv, geometry_effects.csv)")
    p.add_argument("--inverse", help="an inverse-bound run (e.g. tables/inverse): m(delta) and the Le Cam table")
    p.add_argument("--power", help="a power table (moe-estimation power --out FILE)")
    p.add_argument("--transformer", help="a transformer run's output directory")
    p.add_argument("--teacher", nargs="+", metavar="DIR",
                   help="a teacher-student run's output directory (transformer --preset teacher-quick), or several "
                        "runs of one design that split its cases (results/teacher-quick results/teacher-more)")
    p.add_argument("--bench", help="a benchmark JSON (moe-estimation bench --json)")
    p.add_argument("--step", help="a step benchmark JSON (moe-estimation bench --step --json)")
    p.add_argument("--workers", help="a workers benchmark JSON (moe-estimation bench --workers --json)")
    p.add_argument("--precision", help="a precision benchmark JSON (moe-estimation bench --precision --json)")
    p.add_argument("--compare", nargs=2, metavar=("A", "B"),
                   help="two output directories of the same study (e.g. float64 and float32): how far apart they are")
    p.add_argument("--paired", nargs=2, metavar=("A", "B"),
                   help="two runs of one grid under different fit settings (e.g. tolerances) on the same data sets: "
                        "how the objective, the yardstick and its slopes moved on the fits both hold")
    sys.exit(main(p.parse_args()))
