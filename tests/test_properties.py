"""Property tests (hypothesis): the log-space losses against 50-digit mpmath references, positive
homogeneity of every model for random scales and parameters, and save/load round-trips of FlowResult.

Shapes are fixed (and the compiled functions jitted once per loss/model) so examples hit the jit
cache; the example counts keep the whole file to a few seconds of CPU.
"""

from __future__ import annotations

import math
import os
import tempfile

import jax
import jax.numpy as jnp
import mpmath as mp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import gradflow as gf
from gradflow.params import combine, partition

mp.mp.dps = 50

# database=None: no .hypothesis/ directory in the working tree.
SETTINGS = settings(max_examples=25, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
Z_LO, Z_HI = -1e3, 1e5
NZ = 8  # margins per example (fixed: one compilation per loss)
zs = st.lists(st.floats(Z_LO, Z_HI, allow_nan=False), min_size=NZ, max_size=NZ)
# Margins near 0, where ℓ, ℓ⁻¹ switch branches, deserve more than their share of the range.
zs_near = st.lists(st.one_of(st.floats(-40.0, 40.0), st.floats(Z_LO, Z_HI)), min_size=NZ, max_size=NZ)


# --------------------------------------------------------------------------------------------------
# losses vs mpmath
# --------------------------------------------------------------------------------------------------


def _mp_ell(name, z):
    """ℓ(z) at 50 digits."""
    z = mp.mpf(z)
    return mp.exp(-z) if name == "exponential" else mp.log1p(mp.exp(-z))


def _mp_dlog_ell(name, z):
    """d/dz ln ℓ(z)."""
    z = mp.mpf(z)
    if name == "exponential":
        return mp.mpf(-1)
    return -mp.exp(-z) / ((1 + mp.exp(-z)) * mp.log1p(mp.exp(-z)))


def _mp_inverse(name, log_loss):
    """α = ℓ⁻¹(L) from l = ln L, and dα/dl."""
    big_l = mp.exp(mp.mpf(log_loss))
    if name == "exponential":
        return -mp.mpf(log_loss), mp.mpf(-1)
    alpha = -mp.log(mp.expm1(big_l))
    return alpha, -big_l * mp.exp(big_l) / mp.expm1(big_l)


def _mp_log_neg_derivative(name, alpha):
    """ln |ℓ'(α)|."""
    alpha = mp.mpf(alpha)
    return -alpha if name == "exponential" else -mp.log1p(mp.exp(alpha))


_LOSS_FNS = {}


def _loss_fns(name):
    """Jitted, vectorised ln ℓ, d ln ℓ/dz, ℓ⁻¹ from ln L, dℓ⁻¹/d ln L and ln|ℓ'| (float64)."""
    if name not in _LOSS_FNS:
        loss = gf.get_loss(name)
        _LOSS_FNS[name] = (
            jax.jit(jax.vmap(loss.log_ell)),
            jax.jit(jax.vmap(jax.grad(loss.log_ell))),
            jax.jit(jax.vmap(loss.alpha_from_log_loss)),
            jax.jit(jax.vmap(jax.grad(loss.alpha_from_log_loss))),
            jax.jit(jax.vmap(loss.log_neg_derivative)),
        )
    return _LOSS_FNS[name]


def _close(got, want, *, rtol, atol=0.0, what=""):
    got = float(got)
    err = abs(mp.mpf(got) - want)
    assert err <= rtol * abs(want) + atol, f"{what}: got {got!r}, want {mp.nstr(want, 20)}, error {mp.nstr(err, 3)}"


@pytest.mark.parametrize("name", ["exponential", "logistic"])
@SETTINGS
@given(z=zs_near)
def test_binary_loss_matches_mpmath(name, z):
    """ln ℓ(z), d ln ℓ/dz, α = ℓ⁻¹(L) from ln L, dα/d ln L and ln|ℓ'(α)| to ~1e-14 relative, for
    z ∈ [−1e3, 1e5] (ℓ(z) from e^1000 down to e^−100000: no forming of ℓ itself)."""
    log_ell, dlog_ell, inverse, dinverse, log_neg_d = _loss_fns(name)
    with gf.x64():
        z_arr = jnp.asarray(z, jnp.float64)
        values = [np.asarray(f(z_arr)) for f in (log_ell, dlog_ell)]
        log_l = values[0]  # ln L for a single example at margin z, as float64: the input of ℓ⁻¹
        alpha, dalpha = np.asarray(inverse(jnp.asarray(log_l))), np.asarray(dinverse(jnp.asarray(log_l)))
        lnd = np.asarray(log_neg_d(z_arr))
    for i, zi in enumerate(z):
        ref = mp.log(_mp_ell(name, zi))
        # ln ℓ crosses 0 near z = −0.54 (logistic): relative error there is measured against ln 2's scale.
        _close(values[0][i], ref, rtol=4e-15, atol=1e-15, what=f"ln ℓ({zi})")
        _close(values[1][i], _mp_dlog_ell(name, zi), rtol=1e-13, what=f"d ln ℓ/dz({zi})")
        want_alpha, want_dalpha = _mp_inverse(name, log_l[i])
        # α is evaluated at the float64 ln L, so the reference sees the same input; |dα/dl| can be
        # large (L ≫ 1: dα/dl ≈ −L), hence the absolute term scaled by it.
        _close(alpha[i], want_alpha, rtol=1e-14, atol=4e-16 * float(abs(want_dalpha * log_l[i])) + 1e-15, what=f"α(ln L={log_l[i]!r})")
        _close(dalpha[i], want_dalpha, rtol=1e-12, what=f"dα/dl(ln L={log_l[i]!r})")
        # round trip: ℓ⁻¹(ℓ(z)) = z up to the rounding of ln ℓ(z)
        assert abs(alpha[i] - zi) <= 1e-12 * max(1.0, abs(zi)) + 4e-16 * float(abs(want_dalpha * log_l[i])), (zi, alpha[i])
        _close(lnd[i], _mp_log_neg_derivative(name, zi), rtol=1e-14, atol=1e-15, what=f"ln|ℓ'({zi})|")


N_CE = 4
_CE = {}


def _ce_fns(num_classes):
    if num_classes not in _CE:
        loss = gf.CrossEntropy()
        _CE[num_classes] = (
            jax.jit(loss.log_loss),
            jax.jit(jax.grad(loss.log_loss)),
            jax.jit(loss.soft_margins),
        )
    return _CE[num_classes]


@pytest.mark.parametrize("num_classes", [2, 3])
@SETTINGS
@given(
    q=st.lists(st.one_of(st.floats(-30.0, 30.0), st.floats(Z_LO, Z_HI)), min_size=N_CE, max_size=N_CE),
    others=st.lists(st.floats(-5.0, 5.0), min_size=N_CE * 3, max_size=N_CE * 3),
    labels=st.lists(st.integers(0, 2), min_size=N_CE, max_size=N_CE),
)
def test_cross_entropy_matches_mpmath(num_classes, q, others, labels):
    """Cross-entropy via the soft margin: ln L = ln Σ_i −ln softmax(Φ_i)_{y_i} and ∂ ln L/∂Φ against
    mpmath, for soft margins q_i from −1e3 to 1e5 (Φ_y = q + logsumexp of the other outputs)."""
    c = num_classes
    y = np.asarray(labels) % c
    outs = np.asarray(others, dtype=np.float64).reshape(N_CE, 3)[:, : c - 1]
    phi = np.empty((N_CE, c))
    for i in range(N_CE):
        rest = outs[i]
        phi[i] = np.insert(rest, y[i], q[i] + np.logaddexp.reduce(rest))
    log_loss_fn, grad_fn, margins_fn = _ce_fns(c)
    with gf.x64():
        got_log_loss = float(log_loss_fn(jnp.asarray(phi), jnp.asarray(y)))
        got_grad = np.asarray(grad_fn(jnp.asarray(phi), jnp.asarray(y)))
        got_q = np.asarray(margins_fn(jnp.asarray(phi), jnp.asarray(y)))
    # references from the float64 Φ actually passed in
    # (without cancellation: at q = 1e5, lse − Φ_y would need 43,000 digits)
    rows = [[mp.mpf(float(v)) for v in phi[i]] for i in range(N_CE)]
    ratios = [[mp.exp(v - row[y[i]]) if j != y[i] else mp.mpf(0) for j, v in enumerate(row)] for i, row in enumerate(rows)]
    s = [mp.fsum(r) for r in ratios]  # Σ_{j≠y} e^(Φ_j − Φ_y)
    ell = [mp.log1p(si) for si in s]  # −ln softmax_y = ln(1 + s)
    big_l = mp.fsum(ell)
    _close(got_log_loss, mp.log(big_l), rtol=1e-14, atol=1e-15, what="ln L")
    scale = max(abs(v) for row in got_grad for v in row)
    for i in range(N_CE):
        _close(got_q[i], -mp.log(s[i]), rtol=1e-14, atol=1e-13, what="soft margin")
        for j in range(c):
            # ∂ℓ_i/∂Φ_j = softmax_j − [j = y]: e^(Φ_j − Φ_y)/(1 + s) for j ≠ y, −s/(1 + s) for j = y
            d_ell = -s[i] / (1 + s[i]) if j == y[i] else ratios[i][j] / (1 + s[i])
            want = d_ell / big_l
            # the soft margin Φ_y − logsumexp_{j≠y} Φ_j is rounded to ulp(|Φ|), and ∂ℓ/∂Φ depends
            # on it through e^(−q): a relative error of ~eps·|Φ| is the conditioning, not a bug
            # (hypothesis found q = 32,433: 1.6e-12 relative)
            cond = 4 * np.finfo(np.float64).eps * float(np.max(np.abs(phi)))
            _close(got_grad[i, j], want, rtol=1e-12 + cond, atol=1e-14 * scale, what=f"∂ ln L/∂Φ[{i},{j}]")


# --------------------------------------------------------------------------------------------------
# homogeneity of every model
# --------------------------------------------------------------------------------------------------

_K = jax.random.split(jax.random.key(3), 8)
D = 3


def _models():
    sq = gf.TwoLayerSquaredReLU(D, 4, key=_K[3])
    return {
        "linear": (gf.Linear(D, key=_K[0]), (5, D)),
        "deep_linear": (gf.DeepLinear(3, (D, 4, 4), key=_K[1]), (5, D)),
        "mlp": (gf.ReLUMLP((D, 4, 4, 1), key=_K[2]), (5, D)),
        "mlp_multiclass": (gf.ReLUMLP((D, 4, 3), key=_K[4]), (5, D)),
        "squared_relu": (sq, (5, D)),
        "frozen_activation": (gf.linearize(sq, init=np.ones((4, D))), (5, D)),
        "cnn": (gf.HomogeneousCNN(2, 4, 2, key=_K[5], channels=(2, 2), hidden=(3, 3), kernel_size=3), (3, 2, 4, 4)),
    }


_MODELS: dict = {}


def _model(name):
    if not _MODELS:
        _MODELS.update(_models())
    return _MODELS[name]


def _pair_fn(model):
    _, static = partition(model)

    @jax.jit
    def pair(params, x, c):
        scaled = jax.tree_util.tree_map(lambda a: c * a, params)
        return combine(scaled, static)(x), combine(params, static)(x)

    return pair


_PAIRS: dict = {}


@pytest.mark.parametrize("name", ["linear", "deep_linear", "mlp", "mlp_multiclass", "squared_relu", "frozen_activation", "cnn"])
@settings(max_examples=15, deadline=None, database=None)
@given(seed=st.integers(0, 2**32 - 1), c=st.floats(0.05, 20.0))
def test_models_are_positively_homogeneous(name, seed, c):
    """Φ(x; cW) = c^L Φ(x; W) to 1e-10 relative for random W (all trainable leaves redrawn), random x,
    random c > 0, with L the declared degree; ReLU kinks are kept generic by the random draws."""
    model, x_shape = _model(name)
    if name not in _PAIRS:
        _PAIRS[name] = _pair_fn(model)
    rng = np.random.default_rng(seed)
    params, _ = partition(model)
    with gf.x64():
        params = jax.tree_util.tree_map(lambda a: jnp.asarray(rng.standard_normal(a.shape)), params)
        x = jnp.asarray(rng.standard_normal(x_shape))
        scaled, base = (np.asarray(v) for v in _PAIRS[name](params, x, jnp.asarray(c, jnp.float64)))
    want = c**model.degree * base
    assert scaled.shape == base.shape and np.all(np.isfinite(scaled))
    assert np.max(np.abs(base)) > 0 or name in ("mlp", "mlp_multiclass", "cnn")  # a ReLU net may be dead on x
    np.testing.assert_allclose(scaled, want, rtol=0, atol=1e-10 * np.max(np.abs(want)))
    # ... and not of a neighbouring degree (unless c ≈ 1 makes the test vacuous)
    if abs(math.log(c)) > 0.1 and np.max(np.abs(base)) > 0:
        assert np.max(np.abs(scaled - c ** (model.degree + 1) * base)) > 1e-6 * np.max(np.abs(want))


# --------------------------------------------------------------------------------------------------
# save / load round trips
# --------------------------------------------------------------------------------------------------

_DTYPES = st.sampled_from([np.float64, np.float32, np.int64, np.int32, np.bool_])


@st.composite
def _array(draw):
    dtype = draw(_DTYPES)
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4))
    return draw(hnp.arrays(dtype, shape))


