"""Homogeneous predictors Φ(x; W) for gradient-flow experiments (Ji & Telgarsky, 2020)."""

from gradflow.model import Model
from gradflow.models.cnn import HomogeneousCNN
from gradflow.models.homogeneity import HomogeneityReport, check_homogeneity
from gradflow.models.linear import DeepLinear, Linear
from gradflow.models.margin import MARGIN_ARCHITECTURES, make_margin_model
from gradflow.models.mlp import ReLUMLP
from gradflow.models.nonhomogeneous import SmallDenseNet, SmallResNet
from gradflow.models.squared_relu import (
    FrozenActivation,
    TwoLayerSquaredReLU,
    alternating_signs,
    linearize,
)

__all__ = [
    "MARGIN_ARCHITECTURES",
    "DeepLinear",
    "FrozenActivation",
    "HomogeneityReport",
    "HomogeneousCNN",
    "Linear",
    "Model",
    "ReLUMLP",
    "SmallDenseNet",
    "SmallResNet",
    "TwoLayerSquaredReLU",
    "alternating_signs",
    "check_homogeneity",
    "linearize",
    "make_margin_model",
]
