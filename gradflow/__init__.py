"""gradflow: the continuous-time gradient flow dW/dt = −∇L(W) of homogeneous networks, integrated
far enough to watch directional convergence and alignment (Ji & Telgarsky, 2020).

gradflow does not switch JAX to float64 globally: its own computations run in float64 inside a
scoped context (see :mod:`gradflow.precision`); call :func:`gradflow.enable_x64` to switch your
own code too.
"""

from . import (
    activations,
    datasets,
    error_check,
    figures,
    interop,
    losses,
    maxmargin,
    models,
    options,
    progress,
    sharpness,
    theory,
)
from .compare import compare
from .data import Dataset
from .descent import NormalizedGD, normalized_gd, simulate_descent
from .ensemble import EnsembleResult, simulate_ensemble
from .errors import GradflowError, InvalidArgumentError, InvalidTypeError, SolverFailure
from .flow import simulate_flow
from .interop import ExternalModel, as_model
from .losses import CrossEntropy, Exponential, Logistic, get_loss
from .models import (
    DeepLinear,
    FrozenActivation,
    HomogeneityReport,
    HomogeneousCNN,
    Linear,
    Model,
    ReLUMLP,
    SmallDenseNet,
    SmallResNet,
    TwoLayerSquaredReLU,
    check_homogeneity,
    linearize,
)
from .options import Diagnostics, RunOptions
from .params import Frozen, num_params
from .plotting import plot_flow
from .precision import enable_x64, x64
from .result import FlowResult, load_result

__version__ = "0.1.0"

__all__ = [
    "CrossEntropy",
    "Dataset",
    "EnsembleResult",
    "ExternalModel",
    "DeepLinear",
    "Diagnostics",
    "Exponential",
    "FlowResult",
    "Frozen",
    "FrozenActivation",
    "GradflowError",
    "HomogeneityReport",
    "HomogeneousCNN",
    "InvalidArgumentError",
    "InvalidTypeError",
    "Linear",
    "Logistic",
    "Model",
    "NormalizedGD",
    "ReLUMLP",
    "RunOptions",
    "SmallDenseNet",
    "SmallResNet",
    "SolverFailure",
    "TwoLayerSquaredReLU",
    "activations",
    "as_model",
    "check_homogeneity",
    "compare",
    "datasets",
    "enable_x64",
    "error_check",
    "figures",
    "get_loss",
    "interop",
    "linearize",
    "load_result",
    "losses",
    "maxmargin",
    "models",
    "normalized_gd",
    "options",
    "num_params",
    "plot_flow",
    "progress",
    "sharpness",
    "simulate_descent",
    "simulate_ensemble",
    "simulate_flow",
    "theory",
    "x64",
]
