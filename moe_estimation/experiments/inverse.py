"""The inverse bound, measured without statistics (docs/maths.md, *The inverse bound*).

The rate theorems rest on one deterministic inequality between the loss of a mixing measure and the distance
of its regression function from the truth's. For a loss D and a truth G*,

    m(delta) = min over measures G with L' atoms in the box and D(G, G*) = delta  of  ||f_G - f_G*||^2,

the squared L2 norm taken over the input law (here its empirical measure on ``points`` fixed inputs drawn
from it). The theory says m(delta) >= c delta^2 near delta = 0 for the shared structures with D_2 (so a
regression function estimated at n^(-1/2) puts D_2 at n^(-1/2)), and m(delta) = 0 for over-specified
non-shared prompts over a whole range of delta: the set Z = {G : f_G = f_G*} holds measures with equal keys
and values spread about their weighted mean, at a loss of order one.

:func:`inverse_bound` computes m on a grid of delta by a penalised least-squares fit from many starts with the
project's solver: it minimises

    ||f_G - f_G*||^2 + mu ((D(G, G*) - delta) / delta)^2

(the first term as the mean over the inputs of the squared residuals of the noiseless truth, the second as
one residual more, its gradient by autodiff), and keeps the lowest ||f_G - f_G*||^2 among the starts whose
loss met the constraint to a relative ``tolerance``. Half of the starts are uniform over the box (they know
nothing of the truth), half near it at a scale delta (an extra atom of an over-specified fit splits a true
one), so that both the far and the near minimisers are reached.

The Le Cam table turns the same computation on a truth that moves with n (:func:`moe_estimation.prefix.problems.move_truth`:
two true prompts c n^(-beta) as far apart as the preset's) into the lower bound's two-point construction: at
each n and each loss value delta, the measure G' with D(G', G_n) = delta whose regression function is nearest
to G_n's, and its signal-to-noise ratio n ||f_G' - f_G_n||^2 / sigma^2. Where that ratio stays bounded (or
falls) as n grows while delta stays fixed, no data set of size n tells G' from G_n: the data cannot recover
the measure to within delta at any rate. At beta = 0 (a fixed truth) the ratio grows like n.

:func:`run_inverse` (``moe-estimation inverse-bound``) writes both as tables, resumably.
"""

from __future__ import annotations

import dataclasses
import json
import platform
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from .._checks import make_out_dir
from ..prefix.data import fold_key, simulate_rows
from ..prefix.estimator import FitSettings, box, flatten_params, initial_params, prepare_data, residuals_and_jacobian, unflatten_params
from ..prefix.model import predict, true_params
from ..prefix.problems import PRESET_NAMES, merge_factor, move_truth, preset
from .results import CellTable, StudyLock, atomic_write, check_same_study, versions, write_csv
from ..solver import Normal, SolverSettings, is_converged, normal_equations, solve
from ..rates import ols_line
from ..prefix.voronoi import key_value_loss, voronoi_cells, voronoi_loss

INVERSE_LOSSES = ("own", "key_value")


class InverseSettings(NamedTuple):
    """Settings of :func:`inverse_bound` (hashable: a change is a new compilation).

    points: inputs drawn from the problem's input law on which ||f_G - f_G*||^2 is averaged.
    starts: starts per delta, half uniform over the box and half near the truth at scale delta.
    penalty: mu, the weight of the squared relative violation of D(G, G*) = delta.
    tolerance: a start counts (is *feasible*) when |D / delta - 1| <= tolerance at its end.
    smooth: the constraint is solved on the loss smoothed at scale ``smooth * delta``
      (:func:`moe_estimation.prefix.voronoi.voronoi_parts`); feasibility is checked on the loss itself.
    max_steps, ftol, xtol, gtol: the solver's stopping rules (:class:`moe_estimation.solver.SolverSettings`).
    """

    points: int = 2048
    starts: int = 16
    penalty: float = 1e6
    tolerance: float = 1e-2
    smooth: float = 1e-3
    max_steps: int = 2000
    ftol: float = 1e-12
    xtol: float = 1e-12
    gtol: float = 1e-10


