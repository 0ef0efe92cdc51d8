"""Voronoi losses declared as data (docs/maths.md, *The lab*).

A loss between a fitted mixture and the truth is declared by:

- the **blocks** whose concatenation is a component's atom, on which the Voronoi cells are drawn: ``gate`` (the
  part :meth:`Gate.atom` names of the gate's canonical parameters (:meth:`Gate.canonical`: a softmax's are
  identified only up to a common shift), the slopes w_k without the bias), ``gate.bias`` (the canonical bias),
  ``gate.NAME`` (a piece of the gate's atom it names, :meth:`Gate.blocks`: ``mean`` and ``variance`` of a
  Gaussian gate), ``expert`` (the expert's canonical parameters, :meth:`Expert.canonical`: a one-neuron ReLU expert's scale, a
  tanh expert's sign), ``expert.NAME`` (a piece the expert names, :meth:`Expert.blocks`: ``slope`` and
  ``intercept`` of a linear expert; ``scale``, ``slope``, ``intercept`` of a act(b^T x + c)), ``variance``
  (exp(log_var), the Gaussian likelihoods'); with a prompt structure (the prefix model's assembly), ``prompt``,
  ``prompt.key`` and ``prompt.value`` (p, p^K, p^V), while ``gate`` is then the key k(p) and ``expert`` the value
  v(p): the prefix model's own losses are D_{1,r} on (``prompt.key``, ``prompt.value``) and D_2 on ``prompt``, its
  yardstick D_2 on (``gate``, ``expert``);
- the **weight** of an atom: the gate's :meth:`Gate.atom_weight` (exp(b) for softmax and Laplace gates,
  sigmoid(b) for sigmoid ones), or none (``weighted = False``: every atom's terms count with factor 1);
- the **weight-sum term** sum_j |sum_{i in V_j} w_i - w*_j|: over every cell (``weight_sum = "all"``), over the
  cells holding several fitted atoms only (``"multi"``), or left out (``"none"``). Only ``"all"`` counts an
  empty cell (w*_j); with ``"multi"`` or ``"none"`` a fit that leaves a true atom without any fitted atom near it
  can score 0 (the published losses of that form are meant for fits that cover every true atom; read such a loss
  beside one that counts empty cells);
- the **terms**: each a group of blocks measured together, ||Delta_i on those blocks||, raised to an exponent
  that depends on the size m of its cell: ``single`` where m = 1 and ``multi`` where m > 1, a number, or
  ``"r"`` / ``"r/2"`` for r(m) and r(m)/2 read from ``r_of_m`` (r(2), r(3), ...: (4, 6) by default, the
  over-specified Gaussian-mixture exponents of the linear-expert theory). A cell larger than the table makes the
  loss NaN, never a finite number. The loss is the weight-sum term plus sum_terms sum_i w_i ||Delta_i||^e(m).

The published losses need four more choices:

- ``experts``: ``"canonical"`` (the default: the experts' canonical parameters, :meth:`Expert.canonical`) or
  ``"raw"`` (the parameters as the fit holds them: a ReLU expert's scale then counts, as in a loss written on the
  raw (kappa, eta) of a source); ``gates`` the same for the gates (:meth:`Gate.canonical`; raw: a softmax's
  parameters as its pinned reference leaves them, as a source's code compares them);
- ``cell_distance``: the cells by the Euclidean distance of the concatenated atoms (``"euclidean"``, the default)
  or by the sum of the blocks' Euclidean distances (``"blocks"``: the sum of absolute differences when every
  block is a number, as the released code of two published studies draws its cells);
- a term's ``single`` or ``multi`` may be ``"none"``: the term is not counted in those cells (a bias measured in
  cells of one atom only), and its ``cells`` (indices of true atoms) restrict it to the cells of those atoms (a
  loss whose exponents differ from one true atom to another);
- ``kind = "sum"``: the sum of the ``losses`` declared in it, each its own cells, weights and weight-sum term (a
  loss whose shared and routed parts differ in form).

Two kinds are shorthands for the package's own losses (and keep their part-by-part breakdown,
:func:`moe_estimation.prefix.voronoi.voronoi_parts`):

- ``d2``: one term on the whole atom, exponents 1 and 2, weighted, every weight-sum term (D_2);
- ``d1r``: two terms, the first block and the rest, exponent ``r`` in every cell (D_{1,r}; the non-shared prefix
  model's, with the key block first).

``kind = "terms"`` takes ``terms`` as declared; a test checks that the terms spelling D_2 and D_{1,r} give the
shorthands' numbers to 1e-12, and both equal the prefix model's losses on the same atoms.

With shared experts (:class:`moe_estimation.lab.Assembly` ``shared``), ``part`` says which components the loss
measures: ``routed`` (the default), ``shared`` (atoms from the shared experts' blocks, ``expert`` and
``variance``; weights omega = softmax(shared_logit); ``gate`` blocks are skipped, a shared expert has no gate),
or ``both``: the sum of the two, each with its own cells and weight-sum term (the DeepSeekMoE losses' form).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from ..prefix.voronoi import identified_parts, voronoi_cells, voronoi_parts
from .model import Assembly, Mixture

BLOCKS = ("gate", "gate.bias", "expert", "variance")  # and expert.NAME for the pieces an expert names
PROMPT_BLOCKS = ("prompt", "prompt.key", "prompt.value")  # of an assembly with a prompt structure
KINDS = ("d2", "d1r", "terms", "sum")
PARTS = ("routed", "shared", "both")
WEIGHT_SUMS = ("all", "multi", "none")
CELL_EXPONENTS = ("r", "r/2")
EXPERT_FORMS = ("canonical", "raw")
CELL_DISTANCES = ("euclidean", "blocks")


def _is_block(name) -> bool:
    return isinstance(name, str) and (name in BLOCKS + PROMPT_BLOCKS or (name.startswith("expert.") and len(name) > 7)
                                      or (name.startswith("gate.") and len(name) > 5))


def _exponent_ok(e, sized: bool) -> bool:
    if isinstance(e, str):
        return e == "none" or (sized and e in CELL_EXPONENTS)
    return not isinstance(e, bool) and isinstance(e, (int, float)) and np.isfinite(e) and e > 0


@dataclasses.dataclass(frozen=True)
class Term:
    """One term of a declared loss: ||Delta on ``blocks||`` raised to ``single`` in a cell holding one fitted atom
    and to ``multi`` in a cell holding m > 1 (a number, ``"r"`` for r(m) or ``"r/2"``; ``"none"``: not counted in
    such cells); ``cells``: the true atoms (indices) whose cells it is counted in (default: every one)."""

    blocks: tuple
    single: float | str = 1.0
    multi: float | str = 2.0
    cells: tuple | None = None

    def __post_init__(self):
        blocks = tuple(self.blocks) if isinstance(self.blocks, (list, tuple)) else self.blocks
        object.__setattr__(self, "blocks", blocks)
        if not isinstance(blocks, tuple) or not blocks or not all(_is_block(b) for b in blocks) \
                or len(set(blocks)) < len(blocks):
            raise ValueError(f"terms.blocks: expected distinct names from {BLOCKS}, gate.NAME or expert.NAME, got "
                             f"{self.blocks!r}")
        if not _exponent_ok(self.single, sized=False):
            raise ValueError(f"terms.single: the exponent in a cell of one atom must be a finite number > 0 or 'none', "
                             f"got {self.single!r}")
        if not _exponent_ok(self.multi, sized=True):
            raise ValueError(f"terms.multi: the exponent in a cell of several atoms must be a finite number > 0, 'r', "
                             f"'r/2' or 'none', got {self.multi!r}")
        if self.single == "none" and self.multi == "none":
            raise ValueError("terms.single, terms.multi: a term counted in no cell; give at least one exponent")
        if self.cells is not None:
            cells = tuple(self.cells) if isinstance(self.cells, (list, tuple)) else self.cells
            if not isinstance(cells, tuple) or not cells or not all(
                    isinstance(c, (int, np.integer)) and not isinstance(c, bool) and c >= 0 for c in cells) \
                    or len(set(cells)) < len(cells):
                raise ValueError(f"terms.cells: expected distinct indices >= 0 of true atoms, got {self.cells!r}")
            object.__setattr__(self, "cells", tuple(int(c) for c in cells))


@dataclasses.dataclass(frozen=True)
class VoronoiLoss:
    """A Voronoi loss from parts (module docstring): ``blocks`` (the cells' atom, in order), ``kind`` (``d2``,
    ``d1r`` with exponent ``r``, or ``terms``), ``part`` (routed, shared or both); for ``kind = "terms"``:
    ``terms`` (:class:`Term` s), ``weighted``, ``weight_sum`` and ``r_of_m`` (r(2), r(3), ...)."""

    blocks: tuple = ("gate", "expert")
    kind: str = "d2"
    r: float = 1.0
    part: str = "routed"
    terms: tuple = ()
    weighted: bool = True
    weight_sum: str = "all"
    r_of_m: tuple = (4.0, 6.0)
    experts: str = "canonical"
    cell_distance: str = "euclidean"
    losses: tuple = ()
    gates: str = "canonical"

    def __post_init__(self):
        if self.kind == "sum":
            self._check_sum()
            return
        if self.losses:
            raise ValueError(f"losses: only a loss of kind 'sum' takes losses (kind {self.kind!r})")
        for name in ("experts", "gates"):
            if getattr(self, name) not in EXPERT_FORMS:
                raise ValueError(f"{name}: expected one of {EXPERT_FORMS}, got {getattr(self, name)!r}")
        if self.cell_distance not in CELL_DISTANCES:
            raise ValueError(f"cell_distance: expected one of {CELL_DISTANCES}, got {self.cell_distance!r}")
        if not isinstance(self.blocks, tuple) or not self.blocks or not all(_is_block(b) for b in self.blocks) \
                or len(set(self.blocks)) < len(self.blocks):
            raise ValueError(f"blocks: expected distinct names from {BLOCKS}, gate.NAME or expert.NAME, got {self.blocks!r}")
        if self.kind not in KINDS:
            raise ValueError(f"kind: expected one of {KINDS}, got {self.kind!r}")
        if self.kind == "d1r" and len(self.blocks) < 2:
            raise ValueError("blocks: a d1r loss cuts the atom after its first block; give at least two")
        if isinstance(self.r, bool) or not isinstance(self.r, (int, float)) or not (np.isfinite(self.r) and self.r >= 1):
            raise ValueError(f"r: the exponent of a d1r loss must be a finite number >= 1, got {self.r!r}")
        if self.part not in PARTS:
            raise ValueError(f"part: expected one of {PARTS}, got {self.part!r}")
        if self.part != "routed" and all(b.startswith(("gate", "prompt")) for b in self.blocks):
            raise ValueError("blocks: a shared expert has no gate; a loss of the shared part needs 'expert' or 'variance'")
        if self.part != "routed" and self.kind == "d1r" and len([b for b in self.blocks if not b.startswith("gate")]) < 2:
            raise ValueError("blocks: a d1r loss of the shared part cuts its atom after the first of 'expert' and "
                             "'variance'; give both")
        if self.kind == "terms":
            terms = tuple(t if isinstance(t, Term) else Term(**t) if isinstance(t, dict) else t for t in self.terms)
            if not terms or not all(isinstance(t, Term) for t in terms):
                raise ValueError(f"terms: a loss of kind 'terms' needs one or more Term(blocks, single, multi), got "
                                 f"{self.terms!r}")
            object.__setattr__(self, "terms", terms)
            if self.part != "routed" and all(b.startswith(("gate", "prompt")) for t in terms for b in t.blocks):
                raise ValueError("terms: a shared expert has no gate; a loss of the shared part needs a term on "
                                 "'expert' or 'variance' blocks")
        elif self.terms:
            raise ValueError(f"terms: only a loss of kind 'terms' takes terms (kind {self.kind!r} fixes its own)")
        if not isinstance(self.weighted, bool):
            raise ValueError(f"weighted: expected true or false, got {self.weighted!r}")
        if self.weight_sum not in WEIGHT_SUMS:
            raise ValueError(f"weight_sum: expected one of {WEIGHT_SUMS}, got {self.weight_sum!r}")
        r_of_m = tuple(self.r_of_m) if isinstance(self.r_of_m, (list, tuple)) else self.r_of_m
        if not isinstance(r_of_m, tuple) or not all(not isinstance(v, str) and _exponent_ok(v, sized=False) for v in r_of_m):
            raise ValueError(f"r_of_m: expected r(2), r(3), ... as finite numbers > 0, got {self.r_of_m!r}")
        object.__setattr__(self, "r_of_m", tuple(float(v) for v in r_of_m))
        if self.kind != "terms" and (not self.weighted or self.weight_sum != "all"):
            raise ValueError(f"weighted, weight_sum: kind {self.kind!r} is weighted with every weight-sum term; declare "
                             "kind 'terms' to change them")
        if self.kind != "terms" and (self.experts != "canonical" or self.gates != "canonical"
                                     or self.cell_distance != "euclidean"):
            raise ValueError(f"experts, gates, cell_distance: kind {self.kind!r} compares canonical parameters on Euclidean "
                             "cells; declare kind 'terms' to change them")

    def _check_sum(self):
        own = [f.name for f in dataclasses.fields(self) if f.name not in ("kind", "losses", "blocks", "part")
               and getattr(self, f.name) != f.default]
        if own:
            raise ValueError(f"{own[0]}: a loss of kind 'sum' takes its settings in its losses, got {own[0]} = "
                             f"{getattr(self, own[0])!r}")
        losses = tuple(VoronoiLoss.from_table(v) if isinstance(v, dict) else v for v in self.losses) \
            if isinstance(self.losses, (list, tuple)) else self.losses
        if not isinstance(losses, tuple) or not losses or not all(isinstance(v, VoronoiLoss) for v in losses):
            raise ValueError(f"losses: a loss of kind 'sum' adds one or more VoronoiLoss declarations, got {self.losses!r}")
        if any(v.kind == "sum" for v in losses):
            raise ValueError("losses: a sum of sums; declare its summands directly")
        object.__setattr__(self, "losses", losses)
        if self.terms:
            raise ValueError("terms: a loss of kind 'sum' takes its terms in its losses")
        object.__setattr__(self, "blocks", tuple(dict.fromkeys(b for v in losses for b in v.blocks)))
        parts = {v.part for v in losses}
        object.__setattr__(self, "part", "routed" if parts == {"routed"} else "shared" if parts == {"shared"} else "both")

    def summands(self) -> tuple:
        """The losses this one adds (itself unless of kind ``sum``)."""
        return self.losses if self.kind == "sum" else (self,)
    TABLE_KEYS = ("blocks", "kind", "r", "part", "terms", "weighted", "weight_sum", "r_of_m", "experts", "gates",
                  "cell_distance", "losses")

    @classmethod
    def from_table(cls, table) -> "VoronoiLoss":
        """The loss a configuration's table declares (keys :attr:`TABLE_KEYS`; ``terms`` a list of tables
        ``{ blocks, single, multi }``, which make the kind ``terms`` unless another is given). ``ValueError`` naming
        the key for anything else."""
        if not isinstance(table, dict) or set(table) - set(cls.TABLE_KEYS):
            raise ValueError(f"expected a table with keys from {list(cls.TABLE_KEYS)}, got {table!r}")
        if "losses" in table:
            losses = table["losses"]
            if not isinstance(losses, list) or not all(isinstance(v, dict) for v in losses):
                raise ValueError(f"losses: expected a list of loss tables, got {losses!r}")
            extra = sorted(set(table) - {"losses", "kind"})
            if extra or table.get("kind", "sum") != "sum":
                raise ValueError(f"losses: a sum of losses takes only kind = 'sum' and losses; got {sorted(table)}")
            summands = []
            for i, v in enumerate(losses):
                try:
                    summands.append(cls.from_table(v))
                except ValueError as e:
                    raise ValueError(f"losses[{i}].{e}") from None
            return cls(kind="sum", losses=tuple(summands))
        terms = table.get("terms", [])
        if not isinstance(terms, list) or not all(isinstance(t, dict) and set(t) <= {"blocks", "single", "multi", "cells"}
                                                  for t in terms):
            raise ValueError(f"terms: expected a list of tables {{ blocks, single, multi, cells }}, got {terms!r}")
        blocks = table.get("blocks", ["gate", "expert"])
        r = table.get("r", 1.0)
        try:
            return cls(blocks=tuple(blocks) if isinstance(blocks, list) else blocks,
                       kind=table.get("kind", "terms" if terms else "d2"),
                       r=float(r) if isinstance(r, int) and not isinstance(r, bool) else r,
                       part=table.get("part", "routed"), terms=tuple(terms), weighted=table.get("weighted", True),
                       weight_sum=table.get("weight_sum", "all"), r_of_m=table.get("r_of_m", (4.0, 6.0)),
                       experts=table.get("experts", "canonical"), gates=table.get("gates", "canonical"),
                       cell_distance=table.get("cell_distance", "euclidean"))
        except TypeError as e:
            raise ValueError(str(e)) from None

    @property
    def largest_cell(self) -> int | None:
        """The largest cell this loss can score: len(r_of_m) + 1 when a term's exponent is r(m) or r(m)/2, else
        None (any size)."""
        if self.kind == "sum":
            tops = [v.largest_cell for v in self.losses if v.largest_cell is not None]
            return min(tops) if tops else None
        sized = any(t.multi in CELL_EXPONENTS for t in self.declared_terms())
        return len(self.r_of_m) + 1 if sized else None

    def check_cells(self, atoms: int, what: str = "the fit") -> None:
        """Refuse (``ValueError`` naming ``r_of_m``) a fit of ``atoms`` components, every one of which can fall in
        one cell, when r(m) is not declared up to m = ``atoms``."""
        top = self.largest_cell
        if top is not None and atoms > top:
            raise ValueError(f"r_of_m: {what} has {atoms} components, and all of them can fall in one cell; r_of_m "
                             f"declares r(m) for m = 2 .. {top} only (give {atoms - 1} values, r(2) .. r({atoms}))")

    def declared_terms(self) -> tuple:
        """The terms of this loss (for ``d2`` and ``d1r``, the terms that spell them)."""
        if self.kind == "terms":
            return self.terms
        if self.kind == "d2":
            return (Term(self.blocks, 1.0, 2.0),)
        return (Term(self.blocks[:1], self.r, self.r), Term(self.blocks[1:], self.r, self.r))

    def _pieces(self, model: Assembly, m: Mixture, shared: bool) -> tuple[jnp.ndarray, dict]:
        """(weights (K,), {block name: (K, width)}) of the routed or the shared components."""
        names = list(dict.fromkeys(self.blocks + tuple(b for t in self.declared_terms() for b in t.blocks)))
        if "variance" in names and not model.has_variances:
            raise ValueError("blocks: 'variance' is a block of the Gaussian likelihoods' mixtures; least squares has none")
        structured = m
        m = model.effective(m)  # with a prompt structure: the gate (k(p), b) and the expert v(p)
        expert = model.shared if shared else model.expert
        params = m.shared_expert if shared else m.expert
        canon = expert.canonical(params, model.d_out) if self.experts == "canonical" else params
        named = expert.blocks(model.d, model.d_out)
        pieces = {"expert": canon, "variance": jnp.exp(m.shared_log_var if shared else m.log_var)[:, None]}
        for b in names:
            if b.startswith("expert."):
                if b[7:] not in named:
                    raise ValueError(f"blocks: {b!r} is no piece of the {expert.name} expert; it names "
                                     f"{sorted('expert.' + k for k in named) or 'none'}")
                pieces[b] = canon[:, named[b[7:]]]
        if shared:
            return jax.nn.softmax(m.shared_logit), pieces
        prompts = [b for b in names if b.startswith("prompt")]
        if prompts:
            named = model.structure.blocks() if model.structure is not None else {}
            for b in prompts:
                if b not in named:
                    raise ValueError(f"blocks: {b!r} is a block of a prompt structure's assembly; this one names "
                                     f"{sorted(named) or 'none'}")
                pieces[b] = structured.gate[:, named[b]]
        gate = model.gate.canonical(m.gate) if self.gates == "canonical" else m.gate
        pieces["gate"], pieces["gate.bias"] = model.gate.atom(gate), gate[:, -1:]
        gate_named = model.gate.blocks(model.d)
        for b in names:
            if b.startswith("gate.") and b != "gate.bias":
                if b[5:] not in gate_named:
                    raise ValueError(f"blocks: {b!r} is no piece of the {model.gate.name} gate; it names "
                                     f"{sorted(['gate.bias'] + ['gate.' + k for k in gate_named])}")
                pieces[b] = pieces["gate"][:, gate_named[b[5:]]]
        return model.gate.atom_weight(gate), pieces

    def atoms(self, model: Assembly, m: Mixture) -> tuple[jnp.ndarray, jnp.ndarray, int]:
        """(weights (K,), atoms (K, D), the width of the first block) of the routed components."""
        w, pieces = self._pieces(model, m, shared=False)
        chosen = [pieces[b] for b in self.blocks]
        return w, jnp.concatenate(chosen, axis=1), chosen[0].shape[1]

    def shared_atoms(self, model: Assembly, m: Mixture) -> tuple[jnp.ndarray, jnp.ndarray, int]:
        """(weights omega (K1,), atoms (K1, D), the width of the first block) of the shared components."""
        w, pieces = self._pieces(model, m, shared=True)
        chosen = [pieces[b] for b in self.blocks if not b.startswith("gate")]
        return w, jnp.concatenate(chosen, axis=1), chosen[0].shape[1]

    def _declared(self, model, fitted, truth, shared: bool) -> dict:
        """The weight-sum term and each term (``term0``, ``term1``, ...) of a ``terms`` loss, and ``loss``."""
        w, p = self._pieces(model, fitted, shared)
        tw, tp = self._pieces(model, truth, shared)
        keep = lambda blocks: [b for b in blocks if not (shared and b.startswith("gate"))]
        cell_blocks = keep(self.blocks)
        if self.cell_distance == "blocks":  # the sum of the blocks' distances; ties to the lower true atom
            dist = sum(jnp.linalg.norm(p[b][:, None, :] - tp[b][None, :, :], axis=-1) for b in cell_blocks)
            cell = jnp.argmin(dist, axis=1)
        else:
            cell = voronoi_cells(jnp.concatenate([p[b] for b in cell_blocks], 1),
                                 jnp.concatenate([tp[b] for b in cell_blocks], 1))
        onehot = jax.nn.one_hot(cell, tw.shape[0], dtype=w.dtype)
        counts = jnp.bincount(cell, length=tw.shape[0])
        size = counts[cell]
        diff = jnp.abs(onehot.T @ w - tw)
        out = {"weight": {"all": jnp.sum(diff), "multi": jnp.sum(jnp.where(counts > 1, diff, 0.0)),
                          "none": jnp.zeros((), w.dtype)}[self.weight_sum]}
        factor = w if self.weighted else jnp.ones_like(w)
        r_table = jnp.asarray((np.nan, np.nan) + self.r_of_m, w.dtype)  # r(m) at index m; NaN past the table
        r_m = r_table[jnp.minimum(size, r_table.shape[0] - 1)]
        r_m = jnp.where(size < r_table.shape[0], r_m, jnp.nan)
        total = out["weight"]
        for i, t in enumerate(self.declared_terms()):
            blocks = keep(t.blocks)
            if not blocks:
                continue
            delta = jnp.concatenate([p[b] - tp[b][cell] for b in blocks], axis=1)
            sq = jnp.sum(delta**2, axis=1)
            norm = jnp.where(sq > 0, jnp.sqrt(jnp.where(sq > 0, sq, 1.0)), 0.0)
            multi = {"r": r_m, "r/2": r_m / 2, "none": 1.0}.get(t.multi, t.multi) if isinstance(t.multi, str) else t.multi
            e = jnp.where(size == 1, 1.0 if t.single == "none" else t.single, multi)
            counted = jnp.ones_like(norm, dtype=bool)
            if t.single == "none":
                counted &= size != 1
            if t.multi == "none":
                counted &= size == 1
            if t.cells is not None:
                counted &= jnp.isin(cell, jnp.asarray(t.cells))
            value = jnp.where(norm > 0, norm ** jnp.where(norm > 0, e, 1.0), 0.0 * e)
            out[f"term{i}"] = factor @ jnp.where(counted, value, 0.0)
            total = total + out[f"term{i}"]
        arrays = [w, tw] + [p[b] for b in p] + [tp[b] for b in tp]
        ok = jnp.all(jnp.stack([jnp.all(jnp.isfinite(a)) for a in arrays]))
        out["loss"] = total
        return {k: jnp.where(ok, v, jnp.nan) for k, v in out.items()}

    def _one(self, model, fitted, truth, shared: bool) -> dict:
        if self.kind == "terms":
            return self._declared(model, fitted, truth, shared)
        w, a, first = (self.shared_atoms if shared else self.atoms)(model, fitted)
        tw, ta, _ = (self.shared_atoms if shared else self.atoms)(model, truth)
        out = voronoi_parts(w, a, tw, ta, split=first if self.kind == "d1r" else None, r=self.r)
        out["loss"] = out["d1r"] if self.kind == "d1r" else out["d2"]
        return out

    def parts(self, model: Assembly, fitted: Mixture, truth: Mixture) -> dict:
        """Every part of the loss (``d2``, ``d1r``: :func:`moe_estimation.prefix.voronoi.voronoi_parts`; ``terms``: the
        weight-sum term and each term), and ``loss`` itself; for ``part = "both"``, ``loss`` (the sum), ``routed``
        and ``shared`` (each one's parts)."""
        if self.kind == "sum":
            pieces = {f"loss{i}": v.parts(model, fitted, truth) for i, v in enumerate(self.losses)}
            return {"loss": sum(v["loss"] for v in pieces.values()), **pieces}
        if self.part != "routed" and model.shared is None:
            raise ValueError(f"part: {self.part!r} measures shared experts, and the model has none")
        if self.part != "routed" and (fitted.shared_logit is None or truth.shared_logit is None):
            raise ValueError("fitted, truth: a loss of the shared part needs both mixtures' shared components")
        if self.part == "routed":
            return self._one(model, fitted, truth, shared=False)
        if self.part == "shared":
            return self._one(model, fitted, truth, shared=True)
        routed = self._one(model, fitted, truth, shared=False)
        shared = self._one(model, fitted, truth, shared=True)
        return {"loss": routed["loss"] + shared["loss"], "routed": routed, "shared": shared}

    def identified(self, model: Assembly, fitted: Mixture, truth: Mixture, cells: str = "atom") -> dict:
        """The identified part of the routed components (:func:`moe_estimation.prefix.voronoi.identified_parts`) on this
        loss's atoms cut after the first block: the cell weight sums, the weight-averaged first block ("key") and
        rest ("value") against the truth, and their spreads; ``cells`` ``"key"`` draws the cells on the first
        block alone."""
        w, a, first = self.atoms(model, fitted)
        tw, ta, _ = self.atoms(model, truth)
        return identified_parts(w, a, tw, ta, split=first, cells=cells)

    def __call__(self, model: Assembly, fitted: Mixture, truth: Mixture):
        return self.parts(model, fitted, truth)["loss"]
