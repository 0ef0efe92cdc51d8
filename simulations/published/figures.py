"""Draw the figures and print the tables of the rebuilt published studies from their committed runs.

    python simulations/published/figures.py            # figures/published/*.png from tables/published/
    python simulations/published/figures.py --tables   # and the README's table of each source, in markdown

The runs are made by ``moe-estimation study --preset NAME --out results/NAME`` (each preset a suite of ways of
fitting on the same data sets, :mod:`moe_estimation.lab.suite`) and committed in ``tables/published/NAME``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

from moe_estimation.report.plots import plot_published  # noqa: E402
from moe_estimation.report.summary import PUBLISHED, published_runs, published_table  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def main(args) -> int:
    out = Path(args.out)
    for source in PUBLISHED:
        loss, which = published_runs(source, ROOT / "tables" / "published")
        for path in plot_published(which, loss, out, source):
            print(f"wrote {path}")
        if args.tables:
            print(published_table(which, loss))
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(ROOT / "figures" / "published"))
    p.add_argument("--tables", action="store_true", help="also print each source's table")
    raise SystemExit(main(p.parse_args()))