def check_inverse_settings(settings: InverseSettings) -> None:
    """``ValueError`` naming the field, the value and the rule."""
    for name in ("points", "starts", "max_steps"):
        v = getattr(settings, name)
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name}: must be an integer >= 1, got {v!r}")
    if settings.starts < 2:
        raise ValueError(f"starts: need at least 2 (half uniform over the box, half near the truth), got {settings.starts}")
    for name in ("penalty", "tolerance", "smooth", "ftol", "xtol", "gtol"):
        v = getattr(settings, name)
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not (np.isfinite(v) and v > 0):
            raise ValueError(f"{name}: must be a finite number > 0, got {v!r}")


def _loss_fn(loss: str):
    if loss not in INVERSE_LOSSES:
        raise ValueError(f"loss: expected one of {INVERSE_LOSSES}, got {loss!r}")
    return voronoi_loss if loss == "own" else key_value_loss


def inputs(problem, points: int, seed: int = 0) -> jax.Array:
    """``(points, d)`` inputs from the problem's input law (row-keyed, as a study's: a longer draw extends a
    shorter one)."""
    X, _ = simulate_rows(problem, fold_key(jax.random.key(seed), "inverse-bound"), points)
    return X


def l2_distance(problem, params, X) -> jax.Array:
    """||f_G - f_G*||^2: the mean over the rows of ``X`` of the squared distance of the two regression functions."""
    diff = predict(problem, params, X) - predict(problem, true_params(problem), X)
    return jnp.mean(jnp.sum(diff**2, axis=-1))


class InverseResult(NamedTuple):
    """Per delta (leading axis): ``m`` (the lowest ||f_G - f_G*||^2 among feasible starts, NaN when none was),
    ``achieved`` (D at that start), ``feasible`` and ``converged`` (how many starts), ``params`` (the minimiser,
    flat; NaN when none), ``m_all`` and ``d_all`` ``(deltas, starts)`` (every start's end)."""

    m: np.ndarray
    achieved: np.ndarray
    feasible: np.ndarray
    converged: np.ndarray
    params: np.ndarray
    m_all: np.ndarray
    d_all: np.ndarray


@partial(jax.jit, static_argnames=("num_prompts", "count"))
def _fresh_starts(problem, key, delta, num_prompts: int, count: int):
    """``count`` flat starts: half uniform over the box, half near the truth at scale delta (an extra atom of an
    over-specified measure splits a true one)."""
    half = count // 2
    fs = FitSettings(num_prompts=num_prompts, init="random", init_scale=1.0)
    near = fs._replace(init="near-truth", init_scale=-1.0, init_rate=-1.0)
    scale = jnp.stack([delta, jnp.zeros_like(delta)])
    return jnp.concatenate([
        jax.vmap(lambda k: flatten_params(initial_params(k, problem, fs, 1)))(jax.random.split(jax.random.fold_in(key, 0), half)),
        jax.vmap(lambda k: flatten_params(initial_params(k, problem, near, 1, scale)))(
            jax.random.split(jax.random.fold_in(key, 1), count - half)),
    ])


def shrink(problem, theta, ratio: float, num_prompts: int, multi_power: float = 1.0) -> np.ndarray:
    """The measure ``theta`` (flat) brought toward the truth so that its loss scales by about ``ratio``: each
    cell's weight error and each fitted atom's offset from the true atom of its Voronoi cell scaled by
    ``ratio``, the offsets of atoms in a cell holding several by ``ratio ** multi_power`` (1/2 for D_2, whose
    multi-atom cells count squared distances; 1 for D_{1,1}), the weights inside a cell keeping their
    proportions. A measure of the zero set of over-specified non-shared prompts (equal keys, values spread
    about their weighted mean) stays in it. The start of the next, smaller delta."""
    p = unflatten_params(jnp.asarray(theta), num_prompts, problem.atom_dim)
    atoms, w = np.asarray(p.atoms), np.exp(np.asarray(p.biases))
    true_atoms, true_w = np.asarray(problem.true_atoms), np.exp(np.asarray(problem.true_biases))
    cell = np.asarray(voronoi_cells(p.atoms, problem.true_atoms))
    W = np.bincount(cell, weights=w, minlength=len(true_w))
    several = np.bincount(cell, minlength=len(true_w))[cell] > 1
    scale = np.where(several, ratio ** multi_power, ratio)[:, None]
    new_atoms = true_atoms[cell] + scale * (atoms - true_atoms[cell])
    new_w = w * (true_w[cell] + ratio * (W[cell] - true_w[cell])) / W[cell]
    lower, upper = (np.asarray(a) for a in box(problem, num_prompts, atoms.dtype))
    return np.clip(np.concatenate([new_atoms.ravel(), np.log(new_w)]), lower, upper)


