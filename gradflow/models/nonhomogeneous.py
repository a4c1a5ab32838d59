# ruff: noqa: F722  (jaxtyping shape strings such as "n C H W" are not forward references)
r"""Small non-homogeneous convolutional networks for Figures 2(b) and 3: DenseNet- and ResNet-style.

The paper's Figures 2(b) and 3 use torchvision's DenseNet-121 and ResNet-18, which lie *outside*
its theory: they have biases and skip connections, so no L gives Φ(x; cW) = c^L Φ(x; W), and
``degree`` is None here (the flow then reports unnormalized margins only). These are tiny
versions of the same two designs, sized for 8×8 digits on a CPU (they accept 32×32×3 CIFAR-10 as
well), with every convolution and linear layer carrying a bias:

* :class:`SmallDenseNet` (Huang et al., 2017): a stride-2 stem convolution, then dense blocks in which
  layer k computes g_k = conv(relu(h_{k−1})) and the block state is the channel concatenation
  h_k = [h_{k−1}, g_k]; between blocks a transition relu → 1×1 conv → 2×2 average pool; at the
  end relu → global average pool → linear.
* :class:`SmallResNet` (He et al., 2016): a stride-2 stem convolution, then stages of basic residual blocks
  h ← relu(h + conv₂(relu(conv₁(h)))), each later stage starting with a stride-2 block whose skip
  path is a 1×1 stride-2 convolution; at the end global average pool → linear.

Batch normalization is left out: with it the output of one example would depend on the others in
the batch, and the full-batch flow would no longer be a flow of per-example predictors p_i(W).
Initialisation: equinox's default (uniform ±1/√fan_in for weights and biases) times
``init_scale``. Inputs (n, C, H, W), outputs (n, num_classes).
"""

from __future__ import annotations

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from gradflow.activations import ActivationPattern
from gradflow.errors import bad_argument
from gradflow.model import Model
from gradflow.models.linear import _check_init_scale
from gradflow.options import check_int
from gradflow.precision import x64

__all__ = ["SmallDenseNet", "SmallResNet"]


def _scaled(layer: eqx.Module, init_scale: float) -> eqx.Module:
    """``layer`` with weight and bias multiplied by ``init_scale``."""
    if init_scale == 1.0:
        return layer
    return jax.tree_util.tree_map(lambda a: init_scale * a if eqx.is_inexact_array(a) else a, layer)


def _check_image(in_channels: int, image_size: int | Sequence[int], num_classes: int, min_size: int) -> tuple[int, tuple[int, int], int]:
    c_in = check_int("in_channels", in_channels, example=4)
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(size) != 2 or any(isinstance(s, bool) or not isinstance(s, int) or s < min_size for s in size):
        raise bad_argument("image_size", f"must be integers ≥ {min_size}, got {image_size!r}", "Pass e.g. image_size=8 or 32.")
    return c_in, size, check_int("num_classes", num_classes, example=4)


def _float_dtype(x: Array, weight: Array):
    return jax.dtypes.canonicalize_dtype(jnp.promote_types(x.dtype, weight.dtype))


def _cast(module: eqx.Module, dtype) -> eqx.Module:
    return jax.tree_util.tree_map(lambda a: a.astype(dtype) if eqx.is_inexact_array(a) else a, module)


def _check_x(x: Array, input_shape: tuple[int, int, int], name: str) -> None:
    if x.ndim != 4 or tuple(x.shape[1:]) != input_shape:
        raise bad_argument(
            "x", f"{name} expects shape (n, {', '.join(map(str, input_shape))}), got {tuple(x.shape)}", "Pass images as (n, C, H, W)."
        )


