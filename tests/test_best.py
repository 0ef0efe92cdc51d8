"""The best fit of each data set over every schedule (inference.with_best_of_all) and the schedules'
lowest objectives (inference.lowest_table), on hand-made fits tables."""

import numpy as np
import pandas as pd
import pytest

from moe_estimation.experiments.inference import BEST, lowest_table, with_best_of_all
from moe_estimation.experiments.results import describe_schedule


def _fits(objectives: dict, ns=(100, 200), replicates=3):
    """A fits table with one row per (schedule, n, replicate); ``objectives[schedule]`` (n, replicate)."""
    rows = []
    for k, (sched, obj) in enumerate(objectives.items()):
        for i, n in enumerate(ns):
            for r in range(replicates):
                rows.append(dict(problem="p", structure="non-shared", specification="over", schedule=sched,
                                 init="random", init_scale=1.0, init_rate=0.0, restarts=4 * (k + 1), n=n, replicate=r,
                                 objective=obj[i][r], loss_key_value=10 * k + r + 0.5, seconds=1.0 + k))
    return pd.DataFrame(rows)


def test_best_of_all_takes_the_lowest_objective_of_each_data_set():
    f = _fits({"a": [[1.0, 2.0, 3.0], [1.0, np.nan, 1.0]], "b": [[1.5, 1.0, 3.0], [0.5, 2.0, np.inf]]})
    out = with_best_of_all(f)
    best = out[out["schedule"] == BEST].set_index(["n", "replicate"])
    assert len(best) == 6
    # n = 100: a, b, tie (to a, listed first); n = 200: b, b (a's NaN is no objective), a (b's inf)
    assert best["best_schedule"].tolist() == ["a", "b", "a", "b", "b", "a"]
    assert best.loc[(100, 1), "loss_key_value"] == 11.5  # the row of the chosen fit, every loss with it
    assert (best["restarts"] == 12).all() and (best["seconds"] == 3.0).all()
    assert best["init_scale"].isna().all() and (best["init"] == BEST).all()
    assert "every schedule" in describe_schedule(best.iloc[0])
    pd.testing.assert_frame_equal(out[out["schedule"] != BEST].drop(columns="best_schedule"), f)


def test_best_of_all_needs_two_schedules_and_every_schedule_of_a_data_set():
    f = _fits({"a": [[1.0, 2.0, 3.0], [1.0, 1.0, 1.0]]})
    assert with_best_of_all(f) is f  # one schedule: nothing to choose
    two = _fits({"a": [[1.0, 2.0, 3.0], [1.0, 1.0, 1.0]], "b": [[2.0, 2.0, 2.0], [0.5, 0.5, 0.5]]})
    part = two[~((two["schedule"] == "b") & (two["n"] == 200))]  # b stopped before n = 200
    best = with_best_of_all(part)
    assert sorted(best[best["schedule"] == BEST]["n"].unique()) == [100]


def test_lowest_table_counts_ties_for_each_and_measures_the_miss():
    f = _fits({"a": [[1.0, 2.0, 3.0], [1.0, np.nan, 1.0]], "b": [[1.5, 1.0, 3.0 * (1 + 1e-12)], [0.5, 2.0, np.inf]]})
    low = lowest_table(f).set_index(["schedule", "n"])
    assert low.loc[("a", 100), "lowest"] == 2 and low.loc[("b", 100), "lowest"] == 2  # the tie counts for both
    assert low.loc[("a", 100), "max_excess"] == pytest.approx(1.0)  # 2 against 1
    assert low.loc[("b", 100), "median_excess"] == pytest.approx(0.0, abs=1e-11)
    assert low.loc[("a", 200), "nonfinite"] == 1 and low.loc[("b", 200), "nonfinite"] == 1
    assert low.loc[("a", 200), "lowest"] == 1 and low.loc[("b", 200), "lowest"] == 2
    assert (low["data_sets"] == 3).all()


def test_bounds_table_tells_a_switched_off_split_prompt_from_a_lone_one():
    """Three fitted prompts of shared-linear: 0 and 1 share true atom 0's cell, 2 sits on true atom 1. Fit A:
    prompt 1's bias on the lower bound (the extra prompt switched down); fit B: prompt 2's bias on the lower
    bound and an atom coordinate of prompt 0 on the box; fit C: nothing on the box."""
    import jax

    jax.config.update("jax_enable_x64", True)
    import moe_estimation as me
    from moe_estimation.experiments.config import parse_config
    from moe_estimation.prefix.estimator import bound_coordinates
    from moe_estimation.experiments.inference import bounds_table
    from moe_estimation.experiments.results import format_params

    cfg = parse_config(dict(grid=dict(ns=[100, 200], replicates=3, problems=["shared-linear"], specifications=["over"])))
    prob = cfg.problem("shared-linear")
    t = np.asarray(prob.true_atoms)
    atoms = np.stack([np.stack([t[0], t[0] + 0.05, t[1]])] * 3)
    biases = np.array([[0.0, -3.0, 0.3], [0.0, -0.5, -3.0], [0.0, -1.0, 0.3]])
    atoms[1, 0, 1] = 3.0  # prompt 0's second coordinate on the upper bound: still nearest true atom 0
    params = me.Params(atoms, biases)
    names = bound_coordinates(prob, params)
    assert names == ["b1-", "p0[1]+ b2-", "none"]
    fits = pd.DataFrame(dict(problem="shared-linear", structure="shared-linear", specification="over", schedule="default",
                             init="near-truth", init_scale=0.5, init_rate=0.25, restarts=4, n=100, replicate=[0, 1, 2],
                             num_prompts=3, bound_coordinates=names, params=format_params(params)))
    row = bounds_table(fits, cfg).iloc[0]
    assert (row["fits"], row["at_bound"]) == (3, 2)
    assert (row["bias_low_shared"], row["bias_low_alone"], row["bias_high"]) == (1, 1, 0)
    assert (row["atom_shared"], row["atom_alone"]) == (1, 0)
