"""Write every table of README.md from the committed tables, or check that they are what those tables give.

    python simulations/readme_tables.py           # rewrite each block between <!-- NAME --> and <!-- /NAME -->
    python simulations/readme_tables.py --check   # exit 1, naming the blocks, when one differs from its tables

Each block of the README is the output of one table maker of ``moe_estimation.report.summary`` run on committed files
(``tables/``, ``benchmarks/``); :data:`BLOCKS` says which. The tests run the check, so a README number that
does not match its table fails CI.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def blocks() -> dict:
    """marker -> (a function making the block's text, indent): each from committed files only."""
    from moe_estimation.report import summary as s

    t, b = ROOT / "tables", ROOT / "benchmarks"
    out = {
        "robust-table": lambda: s.robust_table(t / "robust-quick"),
        "robust-failing-table": lambda: s.failing_markdown(t / "robust-quick"),
        "robust-spread-table": lambda: s.spread_markdown(t / "robust-quick"),
        "robust-differences-table": lambda: s.differences_markdown(t / "robust-quick", axes=("schedule",)),
        "robust-power-table": lambda: s.power_markdown(t / "power-robust-quick.csv", schedules=("shrinking", "random")),
        "robust-non-shared-table": lambda: s.robust_table(t / "robust-non-shared"),
        "robust-non-shared-failing-table": lambda: s.failing_markdown(t / "robust-non-shared"),
        "robust-non-shared-power-table": lambda: s.power_markdown(t / "power-robust-non-shared.csv"),
        "tolerance-table": lambda: s.robust_table(t / "tolerance-non-shared"),
        "tolerance-paired-table": lambda: s.paired_runs_markdown(t / "robust-non-shared", t / "tolerance-non-shared"),
        "quick-table": lambda: s.study_table(t / "quick"),
        "quick-failing-table": lambda: s.failing_markdown(t / "quick"),
        "quick-differences-table": lambda: s.differences_markdown(t / "quick"),
        "quick-power-table": lambda: s.power_markdown(t / "power-quick.csv"),
        "quick-control-table": lambda: s.control_markdown(t / "quick"),
        "quick-bounds-table": lambda: s.bounds_markdown(t / "quick"),
        "restarts-failing-table": lambda: s.failing_markdown(t / "restarts-quick"),
        "restarts-lowest-table": lambda: s.lowest_markdown(t / "restarts-quick"),
        "contested-failing-table": lambda: s.failing_markdown(t / "contested-quick"),
        "contested-spread-table": lambda: s.spread_markdown(t / "contested-quick"),
        "contested-differences-table": lambda: s.differences_markdown(t / "contested-quick"),
        "contested-power-table": lambda: s.power_markdown(t / "power-contested-quick.csv"),
        "minimax-table": lambda: s.minimax_markdown(t / "minimax-quick"),
        "inverse-table": lambda: s.inverse_markdown(t / "inverse"),
        "le-cam-table": lambda: s.le_cam_markdown(t / "inverse"),
        "geometry-table": lambda: s.geometry_markdown(t / "geometry"),
        "transformer-table": lambda: s.transformer_table(t / "transformer-standard"),
        "transformer-quick-table": lambda: s.transformer_table(t / "transformer-quick"),
        "workers-table": lambda: s.workers_table(b / "cpu-workers.json"),
        "lab-gaussian-moe-table": lambda: s.lab_markdown(t / "lab-gaussian-moe"),
        "lab-em-table": lambda: s.lab_em_table(b / "lab-em-cpu.json"),
        "teacher-table": lambda: s.teacher_table([t / "teacher-quick", t / "teacher-more"]),
        "teacher-controls-table": lambda: s.teacher_windows_table([t / "teacher-controls"]),
        "teacher-efficiency-table": lambda: s.teacher_efficiency_table([t / "teacher-controls", t / "teacher-frozen"]),
        "teacher-weak-table": lambda: s.teacher_weak_table([t / "teacher-controls"]),
        "teacher-anatomy-table": lambda: s.teacher_anatomy_table([t / "teacher-anatomy"]),
        "teacher-layers-table": lambda: s.teacher_layer_table([t / "teacher-controls"]),
        "teacher-anatomy-rates": lambda: s.teacher_table([t / "teacher-anatomy"]),
        "teacher-frozen-table": lambda: s.teacher_table([t / "teacher-frozen"]),
        "step-table": lambda: s.step_table(b / "cpu-step.json").split("\n\n", 1)[1],
    }
    from moe_estimation.lab.suite import pairs_markdown

    out["published-reported"] = lambda: s.reported_table(t)  # what each source reports, beside ours
    for source in s.PUBLISHED:  # the rebuilt published studies: a table a source, and its ways compared data set by data set
        out[f"published-{source}-table"] = lambda src=source: s.published_table(*reversed(s.published_runs(src, t / "published")))
        out[f"published-{source}-pairs"] = lambda src=source: pairs_markdown(*reversed(s.published_runs(src, t / "published")))
    for name, power_problems, reference in (("full", ("non-shared", "shared-linear"), "non-shared"),
                                            ("nonlinear", None, "shared-linear")):
        out.update({
            f"{name}-table": lambda n=name: s.study_table(t / n),
            f"{name}-failing-table": lambda n=name: s.failing_markdown(t / n),
            f"{name}-spread-table": lambda n=name: s.spread_markdown(t / n),
            f"{name}-control-table": lambda n=name: s.control_markdown(t / n),
            f"{name}-differences-table": lambda n=name, r=reference: s.differences_markdown(t / n, reference=r),
            f"{name}-power-table": lambda n=name, p=power_problems: s.power_markdown(t / f"power-{n}.csv", problems=p),
        })
    return out


INDENTED = {"workers-table": "  "}  # blocks printed inside a list item


def block_pattern(marker: str) -> re.Pattern:
    return re.compile(rf"(<!-- {re.escape(marker)} -->\n)(.*?)(\n?<!-- /{re.escape(marker)} -->)", re.S)


def made(marker: str, make) -> str:
    indent = INDENTED.get(marker, "")
    return "\n".join(indent + line if line else line for line in make().strip("\n").split("\n"))


def differing(text: str) -> list[str]:
    """The markers whose block in ``text`` is not what its tables give (or that have no closed block)."""
    out = []
    for marker, make in blocks().items():
        m = block_pattern(marker).search(text)
        if m is None or m.group(2).strip("\n") != made(marker, make):
            out.append(marker)
    return out


def rewrite(text: str) -> str:
    for marker, make in blocks().items():
        pattern = block_pattern(marker)
        if pattern.search(text) is None:
            raise ValueError(f"README.md has no block <!-- {marker} --> ... <!-- /{marker} -->")
        text = pattern.sub(lambda m: m.group(1) + made(marker, make) + "\n" + m.group(3).lstrip("\n"), text)
    return text


def main(args) -> int:
    text = README.read_text()
    if args.check:
        bad = differing(text)
        if bad:
            print("README.md blocks that differ from their committed tables: " + ", ".join(bad), file=sys.stderr)
            return 1
        print(f"all {len(blocks())} README tables are their committed tables")
        return 0
    new = rewrite(text)
    README.write_text(new)
    print(f"wrote {len(blocks())} README tables" + ("" if new != text else " (unchanged)"))
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--check", action="store_true", help="check only; exit 1 when a block differs")
    sys.exit(main(p.parse_args()))
