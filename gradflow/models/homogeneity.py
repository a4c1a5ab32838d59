"""Numerical check of positive homogeneity: Φ(x; cW) = c^L Φ(x; W) for c > 0.

Only the trainable parameters W (see :func:`gradflow.params.partition`) are scaled; fixed signs
and :class:`~gradflow.params.Frozen` weights stay put.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import ArrayLike, PyTree

from gradflow.errors import bad_argument
from gradflow.interop import ExternalModel, as_gradflow_model, unwrap, wrap
from gradflow.model import Model
from gradflow.params import model_outputs, partition
from gradflow.precision import x64

__all__ = ["HomogeneityReport", "check_homogeneity", "resolve_degree", "DEGREE_EXAMPLES"]

DEGREE_EXAMPLES = 16  # examples used to measure an undeclared degree

_NEGLIGIBLE = 1e-10  # |Φ(x_i; W)| below this fraction of max_i |Φ(x_i; W)| is left out of the fit


@dataclasses.dataclass(frozen=True)
class HomogeneityReport:
    """Result of :func:`check_homogeneity`.

    Attributes:
        degree: the measured degree L (``round(estimate)``) when the model passes the check,
            else None.
        estimate: least-squares slope of log(|Φ(x; cW)| / |Φ(x; W)|) against log c (through the
            origin) over all scales and all output entries with non-negligible |Φ(x; W)|;
            NaN when Φ(x; W) ≡ 0 on x (then any degree fits: ``degree`` is the declared one,
            ``homogeneous`` True, if Φ(x; cW) ≡ 0 too).
        max_relative_error: max over scales c of ‖Φ(x; cW) − c^L Φ(x; W)‖_∞ / ‖c^L Φ(x; W)‖_∞
            at L = round(estimate) (inf when some output is not finite).
        homogeneous: ``max_relative_error <= rtol``.
        rtol: the tolerance used.
        scales: the factors c tried.
        declared_degree: the model's own ``degree`` attribute (None if it has none).
    """

    degree: int | None
    estimate: float
    max_relative_error: float
    homogeneous: bool
    rtol: float
    scales: tuple[float, ...]
    declared_degree: int | None = None

    def __str__(self) -> str:
        declared = "" if self.declared_degree is None else f"; declared degree {self.declared_degree}"
        if math.isnan(self.estimate):
            if self.homogeneous:
                return (
                    f"Φ(x; W) and Φ(x; cW) vanish on every input: consistent with any degree, none measured{declared}"
                )
            return (
                f"not homogeneous: no degree can be fitted (max relative error {self.max_relative_error:.2e}){declared}"
            )
        nearest = round(self.estimate)
        if self.homogeneous:
            agree = ""
            if self.declared_degree is not None and self.declared_degree != self.degree:
                agree = " (DISAGREES with the declared degree)"
            return (
                f"homogeneous of degree {self.degree}{agree}: fitted slope "
                f"{self.estimate:.6f}, max relative error {self.max_relative_error:.2e} "
                f"<= rtol {self.rtol:.1e} over scales {self.scales}{declared}"
            )
        return (
            f"not homogeneous: fitted slope {self.estimate:.6f}; at the nearest integer "
            f"L = {nearest} the max relative error is {self.max_relative_error:.2e} "
            f"> rtol {self.rtol:.1e} over scales {self.scales}{declared}"
        )


def _declared_degree(model: object) -> int | None:
    try:
        deg = model.degree  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - any model without a usable degree
        return None
    return deg if isinstance(deg, int) and not isinstance(deg, bool) else None


@eqx.filter_jit
def _outputs_at_scale(params, static, x, c) -> jax.Array:
    """Φ(x; cW), one compiled call for every scale c."""
    return model_outputs(jax.tree_util.tree_map(lambda p: p * c.astype(p.dtype), params), static, x)


def check_homogeneity(
    model: PyTree,
    x: ArrayLike,
    *,
    scales: Sequence[float] = (0.5, 2.0, 3.0),
    rtol: float = 1e-6,
) -> HomogeneityReport:
    """Measure the homogeneity degree of ``model`` on the inputs ``x``.

    Computes Φ(x; W) and Φ(x; cW) for each c in ``scales`` (scaling only the trainable
    parameters) in float64, fits the degree by least squares on log-ratios, rounds it to the
    nearest integer L and reports the max relative error of c^L Φ(x; W) against Φ(x; cW).

    Args:
        model: a gradflow model (``model(x)`` on a batch), or any model :func:`gradflow.simulate_flow`
            accepts (an Equinox or Flax NNX module, :func:`gradflow.as_model`): its batch convention
            is detected on ``x`` (see :mod:`gradflow.interop`).
        x: a batch of inputs, e.g. shape (n, d); non-empty, no NaN.
        scales: the factors c > 0 (at least one ≠ 1).
        rtol: tolerance on the relative error for ``homogeneous``.

    Raises:
        ValueError: naming ``x``, ``scales``, ``rtol`` or ``model`` when the argument is unusable.
    """
    scales = tuple(float(c) for c in scales)
    if not scales:
        raise bad_argument("scales", "is empty", "Pass e.g. scales=(0.5, 2.0, 3.0).")
    if any(not (math.isfinite(c) and c > 0.0) for c in scales):
        raise bad_argument("scales", f"must be finite and > 0, got {scales}", "Pass e.g. scales=(0.5, 2.0, 3.0).")
    if all(c == 1.0 for c in scales):
        raise bad_argument("scales", f"needs a factor other than 1, got {scales}", "Pass e.g. scales=(0.5, 2.0, 3.0).")
    rtol = float(rtol)
    if not (math.isfinite(rtol) and rtol >= 0.0):
        raise bad_argument("rtol", f"must be finite and >= 0, got {rtol}", "Pass e.g. rtol=1e-6.")

    with x64():
        x_arr = jnp.asarray(x)
        if x_arr.size == 0:
            raise bad_argument("x", f"is empty (shape {tuple(x_arr.shape)})", "Pass at least one input.")
        x_arr = x_arr.astype(jnp.float64)
        if np.isnan(np.asarray(x_arr)).any():
            raise bad_argument("x", "contains NaN", "Drop or impute the NaN inputs.")
        # any model gradflow accepts (Equinox, Flax NNX, as_model): batch convention detected on x
        model = as_gradflow_model(model, x_arr)
        params, static = partition(model)
        if not jax.tree_util.tree_leaves(params):
            raise bad_argument("model", "has no trainable floating-point parameters", "Pass a model with float arrays.")

        def phi(c: float) -> np.ndarray:
            return np.asarray(_outputs_at_scale(params, static, x_arr, jnp.asarray(c)), dtype=np.float64).ravel()

        base = phi(1.0)
        outs = [phi(c) for c in scales]

    declared = _declared_degree(model)
    nan = float("nan")
    if not (np.all(np.isfinite(base)) and all(np.all(np.isfinite(out)) for out in outs)):
        return HomogeneityReport(None, nan, math.inf, False, rtol, scales, declared)
    abs_base = np.abs(base)
    peak = float(np.max(abs_base))
    if peak == 0.0:
        # Φ(x; W) ≡ 0 on x: Φ(x; cW) ≡ 0 is consistent with every degree, so no degree can be
        # measured; report the declared one (if any) as consistent.
        vanishes = all(not np.any(out) for out in outs)
        return HomogeneityReport(
            declared if vanishes else None,
            nan,
            0.0 if vanishes else math.inf,
            vanishes,
            rtol,
            scales,
            declared,
        )
    mask = abs_base > _NEGLIGIBLE * peak
    for out in outs:
        mask &= out != 0.0
    if not np.any(mask):  # Φ(x; cW) vanishes wherever Φ(x; W) does not
        return HomogeneityReport(None, nan, math.inf, False, rtol, scales, declared)

    logc = np.log(np.asarray(scales))
    log_ratios = np.stack([np.log(np.abs(out[mask])) - np.log(abs_base[mask]) for out in outs])
    estimate = float(np.sum(logc[:, None] * log_ratios) / (np.sum(logc**2) * int(mask.sum())))

    level = round(estimate)
    err = max(
        float(np.max(np.abs(out - c**level * base))) / (c**level * peak) for c, out in zip(scales, outs, strict=True)
    )
    homogeneous = err <= rtol
    return HomogeneityReport(level if homogeneous else None, estimate, err, homogeneous, rtol, scales, declared)


def _measure_degree(model: ExternalModel, x) -> tuple[int | None, str]:
    report = check_homogeneity(model, np.asarray(x[:DEGREE_EXAMPLES]))
    name = type(unwrap(model)).__name__ if model.kind != "function" else "as_model(apply, params)"
    if report.homogeneous and report.degree is not None and report.degree >= 1:
        warnings.warn(
            f"model {name} declares no degree; measured L = {report.degree} (max relative error "
            f"{report.max_relative_error:.1e} <= {report.rtol:.0e} at c in {report.scales}). Declare it with "
            f"gradflow.as_model(model, degree={report.degree}) to skip the measurement.",
            stacklevel=5,
        )
        return report.degree, f"measured: homogeneous of degree {report.degree} ({report.max_relative_error:.1e} <= {report.rtol:.0e})"
    warnings.warn(
        f"model {name} declares no degree and is not measurably homogeneous ({report}); it is treated as "
        "non-homogeneous: smoothed_margin, beta, margin, margins and potential are left out of the result. "
        "Declare the degree with gradflow.as_model(model, degree=L) if it is homogeneous.",
        stacklevel=5,
    )
    return None, "measured: not homogeneous"


def resolve_degree(model: Model, x) -> tuple[Model, str]:
    """``model`` with a degree: the declared one, or one measured on ``x`` (up to
    :data:`DEGREE_EXAMPLES` examples, with one warning); and where it came from ('declared' or
    'measured: …')."""
    if not isinstance(model, ExternalModel) or model.degree_declared:
        return model, "declared"
    degree, source = _measure_degree(model, x)
    return wrap(model, degree=degree), source