@partial(jax.jit, static_argnames=("num_prompts", "loss", "settings"))
def _solve_delta(problem, X, starts, delta, num_prompts: int, loss: str, settings: InverseSettings):
    """Every start of one delta: (theta, m, D, status) per start."""
    M = X.shape[0]
    data = prepare_data(problem, X, predict(problem, true_params(problem), X), jnp.full(M, M ** -0.5, X.dtype))
    fit_part = normal_equations(lambda d, t: residuals_and_jacobian(problem, num_prompts, d, t), data)
    D_of = _loss_fn(loss)
    D = lambda t: D_of(problem, unflatten_params(t, num_prompts, problem.atom_dim))
    # the constraint is solved on the loss with its norms and absolute values smoothed at a scale a little
    # below delta (at their kinks a Gauss-Newton step stalls); the loss reported, and checked against the
    # tolerance, is the loss itself
    D_smooth = lambda t: D_of(problem, unflatten_params(t, num_prompts, problem.atom_dim), smooth=settings.smooth * delta)

    def linearize(theta, root_mu):
        base = fit_part(theta)
        value, grad = jax.value_and_grad(D_smooth)(theta)
        c, gc = root_mu * (value - delta) / delta, root_mu * grad / delta
        return Normal(base.F + 0.5 * c**2, base.g + c * gc, base.H + jnp.outer(gc, gc))

    lower, upper = box(problem, num_prompts, X.dtype)
    solver = SolverSettings(max_steps=settings.max_steps, ftol=settings.ftol, xtol=settings.xtol, gtol=settings.gtol)

    def one(theta):  # continuation: the penalty raised by 100 a stage up to mu, each stage from the last one's end
        for mu in penalties(settings.penalty):
            sol = solve(lambda t: linearize(t, jnp.sqrt(jnp.asarray(mu, X.dtype))), theta, lower, upper, solver)
            theta = sol.value
        return sol

    sol = jax.lax.map(one, starts)
    m = jax.vmap(lambda t: 2 * fit_part(t).F)(sol.value)
    return sol.value, m, jax.vmap(D)(sol.value), sol.status


def penalties(mu: float) -> tuple[float, ...]:
    """The continuation's penalties: mu, mu / 100, ... down to 1 or just above, smallest first."""
    out = [float(mu)]
    while out[-1] / 100 >= 1:
        out.append(out[-1] / 100)
    return tuple(reversed(out))


