"""The command line: ``moe-estimation study | inverse-bound | summarize | presets | plot | power | transformer | bench``.

Run ``moe-estimation COMMAND --help`` for every option.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def _setup_jax(args) -> None:
    import jax

    if getattr(args, "distributed", False):
        # several hosts: under Slurm, Open MPI or on TPU the arguments are detected; elsewhere pass them
        kw = {k: v for k, v in (("coordinator_address", args.coordinator), ("num_processes", args.num_processes),
                                ("process_id", args.process_id)) if v is not None}
        jax.distributed.initialize(**kw)
    if not getattr(args, "float32", False):
        jax.config.update("jax_enable_x64", True)
    cache = os.environ.get("MOE_ESTIMATION_CACHE", str(Path.home() / ".cache" / "moe_estimation" / "jax"))
    if cache:  # compiled programs are reused across runs of a study (set MOE_ESTIMATION_CACHE= to disable)
        jax.config.update("jax_compilation_cache_dir", cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def parse_workers(text: str):
    """``--workers``: ``auto`` or an integer >= 1 (checked by :func:`moe_estimation.experiments.workers.resolve_workers`)."""
    if text == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"--workers: must be an integer >= 1 or 'auto', got {text!r}") from None


def _add_workers(parser) -> None:
    parser.add_argument(
        "--workers", default=os.environ.get("MOE_ESTIMATION_WORKERS", "auto"),
        help="processes that fit cells at once: 'auto' (the default; MOE_ESTIMATION_WORKERS overrides it) is one "
             "per core on a CPU, each pinned to its core with single-threaded XLA (on 2 cores about 1.5x the "
             "throughput of one process using both), and 1 on an accelerator; 1 fits in this process. The tables "
             "do not depend on it")


def cmd_study(args) -> int:
    from .experiments.config import load_config, study_preset

    if (args.preset is None) == (args.config is None):
        raise ValueError("study: give exactly one of --preset NAME or --config FILE")
    for flag, value in (("--coordinator", args.coordinator), ("--num-processes", args.num_processes),
                        ("--process-id", args.process_id)):
        if value is not None and not args.distributed:
            raise ValueError(f"{flag}: applies only with --distributed (several JAX processes), got {flag} {value} "
                             "without it")
    if args.out is None and not (args.show_config or args.dry_run):
        raise ValueError("study: --out is required (the folder the study writes, or resumes)")
    for flag in ("dry_run", "wait", "distributed"):
        if args.preset in LAB_PRESET_NAMES and getattr(args, flag):
            raise ValueError(f"--{flag.replace('_', '-')}: not available for a lab study (the preset {args.preset} is one)")
    _setup_jax(args)  # first: jax.distributed.initialize() must precede anything that touches a device
    if args.preset in LAB_PRESET_NAMES:  # a rebuilt published study: a suite of lab studies
        from .lab.suite import lab_preset

        args.config = f"preset {args.preset}"
        return _lab_study(args, lab_preset(args.preset))
    if args.config:
        from .experiments.config import read_toml

        data = read_toml(args.config)
        if "model" in data:  # a study of an assembly of parts (moe_estimation.lab)
            return _lab_study(args, data)
    cfg = study_preset(args.preset) if args.preset else load_config(args.config)
    if args.show_config:  # the resolved configuration, every default filled in; nothing is run
        import json

        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    if args.dry_run:
        from .experiments.study import dry_run

        print(dry_run(cfg, workers=parse_workers(args.workers)))
        return 0
    from .experiments.study import run_study

    import jax

    lead = jax.process_index() == 0  # with --distributed, process 0 writes the tables and reports
    fits = run_study(cfg, args.out, progress=not args.no_progress and lead, tables_only=args.tables_only,
                     repair=args.repair, wait=args.wait, log=print if lead else (lambda *a: None),
                     workers=1 if args.distributed else parse_workers(args.workers))
    if lead:
        from .report.summary import study_summary

        print(study_summary(Path(args.out), fits))
    return 0


def _lab_study(args, data) -> int:
    from .lab.study import parse_lab_config, run_lab_study
    from .lab.suite import is_suite, run_lab_suite, split_suite

    for flag in ("dry_run", "wait", "distributed"):
        if getattr(args, flag):
            raise ValueError(f"--{flag.replace('_', '-')}: not available for a lab study (a configuration with [model])")
    if is_suite(data):  # several ways of fitting on the same data sets
        if args.show_config:
            import json

            for name, label, single in split_suite(data, str(args.config)):
                study = parse_lab_config(single, f"{args.config} [fits.{name}]")
                print(f"# {name}: {label}\n" + json.dumps(study.table, indent=2))
            return 0
        run_lab_suite(data, args.out, str(args.config), progress=not args.no_progress,
                      workers=parse_workers(args.workers), tables_only=args.tables_only, repair=args.repair)
        print((Path(args.out) / "comparison.md").read_text())
        print(f"wrote one folder a way of fitting under {args.out}, and {Path(args.out) / 'comparison.md'}")
        return 0
    study = parse_lab_config(data, str(args.config))
    if args.show_config:
        import json

        print(json.dumps(study.table, indent=2))
        return 0
    fits = run_lab_study(study, args.out, progress=not args.no_progress, workers=parse_workers(args.workers),
                         tables_only=args.tables_only, repair=args.repair)
    print(f"wrote {len(fits)} fits to {Path(args.out) / 'fits.csv'} and rates to {Path(args.out) / 'rates.csv'}")
    return 0


def cmd_summarize(args) -> int:
    from .report.summary import summarize

    text = "\n\n".join(summarize(Path(d)) for d in args.results)
    if args.out:
        from .experiments.results import atomic_write

        atomic_write(Path(args.out), text + "\n")
        print(f"wrote {args.out}")
    else:
        print(text)
    return 0


def cmd_presets(args) -> int:
    _setup_jax(args)
    from .experiments.config import STUDY_PRESETS, study_preset

    print("study presets (moe-estimation study --preset NAME; --show-config prints one resolved, --dry-run times it):")
    for name in STUDY_PRESETS:
        cfg = study_preset(name)
        cells = sum(len(cfg.specifications_of(p)) for p in cfg.problems) * len(cfg.schedules) * len(cfg.ns)
        fits = cells * cfg.replicates
        print(f"  {name:16s} {len(cfg.problems):4d} problems, n = {min(cfg.ns)}..{max(cfg.ns)} ({len(cfg.ns)} sizes), "
              f"{cfg.replicates} replicates, {len(cfg.schedules)} schedule(s): {cells} cells, {fits} fits")
    print("transformer presets (moe-estimation transformer --preset NAME): quick, standard, tiny (learning curves); "
          "teacher-quick, teacher-more, teacher, teacher-noise, teacher-starts, teacher-controls, teacher-anatomy, "
          "teacher-frozen, teacher-tiny (teacher-student)")
    return 0


def cmd_power(args) -> int:
    import numpy as np
    import pandas as pd

    from .experiments.config import load_config, study_preset
    from .experiments.inference import power_table
    from .experiments.results import fits_file, write_csv

    if (args.preset is None) == (args.config is None):
        raise ValueError("power: give exactly one of --preset NAME or --config FILE (the design)")
    _setup_jax(argparse.Namespace(float32=False))  # a configuration's problems are built in float64
    cfg = study_preset(args.preset) if args.preset else load_config(args.config)
    fits = None
    if args.results is not None:
        path = fits_file(args.results)
        if not path.is_file():
            raise ValueError(f"--results: {args.results} has no fits.csv; run `moe-estimation study --out {args.results}` "
                             "first, or give --sigma")
        try:
            fits = pd.read_csv(path)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, EOFError, OSError) as e:
            raise ValueError(f"--results: {path} is not a readable fits table ({str(e).splitlines()[0]})") from None
    sigmas = args.sigma if args.sigma is not None else ([] if fits is not None else [0.3, 0.6, 1.0])
    for s in sigmas:
        if not (np.isfinite(s) and s > 0):
            raise ValueError(f"--sigma: every standard deviation of log loss must be a finite number > 0, got {s}")
    if args.sims < 10:
        raise ValueError(f"--sims: need at least 10 simulated studies per contrast, got {args.sims}")
    table = power_table(cfg, fits, sigmas=sigmas, sims=args.sims, statistics=tuple(args.statistics))
    ns = table["ns"].iloc[0] if len(table) else ""
    print(f"design: n = {ns}, {cfg.replicates} replicates a size; {args.sims} simulated studies a contrast; "
          "power = how often the 95% interval excludes the alternative when the slope is the truth")
    table["contrast"] = [f"{t:g} vs {a:g}" for t, a in zip(table["truth"], table["alternative"])]
    wide = table.pivot_table(index=["source", "problem", "specification", "schedule", "loss", "sigma", "statistic"],
                             columns="contrast", values="power", sort=False).reset_index()
    with pd.option_context("display.width", 200, "display.max_rows", 500):
        print(wide.round(3).to_string(index=False))
    if args.out:
        write_csv(Path(args.out), table.drop(columns="contrast"))
        print(f"wrote {args.out}")
    return 0


def cmd_inverse(args) -> int:
    _setup_jax(args)
    from .experiments.inverse import InverseSettings, InverseStudy, run_inverse

    fields = {f: getattr(args, f) for f in ("points", "starts", "penalty", "tolerance", "max_steps")
              if getattr(args, f) is not None}
    if args.no_le_cam:
        for flag in ("le_cam_ns", "le_cam_cs", "le_cam_betas", "le_cam_deltas"):
            if getattr(args, flag):
                raise ValueError(f"--{flag.replace('_', '-')}: sets the Le Cam table, which --no-le-cam leaves out")
    base = InverseStudy()
    study = InverseStudy(
        problems=tuple(args.problem), specifications=tuple(args.specifications), losses=tuple(args.losses),
        deltas=tuple(args.deltas) if args.deltas else base.deltas, window=args.window,
        settings=InverseSettings()._replace(**fields), seed=args.seed,
        le_cam_ns=() if args.no_le_cam else tuple(args.le_cam_ns or base.le_cam_ns),
        le_cam_cs=tuple(args.le_cam_cs or base.le_cam_cs), le_cam_betas=tuple(args.le_cam_betas or base.le_cam_betas),
        le_cam_deltas=tuple(args.le_cam_deltas or base.le_cam_deltas))
    table, summary, lecam = run_inverse(study, args.out, progress=not args.no_progress)
    for row in summary.itertuples():
        slope = "no slope" if row.slope != row.slope else f"slope {row.slope:.2f}"
        print(f"{row.problem} {row.specification} {row.loss}: {slope} over delta <= {row.window:g} "
              f"({row.points} positive, {row.zeros} at zero); min m/delta^2 {row.m_over_delta2_min:.3g}")
    print(f"wrote {args.out}/inverse.csv, inverse_summary.csv" + (", le_cam.csv" if len(lecam) else "")
          + f"; figures: moe-estimation plot --results {args.out} --out FIGURES")
    return 0


def cmd_plot(args) -> int:
    import matplotlib

    matplotlib.use("Agg")  # the command line draws into files; a library import never chooses the backend
    from .report.plots import plot_results

    for path in plot_results(args.results, args.out):
        print(f"wrote {path}")
    return 0


def cmd_transformer(args) -> int:
    from .transformer.teacher import TEACHER_PRESETS, TRUTH_STARTS, run_teacher
    from .transformer.train import TRANSFORMER_PRESETS, run_transformer

    if args.preset in TEACHER_PRESETS:  # teacher-student: the students are fitted in float64, as in a study
        _setup_jax(argparse.Namespace(float32=False))
        fits = run_teacher(TEACHER_PRESETS[args.preset], args.out, progress=not args.no_progress,
                           workers=parse_workers(args.workers), repair=args.repair)
        print(f"wrote {len(fits)} fits to {Path(args.out) / 'fits.csv'}, rates to {Path(args.out) / 'rates.csv'}")
        started = Path(args.out) / TRUTH_STARTS
        if started.is_file():
            print(f"the exactly specified data sets fitted again from the truth (the positive control): {started}")
        return 0
    _setup_jax(argparse.Namespace(float32=True))  # the compilation cache; the transformer's dtypes are its own
    curves = run_transformer(TRANSFORMER_PRESETS[args.preset], args.out, progress=not args.no_progress,
                             workers=parse_workers(args.workers), repair=args.repair)
    print(f"wrote {len(curves)} rows to {Path(args.out) / 'curves.csv'}")
    return 0


def cmd_bench(args) -> int:
    _setup_jax(args)
    from .experiments.bench import run_bench, run_precision_bench, run_step_bench

    if args.steps is not None and not args.step:
        raise ValueError(f"--steps: applies only with --step (LM steps per fit of the step benchmark), got --steps "
                         f"{args.steps} without it")
    args.steps = 20 if args.steps is None else args.steps
    if args.fits < 1 or args.large_fits < 1 or args.steps < 1 or any(n < 1 for n in args.sizes):
        raise ValueError("bench: --sizes, --fits, --large-fits and --steps must be >= 1")
    if sum(map(bool, (args.step, args.precision, args.workers))) > 1:
        raise ValueError("bench: give at most one of --step, --precision and --workers")
    if args.workers:
        from .experiments.bench import run_workers_bench

        run_workers_bench(None if args.workers == "auto" else parse_workers(args.workers), json_path=args.json)
        return 0
    if args.precision:
        run_precision_bench(sizes=args.sizes, fits=args.fits, problems=args.problems, json_path=args.json)
        return 0
    if args.step:
        run_step_bench(sizes=args.sizes, fits=args.fits, problems=args.problems, steps=args.steps,
                       json_path=args.json)
        return 0
    run_bench(sizes=args.sizes, fits=args.fits, json_path=args.json, methods=args.methods, problems=args.problems,
              large_fits=args.large_fits)
    return 0


# moe_estimation.experiments.config.STUDY_PRESETS' names, spelled out so that --help needs no JAX import (a test checks
# that the two agree)
STUDY_PRESET_NAMES = ("quick", "full", "robust-quick", "nonlinear", "robust", "restarts-quick", "contested-quick",
                      "contested", "minimax-quick", "minimax", "geometry", "tiny")
# the rebuilt published studies (moe_estimation.lab.suite.LAB_PRESET_NAMES: the TOML files of moe_estimation/lab/presets,
# each also NAME-full), spelled out for the same reason and checked by the same test
LAB_PRESET_NAMES = ("deepseek-t1", "deepseek-t2", "deepseek-t3", "deepseek-t4", "fusemoe", "gmoe-1", "gmoe-2",
                    "gmoe-3", "gmoe-4", "sgame-exact", "sgame-over", "sigmoid-vs-softmax-linear",
                    "sigmoid-vs-softmax-relu")
LAB_PRESET_NAMES = LAB_PRESET_NAMES + tuple(f"{name}-full" for name in LAB_PRESET_NAMES)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = argparse.ArgumentParser(prog="moe-estimation", description=__doc__.split("\n")[0])
    p.add_argument("--version", action="version", version=f"moe-estimation {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("study", help="run (or resume) a Monte Carlo rate study",
                       description="Fit every cell of a (problem, specification, n, replicate) grid, write "
                                   "fits.csv, rates.csv and config.json into --out. Resumes from --out.")
    s.add_argument("--preset", choices=STUDY_PRESET_NAMES + LAB_PRESET_NAMES,
                   help="a named study: quick (CPU: 130 s from an empty compilation cache with 2 workers on a quiet 2-core machine, measured), full (n = 1e3..1e5, 12 sizes, 40 replicates; GPU-sized), "
                   "nonlinear (shared-nonlinear, a map nonlinear in fact, beside shared-linear on the full study's "
                   "design; its shared-linear cells are the full study's), "
                   "robust-quick (every structure under four starting-point schedules; CPU, about 10 minutes), robust "
                   "(the same at n = 1e3..1e5 with five schedules; GPU-sized), restarts-quick (random starts, best of 8, "
                   "16 and 32, nested; CPU, about 5 minutes on one core), contested-quick (over-specified non-shared and "
                   "shared-linear, n to 2.5e5, 100 replicates in blocks of 20; CPU, hours, resumable), contested (the same "
                   "at 9 sizes, 200 replicates; GPU-sized), minimax-quick (truths that move with n: two true "
                   "prompts c n^-beta apart, beta = 0..1/2, the worst case over each family; CPU, 16 minutes on "
                   "two cores, measured), minimax (the same at n = 1e3..1e5; GPU-sized), geometry (several drawn truths and shapes: "
                   "d, d_v in {2, 4}, three key separations, two noise levels, L' - L in {1, 2}; CPU, 83 minutes on two "
                   "cores, measured; resumable), tiny (seconds, for smoke tests); and the published rate studies rebuilt "
                   "(deepseek-t1 .. t4, fusemoe, gmoe-1 .. 4, sgame-exact, sgame-over, sigmoid-vs-softmax-relu and -linear: each a suite of ways of fitting "
                   "on the same data, CPU-sized; NAME-full the source's grid, GPU-sized). Times are of a first run, compiling "
                   "included; `moe-estimation presets` lists every preset's size, `--dry-run` times one on this machine")
    s.add_argument("--config", help="a TOML study configuration (see moe_estimation.experiments.config for the keys)")
    s.add_argument("--out", help="output directory; an existing one of the same study is resumed")
    s.add_argument("--show-config", action="store_true", help="print the resolved configuration (every default "
                   "filled in) as JSON and stop: nothing is run or written")
    s.add_argument("--dry-run", action="store_true", help="print the cells and fits the study would run and an "
                   "estimate of its time from one timed fit of its costliest shape (a first run also pays compilation), "
                   "and stop: nothing is written")
    s.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    s.add_argument("--tables-only", action="store_true",
                   help="fit nothing: rebuild rates.csv from the cells already in --out (a study stopped part-way)")
    s.add_argument("--repair", action="store_true",
                   help="when --out/fits.csv is damaged (cut short, duplicated or foreign rows, a missing column): "
                        "drop the damaged cells and recompute only them (without it the run refuses and says what is "
                        "damaged)")
    s.add_argument("--wait", action="store_true",
                   help="when another run is writing into --out, wait for it to finish instead of refusing")
    _add_workers(s)
    s.add_argument("--distributed", action="store_true",
                   help="call jax.distributed.initialize() first (one process per host; the replicate axis is "
                        "sharded over every device of every host)")
    s.add_argument("--coordinator", help="with --distributed: host:port of process 0 (detected under Slurm/MPI)")
    s.add_argument("--num-processes", type=int, help="with --distributed: the number of processes (one per host)")
    s.add_argument("--process-id", type=int, help="with --distributed: this process's rank, 0..num_processes-1")
    s.set_defaults(func=cmd_study)

    iv = sub.add_parser("inverse-bound", help="the inverse bound m(delta), measured without statistics, and the Le Cam table",
                        description="For each problem, specification and loss: m(delta), the smallest mean squared "
                                    "distance ||f_G - f_G*||^2 (over inputs drawn from the input law) among measures G "
                                    "with loss D(G, G*) = delta, by a penalised least-squares fit from many starts "
                                    "(docs/maths.md, *The inverse bound*). Theory: m of order delta^2 for the shared "
                                    "structures, m = 0 on the zero set of over-specified non-shared prompts. The Le Cam "
                                    "table: the same at a truth whose two prompts are c n^-beta apart, with n m / sigma^2 "
                                    "(bounded: no data set of size n tells the two measures apart). Writes inverse.csv, "
                                    "inverse_summary.csv, le_cam.csv and config.json; resumes. Deterministic; about 10 "
                                    "minutes a problem on one core with the defaults.")
    iv.add_argument("--problem", nargs="+", default=["non-shared", "shared-linear", "shared-nonlinear"], help="preset names (default: "
                    "non-shared shared-linear shared-nonlinear)")
    iv.add_argument("--out", required=True, help="output directory; an existing one of the same run is resumed")
    iv.add_argument("--specifications", nargs="+", default=["exact", "over"], help="exact (L' = L), over (L' = L + 1)")
    iv.add_argument("--losses", nargs="+", default=["own", "key_value"], help="own (the structure's loss), key_value "
                    "(D_2 on the key and value atoms)")
    iv.add_argument("--deltas", type=float, nargs="+", help="the loss values (default: 7 from 1e-3 to 1)")
    iv.add_argument("--window", type=float, default=1e-2, help="the local slope is fitted over delta <= this (default 1e-2)")
    iv.add_argument("--starts", type=int, help="starts per delta (default 16)")
    iv.add_argument("--points", type=int, help="inputs the squared distance is averaged over (default 2048)")
    iv.add_argument("--penalty", type=float, help="the constraint's penalty (default 1e6)")
    iv.add_argument("--tolerance", type=float, help="a start is feasible when |D / delta - 1| <= this (default 1e-2)")
    iv.add_argument("--max-steps", type=int, help="solver steps per penalty stage (default 2000)")
    iv.add_argument("--seed", type=int, default=0, help="seed of the inputs and the starts")
    iv.add_argument("--no-le-cam", action="store_true", help="skip the Le Cam table")
    iv.add_argument("--le-cam-ns", type=int, nargs="+", help="its sample sizes (default 1e3 1e4 1e5 1e6)")
    iv.add_argument("--le-cam-cs", type=float, nargs="+", help="its scales c (default 1 0.25)")
    iv.add_argument("--le-cam-betas", type=float, nargs="+", help="its exponents beta (default 0: a fixed truth, and 0.5)")
    iv.add_argument("--le-cam-deltas", type=float, nargs="+", help="its loss values (default 0.01 0.1 1)")
    iv.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    iv.set_defaults(func=cmd_inverse)

    sm = sub.add_parser("summarize", help="the summary tables of finished runs, in markdown",
                        description="For each folder: a study's rates (every schedule, and their best of all), "
                                    "failing fractions and, as they apply, paired differences, positive control, "
                                    "spread, lowest objectives, worst case over moving truths or findings by geometry; "
                                    "a transformer, teacher or inverse-bound run's own tables.")
    sm.add_argument("results", nargs="+", help="run folders (a study's, a transformer's, a teacher's, an inverse-bound's)")
    sm.add_argument("--out", help="write the markdown to this file instead of printing it")
    sm.set_defaults(func=cmd_summarize)

    pr = sub.add_parser("presets", help="list the named studies and transformer runs",
                        description="Every study preset with its problems, sizes, replicates, schedules, cells and fits.")
    pr.set_defaults(func=cmd_presets)

    pl = sub.add_parser("plot", help="draw the figures of finished studies",
                        description="Read the tables in each --results directory (a rate study's fits.csv and "
                                    "rates.csv, or a transformer run's curves.csv) and write PNG figures to --out; "
                                    "given one of each, also the combined figure.")
    pl.add_argument("--results", required=True, nargs="+", help="output directories of `study` and/or `transformer`")
    pl.add_argument("--out", required=True, help="directory for the figures")
    pl.set_defaults(func=cmd_plot)

    pw = sub.add_parser("power", help="what a study's design can tell apart: the power of its rate intervals",
                        description="Simulate losses with a known slope on the design of --config or --preset (its "
                                    "sample sizes inside the rate window, its replicates) and report how often the "
                                    "95% bootstrap interval of the empirical rate excludes an alternative slope "
                                    "(-1/2 against -1/4 and back; the losses scale exactly, so -1/4 against 0 has "
                                    "the same power), and how often it holds the truth. The scatter of the losses is that of a finished study's own fits "
                                    "(--results: each arm and loss, its log residuals resampled) or log-normal "
                                    "(--sigma). Seconds to a minute.")
    g = pw.add_mutually_exclusive_group()
    g.add_argument("--preset", choices=STUDY_PRESET_NAMES, help="a named study's design")
    g.add_argument("--config", help="a TOML study configuration: its design")
    pw.add_argument("--results", help="a finished study's folder: the scatter of its fits (fits.csv)")
    pw.add_argument("--sigma", type=float, nargs="+",
                    help="log-normal scatter: standard deviations of log loss (default 0.3 0.6 1.0 without --results)")
    pw.add_argument("--statistics", nargs="+", default=["mean", "median"], help="statistics over replicates to rate "
                    "(mean, median, qP; default mean median)")
    pw.add_argument("--sims", type=int, default=200, help="simulated studies per contrast (default 200)")
    pw.add_argument("--out", help="also write the table (one row per source, statistic and contrast) to this CSV")
    pw.set_defaults(func=cmd_power)

    t = sub.add_parser("transformer", help="prefix-tune a small pre-trained transformer: learning curves, or "
                                           "prefix estimation against a teacher",
                       description="Pre-train a small transformer on a synthetic task (or reuse OUT/backbone.npz) and "
                                   "freeze it. Presets quick, standard and tiny prefix-tune it on another task with no-share, "
                                   "simple-share and deep-share prefixes and write curves.csv, curve_rates.csv and "
                                   "config.json. The teacher presets fit students to a "
                                   "teacher with known prefixes by least squares and write fits.csv (the prefix "
                                   "yardstick per fit), rates.csv and config.json, and truth_starts.csv: each exactly "
                                   "specified data set fitted once more from the truth, where the student can "
                                   "represent it (the positive control); a run started again resumes.")
    t.add_argument("--preset", default="quick",
                   choices=["quick", "standard", "tiny", "teacher-quick", "teacher-more", "teacher", "teacher-noise", "teacher-starts",
                            "teacher-controls", "teacher-anatomy", "teacher-frozen", "teacher-tiny"],
                   help="learning curves: quick (the main command's: n to 256; 5 minutes with two workers on a 2-core CPU, measured), "
                        "standard (the README's table: n to 512, a finer search; 19 minutes there) or tiny (seconds); "
                        "teacher-student: teacher-quick "
                        "(CPU, about an hour), teacher-more (the same design for the deep-share students and the free "
                        "truth; CPU, about 2.5 hours, resumable), teacher (GPU-sized), teacher-noise (its over-specified students at "
                        "three times the noise, n to 128), teacher-starts (teacher-quick with 4 starts a fit instead of 2, n to 128; "
                        "CPU, about 45 minutes), teacher-controls (the exactly specified students at n = 64 ... 4096: do the "
                        "controls pass? CPU: hours with two workers, resumable), teacher-anatomy (the over-specified students with the "
                        "attention mass and every fit's prefixes recorded; CPU: hours), teacher-frozen (deep-share's controls: a "
                        "truth from a frozen random network, fitted by no-share, deep-share and frozen-map students; "
                        "CPU: hours) or teacher-tiny (seconds)")
    t.add_argument("--out", required=True, help="output directory")
    t.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    t.add_argument("--repair", action="store_true",
                   help="drop the damaged cells of a damaged table in --out (fits.csv of the teacher-student presets; "
                        "lr_search.csv or curves.csv of the learning curves) and compute them again (without it a "
                        "damaged table is refused and nothing is changed)")
    _add_workers(t)
    t.set_defaults(func=cmd_transformer)

    b = sub.add_parser("bench", help="time our estimator against scipy and optimistix on the same fits",
                       description="Same data, same starting points, same tolerances: fits per second and final "
                                   "objectives of ours (batched LM), scipy.optimize.least_squares(method='lm') in "
                                   "a loop, and optimistix.LevenbergMarquardt under vmap.")
    b.add_argument("--sizes", type=int, nargs="+", default=[1000, 8000, 100000], help="sample sizes n to time")
    b.add_argument("--fits", type=int, default=16, help="fits per method and size")
    b.add_argument("--large-fits", type=int, default=4, help="fits per method at n >= 50000 (default 4)")
    b.add_argument("--methods", nargs="+", default=["ours", "scipy", "optimistix"],
                   choices=["ours", "scipy", "optimistix"], help="which methods to run")
    b.add_argument("--problems", nargs="+", default=["shared-linear", "non-shared"],
                   choices=["shared-linear", "non-shared"], help="which over-specified problems to time")
    b.add_argument("--step", action="store_true",
                   help="instead: time one solver step of ours as the study runs it and compare it with its floor "
                        "(the bytes it must read over this device's measured bandwidth, or its operations over the "
                        "measured matrix-product rate)")
    b.add_argument("--precision", action="store_true",
                   help="instead: fit the same data from the same starts in float64 and float32 and compare the "
                        "losses (why estimation runs in float64)")
    b.add_argument("--workers", nargs="?", const="auto", default=None, metavar="N",
                   help="instead: run one study (16 over-specified non-shared fits in 4 cells) in this process and in N pinned "
                        "single-threaded worker processes (default: one per core), in one run; report both times and "
                        "check the tables agree")
    b.add_argument("--steps", type=int, help="with --step: LM steps per fit (default 20)")
    b.add_argument("--json", help="also write the records as JSON to this path")
    b.set_defaults(func=cmd_bench)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as e:
        print(f"moe-estimation {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the file system said no (a full disk, a permission): one line, not a traceback
        where = f" ({e.filename})" if e.filename else ""
        print(f"moe-estimation {args.command}: error: {e.strerror or e}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished cells are saved and a rerun with the same --out resumes", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
