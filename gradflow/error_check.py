r"""Error bars for a flow: ``simulate_flow(..., diagnostics=Diagnostics(error_check=True))``.

The run is integrated twice, at the requested tolerances (rtol, atol) and at (rtol/10, atol/10),
with the same save points. With an error-per-step controller the global error of a run scales
about like its tolerance, so the difference between the two runs estimates the error of the
first (the second's is ~10× smaller): it tells which digits of a plot to trust. Reported at
every save point, as ``result.diagnostics``:

* ``error_direction``: ‖W₁/‖W₁‖ − W₂/‖W₂‖‖ (defined for every model);
* ``error_margins``: max_i |p_i(W₁)/‖W₁‖^L − p_i(W₂)/‖W₂‖^L| (homogeneous models only);
* ``error_smoothed_margin``: |α̃₁ − α̃₂|, and ``error_smoothed_margin_rel`` = |α̃₁ − α̃₂| / |α̃₂|
  (homogeneous models only).

Rows are matched by save point: equal t in the time clock, equal ln(n/L) in the accuracy clock.
When both runs stopped at the same target (``until_accuracy`` or ``t_max``) their last rows are
compared too (there the two runs sit at the same target, not at the same clock value). Rows
without a partner are NaN. The second run's statistics are in ``result.stats["error_check"]``,
its tolerances and status in ``result.config["error_check"]``.

Memory: both runs store W at every save point while they run (2·T·k floats); the result keeps
``params_flat`` only when ``save_params=True`` was asked for. With a checkpoint, the second run keeps
its own file beside it (:func:`tight_checkpoint`).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable

import numpy as np

from .clock import get_clock
from .result import FlowResult

__all__ = ["TIGHTER", "error_diagnostics", "simulate_with_error_check", "tight_checkpoint"]

TIGHTER = 10.0  # the second run's tolerances are rtol/TIGHTER, atol/TIGHTER


def _match(key_a: np.ndarray, key_b: np.ndarray) -> np.ndarray:
    """For each entry of ``key_a`` the index of an equal (to 1e-9 relative) entry of ``key_b``, or −1."""
    order = np.argsort(key_b, kind="stable")
    sorted_b = key_b[order]
    pos = np.clip(np.searchsorted(sorted_b, key_a), 0, len(sorted_b) - 1)
    out = np.full(len(key_a), -1)
    for shift in (0, -1):
        cand = np.clip(pos + shift, 0, len(sorted_b) - 1)
        ok = np.isclose(sorted_b[cand], key_a, rtol=1e-9, atol=0.0) & (out < 0)
        out[ok] = order[cand[ok]]
    return out


def error_diagnostics(a: FlowResult, b: FlowResult) -> dict[str, np.ndarray]:
    """The differences of run ``a`` from run ``b`` at ``a``'s rows (see the module docstring).

    Both need ``diagnostics["params_flat"]``; ``a`` and ``b`` must share clock and save points."""
    da, db = a.diagnostics, b.diagnostics
    key = get_clock(a.config["clock"]).save_key
    j = _match(np.asarray(da[key], float), np.asarray(db[key], float))
    if a.status == b.status == "stopped at target" and len(da[key]) and len(db[key]):
        j[-1] = len(db[key]) - 1
    ok = j >= 0
    jj = j[ok]

    def at_rows(values):
        out = np.full(len(j), np.nan)
        out[ok] = values
        return out

    ua = np.asarray(da["params_flat"], float)[ok]
    ub = np.asarray(db["params_flat"], float)[jj]
    ua = ua / np.linalg.norm(ua, axis=1, keepdims=True)
    ub = ub / np.linalg.norm(ub, axis=1, keepdims=True)
    out = {"error_direction": at_rows(np.linalg.norm(ua - ub, axis=1))}
    if "margins" in da and "margins" in db:
        diff = np.abs(np.asarray(da["margins"])[ok] - np.asarray(db["margins"])[jj])
        out["error_margins"] = at_rows(np.max(diff, axis=1) if diff.size else np.zeros(0))
    if "smoothed_margin" in da and "smoothed_margin" in db:
        sa, sb = np.asarray(da["smoothed_margin"])[ok], np.asarray(db["smoothed_margin"])[jj]
        out["error_smoothed_margin"] = at_rows(np.abs(sa - sb))
        with np.errstate(divide="ignore", invalid="ignore"):
            out["error_smoothed_margin_rel"] = at_rows(np.abs(sa - sb) / np.abs(sb))
    return out


def tight_checkpoint(path: str) -> str:
    """The checkpoint file of the second run of a checkpointed run at ``path``: ``<root>.error_check.npz``."""
    root, ext = os.path.splitext(os.fspath(path))
    return f"{root}.error_check{ext or '.npz'}"


def simulate_with_error_check(simulate: Callable[[float], FlowResult], *, keep_params: bool) -> FlowResult:
    """``simulate(1.0)`` and ``simulate(TIGHTER)``: the flow with W saved at the save points, at the
    requested tolerances and at tolerances ``TIGHTER`` times smaller; returns the first result with
    the differences added (see the module docstring), and ``params_flat`` only if ``keep_params``."""
    first = simulate(1.0)
    with warnings.catch_warnings():  # the first run has already warned about the same problem
        warnings.simplefilter("ignore")
        second = simulate(TIGHTER)
    first.diagnostics.update(error_diagnostics(first, second))
    if not keep_params:
        first.diagnostics.pop("params_flat", None)
    first.stats["error_check"] = dict(second.stats)
    first.config["error_check"] = {"rtol": second.config["rtol"], "atol": second.config["atol"],
                                   "status": second.status, "reason": second.reason}
    return first