class SmallDenseNet(Model):
    """DenseNet-style network with biases (not homogeneous: ``degree`` is None).

    Φ(x) = A · mean_{pixels} relu(h_B) + b, where h_B is the state after ``len(block_layers)``
    dense blocks. Dense block with k layers of growth g on c channels: for i = 1..k,
    h ← [h, conv3×3(relu(h))] (c + i·g channels). Transition between blocks:
    h ← avgpool2(conv1×1(relu(h))) to ``transition`` channels (defaults to half, rounded up).
    Stem: conv3×3 with stride 2 (C → ``stem``; DenseNet-121's stem also halves the image).
    Image sizes must be divisible by 2^blocks.

    relu(h) is computed once per entry of h and concatenated as h grows (relu([h, u]) =
    [relu(h), relu(u)]): the same function as applying relu to the whole state before each layer,
    but every pre-activation is one kink pair (:mod:`gradflow.kinkmap`), not one per ReLU that
    reads it. With the repeated ReLUs, a crossing entered the sliding set once per copy, with equal
    normals: measured from the random initialisation on 100 digits (accuracy clock, rtol 1e-5,
    3,000 steps, ``benchmarks/repeated_relus.py``), 44,373 entries and 206 s against 16,008 and 84 s,
    the same steps and ln(n/L).
    """

    stem: eqx.nn.Conv2d
    blocks: tuple[tuple[eqx.nn.Conv2d, ...], ...]
    transitions: tuple[eqx.nn.Conv2d, ...]
    head: eqx.nn.Linear
    pool: eqx.nn.AvgPool2d = eqx.field(static=True)
    input_shape: tuple[int, int, int] = eqx.field(static=True)
    num_classes: int = eqx.field(static=True)

    def __init__(
        self,
        in_channels: int,
        image_size: int | Sequence[int],
        num_classes: int,
        *,
        key: PRNGKeyArray,
        stem: int = 8,
        growth: int = 4,
        block_layers: Sequence[int] = (2, 2),
        init_scale: float = 1.0,
    ):
        block_layers = tuple(block_layers)
        if not block_layers:
            raise bad_argument("block_layers", "is empty", "Pass e.g. block_layers=(2, 2).")
        c_in, size, k_out = _check_image(in_channels, image_size, num_classes, 2 ** len(block_layers))
        if any(s % 2 ** len(block_layers) for s in size):
            raise bad_argument("image_size", f"must be divisible by {2 ** len(block_layers)}", "Use fewer blocks or another size.")
        stem = check_int("stem", stem, example=4)
        growth = check_int("growth", growth, example=4)
        for i, k in enumerate(block_layers):
            check_int(f"block_layers[{i}]", k, example=4)
        init_scale = _check_init_scale(init_scale)
        f64 = jnp.float64
        keys = iter(jax.random.split(key, 2 + sum(block_layers) + len(block_layers)))
        with x64():
            self.stem = _scaled(eqx.nn.Conv2d(c_in, stem, 3, stride=2, padding=1, dtype=f64, key=next(keys)), init_scale)
            blocks, transitions, c = [], [], stem
            for b, k in enumerate(block_layers):
                layers = []
                for _ in range(k):
                    layers.append(_scaled(eqx.nn.Conv2d(c, growth, 3, padding=1, dtype=f64, key=next(keys)), init_scale))
                    c += growth
                blocks.append(tuple(layers))
                if b < len(block_layers) - 1:
                    c_next = (c + 1) // 2
                    transitions.append(_scaled(eqx.nn.Conv2d(c, c_next, 1, dtype=f64, key=next(keys)), init_scale))
                    c = c_next
            self.head = _scaled(eqx.nn.Linear(c, k_out, dtype=f64, key=next(keys)), init_scale)
        self.blocks = tuple(blocks)
        self.transitions = tuple(transitions)
        self.pool = eqx.nn.AvgPool2d(kernel_size=2, stride=2)
        self.input_shape = (c_in, *size)
        self.num_classes = k_out

    @property
    def degree(self) -> None:
        return None

    def _single(self, x: Float[Array, "C H W"]) -> Float[Array, " k"]:
        # r = relu(h), grown with h one block layer at a time: each pre-activation passes through
        # one ReLU (see the class docstring for why)
        h = self.stem(x)
        r = jax.nn.relu(h)
        for b, block in enumerate(self.blocks):
            for conv in block:
                new = conv(r)
                h = jnp.concatenate([h, new], axis=0)
                r = jnp.concatenate([r, jax.nn.relu(new)], axis=0)
            if b < len(self.transitions):
                h = self.pool(self.transitions[b](r))
                r = jax.nn.relu(h)
        return self.head(jnp.mean(r, axis=(1, 2)))

    def _pattern_single(self, x: Float[Array, "C H W"]) -> tuple[Array, ...]:
        # every ReLU of block b reads a prefix (in channels) of the block's final state, and the
        # transition / final ReLU reads all of it: that state is the block's pattern
        h, out = self.stem(x), []
        for b, block in enumerate(self.blocks):
            for conv in block:
                h = jnp.concatenate([h, conv(jax.nn.relu(h))], axis=0)
            out.append(h)
            if b < len(self.transitions):
                h = self.pool(self.transitions[b](jax.nn.relu(h)))
        return tuple(out)

    def activation_pattern(self, x: Float[Array, "n C H W"]) -> ActivationPattern:
        """One array per dense block, (n, channels, H_b, W_b): the block's final concatenated state,
        whose every entry passes through the block's ReLUs (each ReLU reads a channel prefix) and
        the following transition / final ReLU. No max-pools (see :mod:`gradflow.activations`)."""
        _check_x(x, self.input_shape, "SmallDenseNet")
        dtype = _float_dtype(x, self.stem.weight)
        net = self if self.stem.weight.dtype == dtype else _cast(self, dtype)
        return ActivationPattern(jax.vmap(net._pattern_single)(x.astype(dtype)))

    def __call__(self, x: Float[Array, "n C H W"]) -> Float[Array, "n k"]:
        _check_x(x, self.input_shape, "SmallDenseNet")
        dtype = _float_dtype(x, self.stem.weight)
        net = self if self.stem.weight.dtype == dtype else _cast(self, dtype)
        return jax.vmap(net._single)(x.astype(dtype))


