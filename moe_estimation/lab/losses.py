"""Voronoi losses declared as data (docs/maths.md, *The lab*).

A loss between a fitted mixture and the truth is declared by: which blocks of a component make its atom
(``gate``: the part :meth:`Gate.atom` names of the gate's canonical parameters (:meth:`Gate.canonical`: a
softmax's are identified only up to a common shift), the slopes w_k without the bias; ``expert``: the expert's
canonical parameters (:meth:`Expert.canonical`: a one-neuron ReLU expert's scale, a tanh expert's sign); ``variance``: exp(log_var), the Gaussian likelihood's), the weight of an atom (the gate's
:meth:`Gate.atom_weight`: exp(b) for softmax and Laplace gates, sigmoid(b) for sigmoid ones), and the kind:

- ``d2``: the weight-sum term, plus w ||Delta|| in cells holding one fitted atom and w ||Delta||^2 in cells
  holding several (the exponents by cell size of the over-specified theory);
- ``d1r``: the weight-sum term plus w (||Delta_first||^r + ||Delta_rest||^r), the atom cut after its first
  block (the non-shared prefix model's D_{1,r}, with the key block first).

The cells, the weight-sum term and every part are :func:`moe_estimation.voronoi.voronoi_parts`', so a loss
declared here is the same number as the prefix model's loss on the same atoms (a test checks D_2 and D_{1,1}
against the prefix presets to 1e-12).

With shared experts (:class:`moe_estimation.lab.Assembly` ``shared``), ``part`` says which components the loss
measures: ``routed`` (the default), ``shared`` (atoms from the shared experts' blocks, ``expert`` and
``variance``; weights omega = softmax(shared_logit); a ``gate`` block is skipped, a shared expert has no gate),
or ``both``: the sum of the two, each with its own cells and weight-sum term (the DeepSeekMoE losses' form).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from ..voronoi import voronoi_parts
from .model import Assembly, Mixture

BLOCKS = ("gate", "expert", "variance")
KINDS = ("d2", "d1r")
PARTS = ("routed", "shared", "both")


@dataclasses.dataclass(frozen=True)
class VoronoiLoss:
    """A Voronoi loss from parts (module docstring): ``blocks`` in atom order, ``kind`` ``d2`` or ``d1r`` (with
    exponent ``r``), ``part`` routed, shared or both."""

    blocks: tuple = ("gate", "expert")
    kind: str = "d2"
    r: float = 1.0
    part: str = "routed"

    def __post_init__(self):
        if not self.blocks or any(b not in BLOCKS for b in self.blocks) or len(set(self.blocks)) < len(self.blocks):
            raise ValueError(f"blocks: expected distinct names from {BLOCKS}, got {self.blocks!r}")
        if self.kind not in KINDS:
            raise ValueError(f"kind: expected one of {KINDS}, got {self.kind!r}")
        if self.kind == "d1r" and len(self.blocks) < 2:
            raise ValueError("blocks: a d1r loss cuts the atom after its first block; give at least two")
        if isinstance(self.r, bool) or not isinstance(self.r, (int, float)) or not (np.isfinite(self.r) and self.r >= 1):
            raise ValueError(f"r: the exponent of a d1r loss must be a finite number >= 1, got {self.r!r}")
        if self.part not in PARTS:
            raise ValueError(f"part: expected one of {PARTS}, got {self.part!r}")
        if self.part != "routed" and self.blocks == ("gate",):
            raise ValueError("blocks: a shared expert has no gate; a loss of the shared part needs 'expert' or 'variance'")
        if self.part != "routed" and self.kind == "d1r" and len([b for b in self.blocks if b != "gate"]) < 2:
            raise ValueError("blocks: a d1r loss of the shared part cuts its atom after the first of 'expert' and "
                             "'variance'; give both")

    def atoms(self, model: Assembly, m: Mixture) -> tuple[jnp.ndarray, jnp.ndarray, int]:
        """(weights (K,), atoms (K, D), the width of the first block)."""
        if "variance" in self.blocks and not model.has_variances:
            raise ValueError("blocks: 'variance' is a block of the Gaussian likelihoods' mixtures; least squares has none")
        gate = model.gate.canonical(m.gate)
        pieces = {"gate": model.gate.atom(gate), "expert": model.expert.canonical(m.expert, model.d_out),
                  "variance": jnp.exp(m.log_var)[:, None]}
        chosen = [pieces[b] for b in self.blocks]
        return model.gate.atom_weight(gate), jnp.concatenate(chosen, axis=1), chosen[0].shape[1]

    def shared_atoms(self, model: Assembly, m: Mixture) -> tuple[jnp.ndarray, jnp.ndarray, int]:
        """(weights omega (K1,), atoms (K1, D), the width of the first block) of the shared components."""
        pieces = {"expert": model.shared.canonical(m.shared_expert, model.d_out),
                  "variance": jnp.exp(m.shared_log_var)[:, None]}
        chosen = [pieces[b] for b in self.blocks if b != "gate"]
        return jax.nn.softmax(m.shared_logit), jnp.concatenate(chosen, axis=1), chosen[0].shape[1]

    def _one(self, atoms, model, fitted, truth) -> dict:
        w, a, first = atoms(model, fitted)
        tw, ta, _ = atoms(model, truth)
        out = voronoi_parts(w, a, tw, ta, split=first if self.kind == "d1r" else None, r=self.r)
        out["loss"] = out["d1r"] if self.kind == "d1r" else out["d2"]
        return out

    def parts(self, model: Assembly, fitted: Mixture, truth: Mixture) -> dict:
        """Every part of the loss (:func:`moe_estimation.voronoi.voronoi_parts`), and ``loss`` itself; for
        ``part = "both"``, ``loss`` (the sum), ``routed`` and ``shared`` (each one's parts)."""
        if self.part != "routed" and model.shared is None:
            raise ValueError(f"part: {self.part!r} measures shared experts, and the model has none")
        if self.part != "routed" and (fitted.shared_logit is None or truth.shared_logit is None):
            raise ValueError("fitted, truth: a loss of the shared part needs both mixtures' shared components")
        if self.part == "routed":
            return self._one(self.atoms, model, fitted, truth)
        if self.part == "shared":
            return self._one(self.shared_atoms, model, fitted, truth)
        routed = self._one(self.atoms, model, fitted, truth)
        shared = self._one(self.shared_atoms, model, fitted, truth)
        return {"loss": routed["loss"] + shared["loss"], "routed": routed, "shared": shared}

    def __call__(self, model: Assembly, fitted: Mixture, truth: Mixture):
        return self.parts(model, fitted, truth)["loss"]