_names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,12}", fullmatch=True)
_param_names = st.from_regex(r"(\.[a-z_]{1,6}(\[[0-9]\])?){1,3}", fullmatch=True)
_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False), st.text(max_size=20))
_json = st.recursive(_scalars, lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)), max_leaves=12)


@settings(max_examples=40, deadline=None, database=None)
@given(
    diagnostics=st.dictionaries(_names, _array(), max_size=6),
    params=st.dictionaries(_param_names, _array(), max_size=4),
    status=st.sampled_from(["completed", "stopped at target", "failed"]),
    reason=st.text(max_size=40),
    stats=st.dictionaries(_names, st.one_of(st.integers(0, 2**53), st.floats(0, 1e9), st.none()), max_size=5),
    config=st.dictionaries(st.text(max_size=10), _json, max_size=6),
)
def test_save_load_round_trip(diagnostics, params, status, reason, stats, config):
    """Arrays (values, NaN/inf, dtype, shape, 0-d and empty), status, reason (any unicode), stats and
    a JSON-typed config survive save/load."""
    r = gf.FlowResult(diagnostics=diagnostics, status=status, reason=reason, stats=stats, config=config, params=params)
    with tempfile.TemporaryDirectory() as d:
        path = r.save(os.path.join(d, "run"))
        assert path.endswith("run.npz") and os.listdir(d) == ["run.npz"]  # no temporary file left
        back = gf.load_result(path)
    assert back.status == status and back.reason == reason
    assert back.stats == stats and back.config == config
    for stored, original in ((back.diagnostics, diagnostics), (back.params, params)):
        assert sorted(stored) == sorted(original)
        for k, v in original.items():
            assert stored[k].dtype == v.dtype and stored[k].shape == v.shape, k
            np.testing.assert_array_equal(stored[k], v, err_msg=k)


def test_logistic_derivatives_at_branch_points():
    """The regime switches of the logistic loss (u = −z = −20; ln L = −20 and ln 30) are clamped
    with where, so the derivatives there are exact (min/max clamps give half the slope at a tie)."""
    log_ell, dlog_ell, inverse, dinverse, _ = _loss_fns("logistic")
    with gf.x64():
        d = np.asarray(dlog_ell(jnp.asarray([20.0, 19.999999, 20.000001])))
        ls = [-20.0, float(np.log(30.0))]
        da = np.asarray(dinverse(jnp.asarray(ls)))
    for zi, got in zip([20.0, 19.999999, 20.000001], d, strict=True):
        _close(got, _mp_dlog_ell("logistic", zi), rtol=1e-13, what=f"d ln ℓ/dz({zi})")
    for li, got in zip(ls, da, strict=True):
        _close(got, _mp_inverse("logistic", li)[1], rtol=1e-12, what=f"dα/dl({li})")
