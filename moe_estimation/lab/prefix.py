"""The prefix-tuning problems as assemblies of the lab's parts (docs/maths.md, *The lab*).

A :class:`moe_estimation.Problem` is the assembly: a softmax gate whose reference is the frozen block of
pre-trained experts (:class:`FrozenExperts`), constant experts, least squares with the problem's known noise, and
components whose free parameters are a prompt and a bias mapped through the problem's structure
(:class:`PromptStructure`). :func:`from_problem` builds it with the true mixture; :func:`prefix_losses` declares
the prefix study's losses from the lab's loss grammar. On the same measure every number agrees with the prefix
code's to machine precision (tests/test_lab.py): the regression function, D_2 and D_{1,r}, the (key, value)
yardstick and its identified part, and the least-squares normal equations (the closed-form Jacobian of
:mod:`moe_estimation.prefix.estimator` is the lab estimator's registered fast path for these assemblies,
:data:`moe_estimation.lab.fit.FAST_PATHS`).
"""

from __future__ import annotations

import jax.numpy as jnp

from ..prefix.model import Params
from ..prefix.structures import NON_SHARED
from .losses import VoronoiLoss
from .model import Assembly, Mixture
from .parts import ConstantExpert, FrozenExperts, InputLaw, PromptStructure, SoftmaxGate


def from_problem(problem) -> tuple[Assembly, Mixture]:
    """(the assembly of ``problem``, its true mixture): components (p_i, b_i) in ``Mixture.gate``, no expert
    parameters (the values come from the prompts)."""
    for field in ("A", "a", "H", "B", "C", "structure", "true_atoms", "true_biases", "input_dist", "noise_var"):
        if not hasattr(problem, field):
            raise ValueError(f"problem: expected a moe_estimation.Problem, got {type(problem).__name__} (no {field!r})")
    structure = PromptStructure(problem.structure, problem.B, problem.C, problem.W1, problem.W2, problem.activation,
                                problem.atom_bound, tuple(problem.bias_bounds))
    s = problem.input_scale
    law = InputLaw("uniform", problem.d, -s, s) if problem.input_dist == "uniform" else InputLaw("normal", problem.d, scale=s)
    model = Assembly(gate=SoftmaxGate(reference="extra"), expert=ConstantExpert(), input=law, d_out=problem.d_v,
                     noise_var=problem.noise_var, frozen=FrozenExperts(problem.A, problem.a, problem.H), structure=structure)
    return model, model.check(from_params(Params(problem.true_atoms, problem.true_biases)))


def from_params(params: Params) -> Mixture:
    """A prefix measure (atoms ``(L, D)``, biases ``(L,)``; leading batch axes allowed) as the lab's mixture."""
    atoms, biases = jnp.asarray(params.atoms), jnp.asarray(params.biases)
    return Mixture(gate=jnp.concatenate([atoms, biases[..., None]], axis=-1), expert=jnp.zeros(atoms.shape[:-1] + (0,)),
                   log_var=jnp.zeros(biases.shape))


def to_params(m: Mixture) -> Params:
    """The inverse of :func:`from_params`."""
    return Params(m.gate[..., :-1], m.gate[..., -1])


def prefix_losses(model: Assembly, r: float = 1.0) -> dict:
    """The prefix study's losses as declarations: ``own`` (D_{1,r} on (p^K, p^V) for the non-shared structure, D_2 on
    p for the shared ones) and ``yardstick`` (D_2 on the (key, value) atoms, every structure)."""
    if model.structure is None:
        raise ValueError("model: the prefix losses need an assembly with a prompt structure (lab.from_problem)")
    own = (VoronoiLoss(blocks=("prompt.key", "prompt.value"), kind="d1r", r=float(r))
           if model.structure.structure == NON_SHARED else VoronoiLoss(blocks=("prompt",), kind="d2"))
    return {"own": own, "yardstick": VoronoiLoss(blocks=("gate", "expert"), kind="d2")}
