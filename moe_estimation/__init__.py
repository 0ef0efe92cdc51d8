"""moe_estimation: the statistics of mixture-of-experts parameter estimation, for prefix-tuning.

Prefix-tuning is a softmax-gated mixture of experts: the frozen tokens are pre-trained experts and each
prefix is a new expert with a linear gate (its key) and a constant value. This package simulates that
regression model, fits it by batched least squares, scores the fit with Voronoi losses and measures
empirical convergence rates, for the four prompt structures (non-shared, shared-linear,
shared-nonlinear, prompt-tuning).

Modules: :mod:`.problems` (the model's known part), :mod:`.data` (simulation), :mod:`.estimator` (the
least-squares fit), :mod:`.solver` (the box-constrained Levenberg-Marquardt core it runs on),
:mod:`.voronoi` (the losses), :mod:`.rates` (slopes and intervals, paired differences, binomial intervals
and trends), :mod:`.inference` (quantiles, failing fractions, paired differences and power from a study's
fits), :mod:`.study` and :mod:`.results` (Monte Carlo studies and their tables), :mod:`.plots`,
:mod:`.transformer`.

Estimation is meant to run in float64: call ``jax.config.update("jax_enable_x64", True)`` first.
"""

from .prefix.data import simulate as simulate
from .prefix.estimator import FitResult as FitResult
from .prefix.estimator import FitSettings as FitSettings
from .prefix.estimator import fit as fit
from .prefix.estimator import fit_batch as fit_batch
from .prefix.estimator import fit_dataset as fit_dataset
from .prefix.estimator import initial_params as initial_params
from .prefix.estimator import start_scale as start_scale
from .prefix.model import Params as Params
from .prefix.model import predict as predict
from .prefix.model import regression_function as regression_function
from .prefix.model import true_params as true_params
from .prefix.problems import PRESET_NAMES as PRESET_NAMES
from .prefix.problems import PRESETS as PRESETS
from .prefix.problems import Problem as Problem
from .prefix.problems import make_problem as make_problem
from .prefix.problems import preset as preset
from .prefix.problems import merge_factor as merge_factor
from .prefix.problems import move_truth as move_truth
from .prefix.problems import random_pretrained as random_pretrained
from .rates import Rate as Rate
from .rates import RateDifference as RateDifference
from .rates import binomial_interval as binomial_interval
from .rates import empirical_rate as empirical_rate
from .rates import paired_rate_difference as paired_rate_difference
from .rates import is_composite as is_composite
from .rates import theory_slope as theory_slope
from .rates import trend_test as trend_test
from .solver import Status as Status
from .solver import is_converged as is_converged
from .prefix.structures import STRUCTURES as STRUCTURES
from .prefix.structures import key_value as key_value
from .prefix.voronoi import d1r_loss as d1r_loss
from .prefix.voronoi import d2_loss as d2_loss
from .prefix.voronoi import identified_key_value as identified_key_value
from .prefix.voronoi import identified_parts as identified_parts
from .prefix.voronoi import key_value_loss as key_value_loss
from .prefix.voronoi import key_value_parts as key_value_parts
from .prefix.voronoi import structure_parts as structure_parts
from .prefix.voronoi import voronoi_loss as voronoi_loss
from .prefix.voronoi import voronoi_parts as voronoi_parts

__version__ = "0.2.0"
