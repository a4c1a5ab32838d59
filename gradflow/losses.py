r"""Margin losses in log space.

The paper's objective is a *sum* over examples (Section 2),

    L(W) = Σ_i ℓ(p_i(W)),   p_i(W) = y_i Φ(x_i; W),

with the exponential loss ℓ(z) = e^(−z) or the logistic loss ℓ(z) = ln(1 + e^(−z)). The multiclass
cross-entropy −ln softmax(Φ)_y equals the logistic loss of the *soft* multiclass margin
q_i = Φ_y − logsumexp_{j≠y} Φ_j, a smooth lower bound of the hard margin
p_i = Φ_y − max_{j≠y} Φ_j of Appendix A.

Nothing here forms L and then takes its log: ``log_loss`` is a logsumexp of ``log ℓ(q_i)``, and the
smoothed margin α = ℓ⁻¹(L) (Section 3.1) is computed from log L directly, so α, ∇α and ∇ log L stay
finite and accurate when L is far below the smallest float64 (L = e^(−5000) and beyond).
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from .errors import bad_argument

__all__ = [
    "Loss",
    "Exponential",
    "Logistic",
    "CrossEntropy",
    "get_loss",
    "LOSSES",
    "hard_margins",
]

# Below this, expansions in e^u replace expressions that underflow or cancel.
_SMALL = -20.0


@eqx.filter_jit
def _log_ell_zero(loss: Loss) -> Array:
    """ln ℓ(0), one compiled call (not each log-space operation compiled eagerly)."""
    return loss.log_ell(jnp.zeros(()))


class Loss(eqx.Module):
    """A margin loss ℓ and its inverse, all in log space. Subclasses are stateless."""

    name: str = eqx.field(static=True)
    multiclass: bool = eqx.field(static=True)

    def log_ell(self, z: Array) -> Array:
        """ln ℓ(z), elementwise."""
        raise NotImplementedError

    def alpha_from_log_loss(self, log_loss: Array) -> Array:
        """α = ℓ⁻¹(L) from ln L, without forming L when it underflows."""
        raise NotImplementedError

    def log_neg_derivative(self, alpha: Array) -> Array:
        """ln |ℓ'(α)|: the scalar with ∇L = ℓ'(α) ∇α (Lemma C.2)."""
        raise NotImplementedError

    @property
    def ell_zero(self) -> float:
        """ℓ(0): Assumption 2.3 asks L(W_0) < ℓ(0)."""
        return math.exp(float(_log_ell_zero(self)))

    def soft_margins(self, outputs: Array, y: Array) -> Float[Array, " n"]:
        """The arguments q_i of ℓ: y_i Φ(x_i) (binary) or Φ_y − logsumexp_{j≠y} Φ_j (multiclass)."""
        if self.multiclass:
            return _soft_multiclass_margins(outputs, y)
        return y * outputs

    def log_loss(self, outputs: Array, y: Array) -> Array:
        """ln L = logsumexp_i ln ℓ(q_i)."""
        return jax.nn.logsumexp(self.log_ell(self.soft_margins(outputs, y)))

    def alpha(self, outputs: Array, y: Array) -> Array:
        """The smoothed margin α = ℓ⁻¹(L) (Section 3.1)."""
        return self.alpha_from_log_loss(self.log_loss(outputs, y))


class Exponential(Loss):
    """ℓ(z) = e^(−z): ln ℓ(z) = −z, α = −ln L, |ℓ'(α)| = e^(−α) = L."""

    def __init__(self):
        self.name = "exponential"
        self.multiclass = False

    def log_ell(self, z):
        return -z

    def alpha_from_log_loss(self, log_loss):
        return -log_loss

    def log_neg_derivative(self, alpha):
        return -alpha


def _log_softplus(u: Array) -> Array:
    """ln ln(1 + e^u), accurate for every u (ln(1+e^u) ≈ e^u(1 − e^u/2) for u ≪ 0)."""
    small = u < _SMALL
    # clamp with where, not min/max: at a tie u = _SMALL, d max(u, c)/du is 1/2 in JAX
    lo = jnp.where(small, u, _SMALL)
    hi = jnp.where(small, _SMALL, u)
    return jnp.where(small, lo + jnp.log1p(-0.5 * jnp.exp(lo)), jnp.log(jax.nn.softplus(hi)))