def inverse_bound(problem, deltas, *, num_prompts: int | None = None, loss: str = "own",
                  settings: InverseSettings = InverseSettings(), seed: int = 0) -> InverseResult:
    """m(delta) for each of ``deltas`` (module docstring): the lowest ||f_G - f_G*||^2 over measures G with
    ``num_prompts`` atoms (default L: exactly specified) and loss ``loss`` (``own``: the structure's own D_2 or
    D_{1,1}; ``key_value``: D_2 on the (key, value) atoms) equal to delta. Deterministic given ``seed``.

    The deltas are solved from the largest down. The largest starts from ``settings.starts`` fresh points (half
    uniform over the box, half near the truth); each smaller one from half as many fresh points and, for the
    other half, the previous delta's best ends brought toward the truth by the ratio of the two deltas
    (:func:`shrink`, the multi-atom cells' offsets by the square root of that ratio for a D_2), nearly feasible
    already: a minimiser found at one scale is carried down the grid."""
    check_inverse_settings(settings)
    _loss_fn(loss)
    L = problem.num_true_prompts
    num_prompts = L if num_prompts is None else num_prompts
    if isinstance(num_prompts, bool) or not isinstance(num_prompts, (int, np.integer)) or num_prompts < L:
        raise ValueError(f"num_prompts: must be an integer >= L = {L}, got {num_prompts!r}")
    deltas = np.asarray(deltas, dtype=float)
    if deltas.ndim != 1 or deltas.size < 1 or not np.all(np.isfinite(deltas) & (deltas > 0)):
        raise ValueError(f"deltas: expected a non-empty list of finite numbers > 0, got {np.asarray(deltas).tolist()}")
    X = inputs(problem, settings.points, seed)
    key = fold_key(jax.random.key(seed), "inverse-starts", num_prompts, loss)
    S = settings.starts
    rows, previous = {}, None
    for i in np.argsort(-deltas, kind="stable"):  # largest first
        delta = deltas[i]
        d = jnp.asarray(delta, problem.dtype)
        if previous is None:
            starts = np.asarray(_fresh_starts(problem, jax.random.fold_in(key, i), d, num_prompts, S))
        else:
            theta_p, score_p, delta_p = previous
            power = 1.0 if loss == "own" and problem.structure == "non-shared" else 0.5  # D_{1,1} or D_2
            carried = [shrink(problem, theta_p[j], delta / delta_p, num_prompts, power)
                       for j in np.argsort(score_p)[: S // 2]]
            fresh = np.asarray(_fresh_starts(problem, jax.random.fold_in(key, i), d, num_prompts, S - len(carried)))
            starts = np.concatenate([np.stack(carried), fresh])
        theta, m, D, status = (np.asarray(a) for a in _solve_delta(
            problem, X, jnp.asarray(starts, problem.dtype), d, num_prompts, loss, settings))
        ok = np.isfinite(m) & (np.abs(D / delta - 1) <= settings.tolerance)
        best = int(np.argmin(np.where(ok, m, np.inf))) if ok.any() else None
        rows[i] = (np.nan if best is None else m[best], np.nan if best is None else D[best], int(ok.sum()),
                   int(np.sum(is_converged(status))),
                   np.full(theta.shape[1], np.nan) if best is None else theta[best], m, D)
        # carried down: the feasible ends by m, then the others by how far their loss missed delta
        with np.errstate(divide="ignore", invalid="ignore"):
            miss = np.abs(np.log(D / delta))
        score = np.where(ok, m, 1e10 + np.where(np.isfinite(miss), miss, np.inf))
        previous = (theta, score, delta)
    return InverseResult(*(np.array(c) for c in zip(*(rows[i] for i in range(len(deltas))))))


def inverse_slope(deltas, m, floor: float) -> float:
    """The OLS slope of log m on log delta over the deltas whose m is above ``floor`` (NaN with fewer than two):
    2 where m is of order delta^2."""
    deltas, m = np.asarray(deltas, float), np.asarray(m, float)
    keep = np.isfinite(m) & (m > floor)
    if keep.sum() < 2:
        return float("nan")
    return ols_line(np.log(deltas[keep]), np.log(m[keep]))[0]


def signal_scale(problem, points: int = 2048, seed: int = 0) -> float:
    """||f_G* - its mean||^2 over the inputs: the scale against which an m counts as zero."""
    X = inputs(problem, points, seed)
    f = predict(problem, true_params(problem), X)
    return float(jnp.mean(jnp.sum((f - f.mean(0)) ** 2, axis=-1)))


# ------------------------------------------------------------------------------------------------
# the runner: tables on disk, resumable

INVERSE_COLUMNS = ["problem", "structure", "specification", "num_prompts", "loss", "delta", "achieved", "m",
                   "m_over_delta2", "feasible", "converged", "starts", "params"]
LE_CAM_COLUMNS = ["problem", "structure", "loss", "beta", "c", "n", "separation_factor", "noise_var", "delta",
                  "achieved", "m", "snr", "feasible", "converged", "starts", "params", "true_params"]
SUMMARY_COLUMNS = ["problem", "structure", "specification", "loss", "window", "slope", "points", "zeros",
                   "m_over_delta2_min", "m_over_delta2_at_smallest", "zero_floor", "note"]


@dataclasses.dataclass(frozen=True)
class InverseStudy:
    """What ``moe-estimation inverse-bound`` computes (every field is written to config.json; a resume under
    other values is refused).

    problems: preset names. specifications: ``exact`` (L' = L) and ``over`` (L' = L + 1). losses: ``own``
    and ``key_value``. deltas: the grid of loss values. window: the local slope of log m on log delta is fitted
    over the deltas at or below it. settings: :class:`InverseSettings`. seed: of the inputs and the starts.
    le_cam_ns, le_cam_cs, le_cam_betas, le_cam_deltas: the Le Cam table's sample sizes, scales c and exponents
    beta of the moving truth (beta = 0: the fixed truth, for contrast) and loss values (own loss, exactly
    specified); empty ``le_cam_ns``: no Le Cam table."""

    problems: tuple = ("non-shared", "shared-linear", "shared-nonlinear")
    specifications: tuple = ("exact", "over")
    losses: tuple = INVERSE_LOSSES
    deltas: tuple = tuple(float(x) for x in np.geomspace(1e-3, 1.0, 7))
    window: float = 1e-2
    settings: InverseSettings = InverseSettings()
    seed: int = 0
    le_cam_ns: tuple = (1000, 10000, 100000, 1000000)
    le_cam_cs: tuple = (1.0, 0.25)
    le_cam_betas: tuple = (0.0, 0.5)
    le_cam_deltas: tuple = (0.01, 0.1, 1.0)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["settings"] = self.settings._asdict()
        return d


def check_inverse_study(study: InverseStudy) -> InverseStudy:
    """Validate every field (``ValueError`` naming it, the value and the rule); returns the study."""
    check_inverse_settings(study.settings)
    if not study.problems or any(p not in PRESET_NAMES for p in study.problems) or len(set(study.problems)) < len(study.problems):
        raise ValueError(f"--problem: expected distinct preset names from {PRESET_NAMES}, got {list(study.problems)}")
    if not study.specifications or any(s not in ("exact", "over") for s in study.specifications):
        raise ValueError(f"--specifications: expected names from ('exact', 'over'), got {list(study.specifications)}")
    if not study.losses or any(x not in INVERSE_LOSSES for x in study.losses):
        raise ValueError(f"--losses: expected names from {INVERSE_LOSSES}, got {list(study.losses)}")
    for name, values in (("--deltas", study.deltas), ("--le-cam-deltas", study.le_cam_deltas)):
        v = np.asarray(values, dtype=float)
        if v.ndim != 1 or not v.size or not np.all(np.isfinite(v) & (v > 0)) or len(set(v.tolist())) < v.size:
            raise ValueError(f"{name}: expected distinct finite numbers > 0, got {list(values)}")
    if not (np.isfinite(study.window) and study.window > 0):
        raise ValueError(f"--window: must be a finite number > 0, got {study.window!r}")
    for n in study.le_cam_ns:
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"--le-cam-ns: every sample size must be an integer >= 1, got {n!r}")
    for name, values, ok in (("--le-cam-cs", study.le_cam_cs, lambda x: x > 0),
                             ("--le-cam-betas", study.le_cam_betas, lambda x: x >= 0)):
        if study.le_cam_ns and (not values or not all(np.isfinite(x) and ok(x) for x in values)):
            raise ValueError(f"{name}: expected finite numbers ({'> 0' if name.endswith('cs') else '>= 0'}), got {list(values)}")
    if isinstance(study.seed, bool) or not isinstance(study.seed, (int, np.integer)) or not 0 <= study.seed < 2**32:
        raise ValueError(f"--seed: must be an integer in [0, 2^32), got {study.seed!r}")
    return study


def zero_floor(problem, settings: InverseSettings, seed: int = 0) -> float:
    """m at or below this counts as zero: 1e-16 of the truth's own signal (:func:`signal_scale`), far below any
    positive m the grid reaches (1e-10 and up at delta = 1e-3) and far above the solver's zeros (1e-30)."""
    return 1e-16 * signal_scale(problem, settings.points, seed)


def inverse_summary(table, study: InverseStudy, floors: dict):
    """One row per (problem, specification, loss): the slope of log m on log delta over the deltas at or below
    ``study.window`` whose m is above the zero floor (theory: 2 for the shared structures, by m of order
    delta^2), how many of those deltas have m at zero (the zero set), and the smallest m / delta^2 over the
    window (bounded away from 0 when m >= c delta^2)."""
    out = []
    for (prob, spec, loss), g in table.groupby(["problem", "specification", "loss"], sort=False):
        g = g[g["delta"] <= study.window].sort_values("delta")
        floor = floors[prob]
        positive = g[g["m"] > floor]
        zeros = int((g["m"] <= floor).sum())
        slope = inverse_slope(positive["delta"], positive["m"], floor)
        note = ""
        if zeros == len(g) and len(g):
            note = "m is zero at every delta of the window: the zero set"
        elif len(positive) < 2:
            note = "fewer than two positive m in the window: no slope"
        ratio = (positive["m"] / positive["delta"] ** 2)
        out.append(dict(problem=prob, structure=g["structure"].iloc[0] if len(g) else "", specification=spec, loss=loss,
                        window=study.window, slope=slope, points=len(positive), zeros=zeros,
                        m_over_delta2_min=float(ratio.min()) if len(ratio) else np.nan,
                        m_over_delta2_at_smallest=float(ratio.iloc[0]) if len(ratio) else np.nan,
                        zero_floor=floor, note=note))
    return pd.DataFrame(out, columns=SUMMARY_COLUMNS)


def _texts(params) -> list[str]:
    """Each minimiser's flat parameters (atoms row by row, then biases) as text at full precision."""
    return [" ".join(f"{x:.17g}" for x in th) for th in params]


def run_inverse(study: InverseStudy, out, *, log=print, progress: bool = True):
    """Compute the inverse bound (and the Le Cam table) of ``study`` into directory ``out``: ``inverse.csv`` (one
    row per problem, specification, loss and delta), ``inverse_summary.csv`` (:func:`inverse_summary`),
    ``le_cam.csv`` (one row per problem, beta, c, n and delta) and ``config.json``. Each (problem,
    specification, loss) and each Le Cam truth is written when done; a run started again on the same ``out``
    resumes, and refuses an ``out`` made with other settings. Returns ``(inverse, summary, le_cam)``."""
    check_inverse_study(study)
    if not jax.config.jax_enable_x64:
        raise ValueError("run_inverse: the inverse bound runs in float64; call jax.config.update('jax_enable_x64', True) first")
    out = make_out_dir(out)
    with StudyLock(out, log=log):
        check_same_study(out, study.to_dict(), what="inverse-bound run", log=log)
        atomic_write(out / "config.json", json.dumps(dict(study=study.to_dict(), versions=versions(),
                                                          platform=platform.platform()), indent=2))
        main = CellTable(out / "inverse.csv", INVERSE_COLUMNS, ["problem", "specification", "loss"], len(study.deltas))
        lecam = CellTable(out / "le_cam.csv", LE_CAM_COLUMNS, ["problem", "beta", "c", "n"], len(study.le_cam_deltas))
        done, done_lc = main.load(), lecam.load()
        for t in (main, lecam):
            if t.problems:
                log(f"{t.path}: " + "; ".join(t.problems))
        todo = [(p, s, l) for p in study.problems for s in study.specifications for l in study.losses
                if (p, s, l) not in done]
        lc_todo = [(p, b, c, n) for p in study.problems for b in study.le_cam_betas for c in study.le_cam_cs
                   for n in study.le_cam_ns if (p, b, c, n) not in done_lc]
        bar = tqdm(total=len(todo) + len(lc_todo), disable=not progress, unit="curve")
        problems = {name: preset(name) for name in study.problems}
        for prob_name, spec, loss in todo:
            prob = problems[prob_name]
            L = prob.num_true_prompts + (1 if spec == "over" else 0)
            bar.set_description(f"{prob_name} {spec} {loss}")
            res = inverse_bound(prob, study.deltas, num_prompts=L, loss=loss, settings=study.settings, seed=study.seed)
            main.add(dict(problem=prob_name, structure=prob.structure, specification=spec, num_prompts=L, loss=loss,
                          delta=list(study.deltas), achieved=res.achieved, m=res.m,
                          m_over_delta2=res.m / np.asarray(study.deltas) ** 2, feasible=res.feasible,
                          converged=res.converged, starts=study.settings.starts, params=_texts(res.params)))
            bar.update(1)
        cache = {}
        for prob_name, beta, c, n in lc_todo:
            prob = problems[prob_name]
            factor = merge_factor(n, beta, c)
            bar.set_description(f"Le Cam {prob_name} beta={beta:g} c={c:g} n={n}")
            if (prob_name, factor) not in cache:  # beta = 0: one truth for every n
                cache[prob_name, factor] = inverse_bound(move_truth(prob, factor), study.le_cam_deltas, loss="own",
                                                         settings=study.settings, seed=study.seed)
            res = cache[prob_name, factor]
            lecam.add(dict(problem=prob_name, structure=prob.structure, loss="own", beta=float(beta), c=float(c), n=int(n),
                           separation_factor=factor, noise_var=prob.noise_var, delta=list(study.le_cam_deltas),
                           achieved=res.achieved, m=res.m, snr=n * res.m / prob.noise_var, feasible=res.feasible,
                           converged=res.converged, starts=study.settings.starts, params=_texts(res.params),
                           true_params=" ".join(f"{x:.17g}" for x in np.asarray(flatten_params(true_params(
                               move_truth(prob, factor)))))))
            bar.update(1)
        bar.close()
        table = main.frame()
        floors = {name: zero_floor(problems[name], study.settings, study.seed) for name in study.problems}
        summary = inverse_summary(table, study, floors)
        write_csv(out / "inverse_summary.csv", summary)
        return table, summary, lecam.frame()
