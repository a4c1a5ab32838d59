# ruff: noqa: F722  (jaxtyping shape strings such as "n d" are not forward references)
"""H-AlexNet: the bias-free, 5-homogeneous convolutional network of Figure 2(a).

It follows the small AlexNet of the PyTorch CIFAR tutorial with every bias removed:
conv → ReLU → maxpool(2) → conv → ReLU → maxpool(2) → flatten → linear → ReLU → linear → ReLU →
linear. ReLU and max-pooling are positively 1-homogeneous and every layer is bias-free, so
Φ(x; cW) = c⁵ Φ(x; W) for c > 0 (2 conv + 3 linear layers).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from gradflow.activations import ActivationPattern, maxpool_argmax
from gradflow.errors import bad_argument
from gradflow.model import Model
from gradflow.models.linear import _check_init_scale, _check_key, _draw
from gradflow.options import check_int
from gradflow.precision import x64

__all__ = ["HomogeneousCNN"]


class HomogeneousCNN(Model):
    """Bias-free H-AlexNet, 5-homogeneous.

    Input x of shape (n, C, H, W) with C = ``in_channels`` and (H, W) = ``image_size``; both
    must be multiples of 4 (e.g. 8 or 32). The convolutions use ``kernel_size`` (odd) with
    "same" zero padding (kernel_size // 2), so only the two 2×2 max-pools shrink the image:
    the flattened feature has channels[1] · (H/4) · (W/4) entries. Layers:
    Conv(C→c1) → ReLU → MaxPool2 → Conv(c1→c2) → ReLU → MaxPool2 → flatten →
    Linear(→h1) → ReLU → Linear(h1→h2) → ReLU → Linear(h2→num_classes).
    Output (n, num_classes), or (n,) when num_classes == 1.
    Initialisation: equinox's default (uniform ±1/√fan_in) times ``init_scale``.
    The PyTorch tutorial uses channels (6, 16), hidden (120, 84), kernel 5; the smaller default
    hidden widths keep it cheap on a CPU.
    """

    conv1: eqx.nn.Conv2d
    conv2: eqx.nn.Conv2d
    fc1: eqx.nn.Linear
    fc2: eqx.nn.Linear
    fc3: eqx.nn.Linear
    pool: eqx.nn.MaxPool2d = eqx.field(static=True)
    input_shape: tuple[int, int, int] = eqx.field(static=True)
    num_classes: int = eqx.field(static=True)

    def __init__(
        self,
        in_channels: int,
        image_size: int | Sequence[int],
        num_classes: int,
        *,
        key: PRNGKeyArray,
        channels: Sequence[int] = (6, 16),
        hidden: Sequence[int] = (32, 16),
        kernel_size: int = 5,
        init_scale: float = 1.0,
    ):
        _check_key(key)
        c_in = check_int("in_channels", in_channels, example=4)
        bad_size = bad_argument(
            "image_size", f"must be positive multiples of 4, got {image_size!r}", "Pass e.g. image_size=8 or 32."
        )
        if isinstance(image_size, (int, np.integer)):
            size = (image_size, image_size)
        else:
            try:
                size = tuple(image_size)
            except TypeError as e:
                raise bad_size from e
        if len(size) != 2 or any(
            isinstance(s, (bool, np.bool_)) or not isinstance(s, (int, np.integer)) or s < 4 or s % 4 for s in size
        ):
            raise bad_size
        size = tuple(int(s) for s in size)
        k_out = check_int("num_classes", num_classes, example=4)
        channels, hidden = tuple(channels), tuple(hidden)
        if len(channels) != 2:
            raise bad_argument("channels", f"must have length 2, got {channels}", "Pass channels=(c1, c2).")
        if len(hidden) != 2:
            raise bad_argument("hidden", f"must have length 2, got {hidden}", "Pass hidden=(h1, h2).")
        for name, seq in (("channels", channels), ("hidden", hidden)):
            for i, h in enumerate(seq):
                check_int(f"{name}[{i}]", h, example=4)
        if check_int("kernel_size", kernel_size, example=4) % 2 == 0:
            raise bad_argument("kernel_size", f"must be odd (for 'same' padding), got {kernel_size}", "Pass 3 or 5.")
        init_scale = _check_init_scale(init_scale)

        pad = kernel_size // 2
        flat = channels[1] * (size[0] // 4) * (size[1] // 4)
        k = kernel_size
        c1, c2 = channels
        h1, h2 = hidden
        shapes = [(c1, c_in, k, k), (c2, c1, k, k), (h1, flat), (h2, h1), (k_out, h2)]
        f64 = jnp.float64
        conv = {"padding": pad, "use_bias": False, "dtype": f64, "key": key}
        with x64():
            # Build the layers abstractly (no random draw), then fill in the weights from one draw.
            blanks = [
                eqx.filter_eval_shape(eqx.nn.Conv2d, c_in, c1, k, **conv),
                eqx.filter_eval_shape(eqx.nn.Conv2d, c1, c2, k, **conv),
                eqx.filter_eval_shape(eqx.nn.Linear, flat, h1, use_bias=False, dtype=f64, key=key),
                eqx.filter_eval_shape(eqx.nn.Linear, h1, h2, use_bias=False, dtype=f64, key=key),
                eqx.filter_eval_shape(eqx.nn.Linear, h2, k_out, use_bias=False, dtype=f64, key=key),
            ]
            layers = [
                # equinox's default: U(−1/√fan_in, 1/√fan_in), fan_in = prod(shape[1:]).
                eqx.tree_at(
                    lambda m: m.weight,
                    blank,
                    (init_scale / math.prod(shape[1:]) ** 0.5) * u,
                )
                for blank, shape, u in zip(blanks, shapes, _draw(key, shapes, uniform=True), strict=True)
            ]
        self.conv1, self.conv2, self.fc1, self.fc2, self.fc3 = layers
        self.pool = eqx.nn.MaxPool2d(kernel_size=2, stride=2)
        self.input_shape = (c_in, *size)
        self.num_classes = k_out

    @property
    def degree(self) -> int:
        return 5

    def _single(self, x: Float[Array, "C H W"]) -> Float[Array, " k"]:
        h = self.pool(jax.nn.relu(self.conv1(x)))
        h = self.pool(jax.nn.relu(self.conv2(h)))
        h = jnp.ravel(h)
        h = jax.nn.relu(self.fc1(h))
        h = jax.nn.relu(self.fc2(h))
        return self.fc3(h)

    def _pattern_single(self, x: Float[Array, "C H W"]):
        # the forward pass of _single, keeping the ReLU inputs and each max-pool's window argmax
        z1 = self.conv1(x)
        z2 = self.conv2(self.pool(jax.nn.relu(z1)))
        z3 = self.fc1(jnp.ravel(self.pool(jax.nn.relu(z2))))
        z4 = self.fc2(jax.nn.relu(z3))
        return (z1, z2, z3, z4), (maxpool_argmax(z1), maxpool_argmax(z2))

    def activation_pattern(self, x: Float[Array, "n C H W"]) -> ActivationPattern:
        """Pre-activations of the 4 ReLU layers, (n, c1, H, W), (n, c2, H/2, W/2), (n, h1), (n, h2),
        and the argmax of the two 2×2 max-pools over z, (n, c1, H/2, W/2) and (n, c2, H/4, W/4)
        (pool(relu(z)) = relu(pool(z)); see :mod:`gradflow.activations`)."""
        net, x = self._prepared(x)
        pre, pools = jax.vmap(net._pattern_single)(x)
        return ActivationPattern(pre, pools)

    def _prepared(self, x):
        """The network and x in one float dtype, after checking x's shape."""
        if x.ndim != 4 or tuple(x.shape[1:]) != self.input_shape:
            raise bad_argument(
                "x",
                f"HomogeneousCNN expects shape (n, {', '.join(map(str, self.input_shape))}), got {tuple(x.shape)}",
                "Pass images as (n, C, H, W).",
            )
        # lax.conv does not promote dtypes: run in the promoted dtype of x and the weights as the
        # current x64 setting allows (float64 inside ``x64()``, float32 without it).
        dtype = jax.dtypes.canonicalize_dtype(jnp.promote_types(x.dtype, self.conv1.weight.dtype))
        net = self
        if self.conv1.weight.dtype != dtype:
            net = jax.tree_util.tree_map(lambda a: a.astype(dtype) if eqx.is_inexact_array(a) else a, self)
        return net, x.astype(dtype)

    def __call__(self, x: Float[Array, "n C H W"]) -> Float[Array, " n"] | Float[Array, "n k"]:
        net, x = self._prepared(x)
        out = jax.vmap(net._single)(x)
        return out[:, 0] if self.num_classes == 1 else out
