"""The networks of the margin figures (Figures 2 and 3 of Ji & Telgarsky, 2020), by name.

``'hcnn'`` is the 5-homogeneous H-AlexNet (:class:`~gradflow.models.cnn.HomogeneousCNN`, Figure 2a,
inside the theory); ``'densenet'`` and ``'resnet'`` carry biases and skip connections
(:mod:`gradflow.models.nonhomogeneous`, Figures 2b and 3, outside it). The sizes are chosen for
the small images gradflow trains on by default (8×8 digits) and grow with the image for CIFAR-10.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax

from gradflow.errors import bad_argument
from gradflow.model import Model
from gradflow.models.cnn import HomogeneousCNN
from gradflow.models.nonhomogeneous import SmallDenseNet, SmallResNet

__all__ = ["MARGIN_ARCHITECTURES", "make_margin_model"]

#: the names :func:`make_margin_model` accepts
MARGIN_ARCHITECTURES = ("hcnn", "densenet", "resnet")


def make_margin_model(arch: str, input_shape: Sequence[int], num_classes: int = 10, *, seed: int = 0) -> Model:
    """The network of a margin figure: 'hcnn' (HomogeneousCNN, degree 5), 'densenet' or 'resnet'
    (non-homogeneous, with biases), sized for ``input_shape`` = (C, H, W), initialised from
    ``jax.random.PRNGKey(seed)``.

    The H-AlexNet uses ``init_scale=2.5``: Φ scales like init_scale⁵, so its outputs are O(1) at
    initialisation instead of ~0.01, which would leave the flow near the saddle W = 0 for a long
    time. 8×8 inputs get narrower layers and 3×3 kernels; larger ones (CIFAR-10) the tutorial's
    (6, 16) channels and 5×5 kernels.

    Raises:
        InvalidArgumentError: ``arch`` not in :data:`MARGIN_ARCHITECTURES`.
    """
    c, h, _w = input_shape
    key = jax.random.PRNGKey(seed)
    if arch == "hcnn":
        small = h <= 8
        return HomogeneousCNN(c, h, num_classes, key=key, channels=(4, 8) if small else (6, 16),
                              hidden=(16, 16) if small else (32, 16), kernel_size=3 if small else 5, init_scale=2.5)
    if arch == "densenet":
        return SmallDenseNet(c, h, num_classes, key=key, stem=8, growth=4, block_layers=(2, 2))
    if arch == "resnet":
        return SmallResNet(c, h, num_classes, key=key, channels=(8, 16), blocks_per_stage=1)
    raise bad_argument("arch", f"unknown architecture {arch!r}", f"Use one of {MARGIN_ARCHITECTURES}.")
