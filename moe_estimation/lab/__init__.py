"""The lab: mixtures of experts assembled from parts (gates, experts, likelihoods, input laws), one estimator
for every assembly and Voronoi losses declared as data (docs/maths.md, *The lab*).

    import moe_estimation.lab as lab
    model = lab.Assembly(gate=lab.SigmoidGate(), expert=lab.ActivationExpert("relu"), input=lab.InputLaw(d=1))
    truth = lab.Mixture(gate=[[2.0, 0.5], [-2.0, 0.0]], expert=[[1.0, 1.0, 0.0], [-1.0, 1.0, 0.5]], log_var=[0.0, 0.0])
    X, Y = lab.simulate(jax.random.key(0), model, truth, n=2000)
    fitted = lab.fit(jax.random.key(1), model, X, Y, num_components=3)
    lab.VoronoiLoss()(model, fitted.params, model.check(truth))

A Monte Carlo rate study of an assembly runs from a configuration file with a ``[model]`` table
(:mod:`moe_estimation.lab.study`; ``moe-estimation study --config simulations/lab-gaussian-moe.toml``). The
prefix-tuning problems of the rest of the package are one assembly among these (a softmax gate with an extra
reference score, constant experts; a test shows it to machine precision); porting them onto these parts and
one runner for every study are the work still open.
"""

from .em import em as em
from .fit import LabFit as LabFit
from .fit import LabFitSettings as LabFitSettings
from .fit import fit as fit
from .fit import register_start as register_start
from .losses import Term as Term
from .losses import VoronoiLoss as VoronoiLoss
from .model import Assembly as Assembly
from .model import Mixture as Mixture
from .model import log_density as log_density
from .model import mean as mean
from .model import simulate as simulate
from .model import simulate_rows as simulate_rows
from .parts import ACTIVATIONS as ACTIVATIONS
from .parts import FrozenExperts as FrozenExperts
from .parts import PromptStructure as PromptStructure
from . import published as published  # registers the published studies' start schedules
from .prefix import from_params as from_params
from .prefix import from_problem as from_problem
from .prefix import prefix_losses as prefix_losses
from .prefix import to_params as to_params
from .parts import GATES as GATES
from .parts import ActivationExpert as ActivationExpert
from .parts import ConstantExpert as ConstantExpert
from .parts import Expert as Expert
from .parts import Gate as Gate
from .parts import GaussianGate as GaussianGate
from .parts import InputLaw as InputLaw
from .parts import LaplaceGate as LaplaceGate
from .parts import LinearExpert as LinearExpert
from .parts import NormalisedSigmoidGate as NormalisedSigmoidGate
from .parts import SigmoidGate as SigmoidGate
from .parts import SoftmaxGate as SoftmaxGate
from .parts import register_expert as register_expert
from .parts import register_gate as register_gate