def _logistic_inverse_from_log(log_loss: Array) -> Array:
    """α = ℓ⁻¹(L) = −ln(e^L − 1) for the logistic loss, from l = ln L.

    Three regimes: L ≪ 1 uses ln(e^L − 1) = l + ln(1 + L/2 + L²/6 + …); L ≫ 1 uses
    ln(e^L − 1) = L + ln(1 − e^(−L)); in between the direct formula is exact enough."""
    big = math.log(30.0)
    below, above = log_loss < _SMALL, log_loss > big
    lo = jnp.where(below, log_loss, _SMALL)  # where-clamps: exact gradients at the ties (see _log_softplus)
    mid = jnp.where(below | above, jnp.where(below, _SMALL, big), log_loss)
    hi = jnp.where(above, log_loss, big)
    e_lo = jnp.exp(lo)
    small_branch = -lo - jnp.log1p(0.5 * e_lo + e_lo**2 / 6.0)
    mid_branch = -jnp.log(jnp.expm1(jnp.exp(mid)))
    e_hi = jnp.exp(hi)
    big_branch = -e_hi - jnp.log1p(-jnp.exp(-e_hi))
    return jnp.where(below, small_branch, jnp.where(above, big_branch, mid_branch))


class Logistic(Loss):
    """ℓ(z) = ln(1 + e^(−z)): α = −ln(e^L − 1), |ℓ'(α)| = 1/(1 + e^α)."""

    def __init__(self):
        self.name = "logistic"
        self.multiclass = False

    def log_ell(self, z):
        return _log_softplus(-z)

    def alpha_from_log_loss(self, log_loss):
        return _logistic_inverse_from_log(log_loss)

    def log_neg_derivative(self, alpha):
        return -jax.nn.softplus(alpha)


class CrossEntropy(Logistic):
    """Multiclass cross-entropy −ln softmax(Φ(x_i))_{y_i} = ℓ_log(q_i) with the soft margin
    q_i = Φ_y − logsumexp_{j≠y} Φ_j; labels are integers 0..C−1, outputs have shape (n, C)."""

    def __init__(self):
        self.name = "cross_entropy"
        self.multiclass = True


def _soft_multiclass_margins(outputs: Float[Array, "n c"], y: Int[Array, " n"]) -> Float[Array, " n"]:
    onehot = jax.nn.one_hot(y, outputs.shape[-1], dtype=bool)
    correct = jnp.sum(jnp.where(onehot, outputs, 0.0), axis=-1)
    others = jax.nn.logsumexp(jnp.where(onehot, -jnp.inf, outputs), axis=-1)
    return correct - others


def hard_margins(outputs: Array, y: Array, multiclass: bool) -> Float[Array, " n"]:
    """p_i = y_i Φ(x_i) (binary) or Φ_y − max_{j≠y} Φ_j (multiclass, Appendix A)."""
    if not multiclass:
        return y * outputs
    onehot = jax.nn.one_hot(y, outputs.shape[-1], dtype=bool)
    correct = jnp.sum(jnp.where(onehot, outputs, 0.0), axis=-1)
    others = jnp.max(jnp.where(onehot, -jnp.inf, outputs), axis=-1)
    return correct - others


LOSSES: dict[str, type[Loss]] = {
    "exponential": Exponential,
    "exp": Exponential,
    "logistic": Logistic,
    "log": Logistic,
    "cross_entropy": CrossEntropy,
    "ce": CrossEntropy,
}


def get_loss(loss: str | Loss) -> Loss:
    """A :class:`Loss` from a name ('exponential', 'logistic', 'cross_entropy') or an instance."""
    if isinstance(loss, Loss):
        return loss
    if isinstance(loss, str) and loss.lower() in LOSSES:
        return LOSSES[loss.lower()]()
    raise bad_argument(
        "loss",
        f"unknown loss {loss!r}",
        "Use one of 'exponential', 'logistic', 'cross_entropy' or a gradflow.losses.Loss.",
    )