class SmallResNet(Model):
    """ResNet-style network with biases (not homogeneous: ``degree`` is None).

    Stem h = relu(conv3×3(x)) with stride 2 to ``channels[0]`` (ResNet-18's stem also halves the
    image); stage s (channels c_s) has ``blocks_per_stage``
    basic blocks h ← relu(P(h) + conv3×3(relu(conv3×3(h)))), where the first block of every stage
    after the first has stride 2 and P is a 1×1 stride-2 convolution to c_s (P = identity
    otherwise); Φ(x) = A · mean_{pixels}(h) + b. Image sizes must be divisible by 2^stages.
    """

    stem: eqx.nn.Conv2d
    convs: tuple[tuple[eqx.nn.Conv2d, eqx.nn.Conv2d], ...]
    projections: tuple[eqx.nn.Conv2d | None, ...]
    head: eqx.nn.Linear
    input_shape: tuple[int, int, int] = eqx.field(static=True)
    num_classes: int = eqx.field(static=True)

    def __init__(
        self,
        in_channels: int,
        image_size: int | Sequence[int],
        num_classes: int,
        *,
        key: PRNGKeyArray,
        channels: Sequence[int] = (8, 16),
        blocks_per_stage: int = 1,
        init_scale: float = 1.0,
    ):
        channels = tuple(channels)
        if not channels:
            raise bad_argument("channels", "is empty", "Pass e.g. channels=(8, 16).")
        c_in, size, k_out = _check_image(in_channels, image_size, num_classes, 2 ** len(channels))
        if any(s % 2 ** len(channels) for s in size):
            raise bad_argument("image_size", f"must be divisible by {2 ** len(channels)}", "Use fewer stages or another size.")
        for i, c in enumerate(channels):
            check_int(f"channels[{i}]", c, example=4)
        per = check_int("blocks_per_stage", blocks_per_stage, example=4)
        init_scale = _check_init_scale(init_scale)
        f64 = jnp.float64
        keys = iter(jax.random.split(key, 2 + 3 * per * len(channels)))
        with x64():
            self.stem = _scaled(eqx.nn.Conv2d(c_in, channels[0], 3, stride=2, padding=1, dtype=f64, key=next(keys)), init_scale)
            convs, projections, c = [], [], channels[0]
            for s, c_s in enumerate(channels):
                for b in range(per):
                    stride = 2 if (s > 0 and b == 0) else 1
                    conv1 = eqx.nn.Conv2d(c, c_s, 3, stride=stride, padding=1, dtype=f64, key=next(keys))
                    conv2 = eqx.nn.Conv2d(c_s, c_s, 3, padding=1, dtype=f64, key=next(keys))
                    convs.append((_scaled(conv1, init_scale), _scaled(conv2, init_scale)))
                    if stride != 1 or c != c_s:
                        projections.append(_scaled(eqx.nn.Conv2d(c, c_s, 1, stride=stride, dtype=f64, key=next(keys)), init_scale))
                    else:
                        projections.append(None)
                    c = c_s
            self.head = _scaled(eqx.nn.Linear(c, k_out, dtype=f64, key=next(keys)), init_scale)
        self.convs = tuple(convs)
        self.projections = tuple(projections)
        self.input_shape = (c_in, *size)
        self.num_classes = k_out

    @property
    def degree(self) -> None:
        return None

    def _single(self, x: Float[Array, "C H W"]) -> Float[Array, " k"]:
        h = jax.nn.relu(self.stem(x))
        for (conv1, conv2), proj in zip(self.convs, self.projections, strict=True):
            skip = h if proj is None else proj(h)
            h = jax.nn.relu(skip + conv2(jax.nn.relu(conv1(h))))
        return self.head(jnp.mean(h, axis=(1, 2)))

    def _pattern_single(self, x: Float[Array, "C H W"]) -> tuple[Array, ...]:
        z = self.stem(x)
        out, h = [z], jax.nn.relu(z)
        for (conv1, conv2), proj in zip(self.convs, self.projections, strict=True):
            skip = h if proj is None else proj(h)
            inner = conv1(h)
            z = skip + conv2(jax.nn.relu(inner))
            out += [inner, z]
            h = jax.nn.relu(z)
        return tuple(out)

    def activation_pattern(self, x: Float[Array, "n C H W"]) -> ActivationPattern:
        """The ReLU inputs, (n, channels, H_s, W_s) each: the stem's, then per basic block the
        inner conv₁(h) and the block's skip + conv₂(·) (see :mod:`gradflow.activations`)."""
        _check_x(x, self.input_shape, "SmallResNet")
        dtype = _float_dtype(x, self.stem.weight)
        net = self if self.stem.weight.dtype == dtype else _cast(self, dtype)
        return ActivationPattern(jax.vmap(net._pattern_single)(x.astype(dtype)))

    def __call__(self, x: Float[Array, "n C H W"]) -> Float[Array, "n k"]:
        _check_x(x, self.input_shape, "SmallResNet")
        dtype = _float_dtype(x, self.stem.weight)
        net = self if self.stem.weight.dtype == dtype else _cast(self, dtype)
        return jax.vmap(net._single)(x.astype(dtype))
