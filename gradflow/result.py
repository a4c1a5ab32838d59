"""The result of a flow or a descent run, and its npz/JSON storage (no pickle)."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import bad_argument
from .interop import model_from_params
from .params import params_to_dict  # noqa: F401  (re-exported: result.params_to_dict)

__all__ = ["FlowResult", "json_default", "load_result"]

_FORMAT = "gradflow-result/1"


@dataclass
class FlowResult:
    """Diagnostics along a trajectory W_t, one row per save point: the arrays below have length T
    (the save points reached) unless stated. Normalized quantities are NaN when ``degree`` is None
    (non-homogeneous model).

    Attributes:
      t: physical time (inf where it overflows float64; then use ``log_t``); for descent runs
        t = Σ_k η_k. log_t: ln t.
      loss, log_loss: L and ln L (``loss`` underflows to 0 below e^(−745); ``log_loss`` does not).
      accuracy: ln(n/L), the x-axis of Figure 2.
      alpha: smoothed margin α = ℓ⁻¹(L). norm: ‖W‖. layer_norms: (T, leaves) norm of each
        parameter array. smoothed_margin: α̃ = α/‖W‖^L. beta: β = ⟨W,∇α⟩/L (Lemma C.2).
      margin: min_i p_i/‖W‖^L. margins: (T, n) per-example p_i/‖W‖^L. raw_margins: (T, n) p_i.
      angle: θ_t between W and −∇L (radians). path_length: ζ_t, length of W_t/‖W_t‖'s path
        (Lemma 3.4). potential: J = ‖∇α‖²/‖W‖^(2L−2). grad_norm: ‖∇α‖.
        log_grad_loss_norm: ln ‖∇L‖. train_error: fraction of p_i ≤ 0.
      sharpness: λ_max(∇²L) of the sum loss (physical units; 0 where it underflows float64).
        log_sharpness: ln λ_max (finite at any ln L; NaN when λ_max < 0). sharpness_hvps: HVPs
        spent at each point. min_eigenvalue: λ_min(∇²L) (when asked for). two_over_eta,
        log_two_over_eta (descent runs): the stability bound 2/η_k. See :mod:`gradflow.sharpness`.
      activation_flips, pool_switches, near_zero_share: the activation pattern's changes since
        the previous save point (models with ``activation_pattern``; :mod:`gradflow.activations`).
      error_direction, error_margins, error_smoothed_margin(_rel): differences from a run at
        10× tighter tolerances (``Diagnostics(error_check=True)``; :mod:`gradflow.error_check`).
    model: the model at the final state. params: its trainable leaves as numpy arrays.
    status: "completed", "stopped at target" or "failed"; reason: why (empty when completed).
    stats: steps, accepted/rejected steps, gradient evaluations, wall time (s), ...
    config: the options of the run (loss, clock, solver, tolerances, degree, ...).
    """

    diagnostics: dict[str, np.ndarray]
    status: str
    reason: str
    stats: dict[str, Any]
    config: dict[str, Any]
    params: dict[str, np.ndarray] = field(default_factory=dict)
    model: Any = None

    def __getattr__(self, name):
        diags = self.__dict__.get("diagnostics", {})
        if name in diags:
            return diags[name]
        raise AttributeError(f"FlowResult has no attribute {name!r}; diagnostics: {sorted(diags)}")

    @property
    def degree(self) -> int | None:
        return self.config.get("degree")

    @property
    def homogeneous(self) -> bool:
        return self.degree is not None

    @property
    def edge_step(self) -> int | None:
        """Descent runs with sharpness: the first iteration k with λ_max(∇²L(W_k)) > 2/η_k (the
        edge of stability), or None if never (or not measured)."""
        return self.stats.get("edge_step")

    @property
    def ok(self) -> bool:
        return self.status != "failed"

    def __len__(self) -> int:
        return len(self.diagnostics["accuracy"])

    def table(self, rows: int = 10) -> str:
        """A plain-text table of the main diagnostics at up to ``rows`` save points."""
        cols = ["t", "accuracy", "norm", "smoothed_margin", "beta", "margin", "angle", "path_length", "potential"]
        if "t" in self.diagnostics and not np.all(np.isfinite(self.diagnostics["t"])):
            cols[0] = "log_t"  # t overflows float64 on long accuracy-clock runs; ln t does not
        cols = [c for c in cols if c in self.diagnostics]
        idx = np.unique(np.linspace(0, len(self) - 1, min(rows, len(self))).round().astype(int))
        head = " ".join(f"{c:>15}" for c in cols)
        lines = [head, "-" * len(head)]
        for i in idx:
            lines.append(" ".join(f"{self.diagnostics[c][i]:>15.6g}" for c in cols))
        lines.append(f"status: {self.status}{' (' + self.reason + ')' if self.reason else ''}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"FlowResult(T={len(self)}, status={self.status!r}, degree={self.degree}, stats={self.stats})"

    def save(self, path: str | os.PathLike) -> str:
        """Write an ``.npz`` with arrays ``diag/<name>``, ``params/<leaf path>`` and a JSON string
        ``metadata`` (status, reason, stats, config). Readable with ``numpy.load`` alone
        (``allow_pickle=False``). The file is written to a temporary name, then renamed."""
        path = os.fspath(path)
        if not path.endswith(".npz"):
            path += ".npz"
        arrays = {f"diag/{k}": np.asarray(v) for k, v in self.diagnostics.items()}
        arrays.update({f"params/{k}": np.asarray(v) for k, v in self.params.items()})
        meta = {"format": _FORMAT, "status": self.status, "reason": self.reason, "stats": self.stats, "config": self.config}
        arrays["metadata"] = np.array(json.dumps(meta, default=json_default))
        directory = os.path.dirname(os.path.abspath(path))
        fd, tmp = tempfile.mkstemp(suffix=".npz", dir=directory)
        os.close(fd)
        try:
            np.savez(tmp, **arrays)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return path


def json_default(o: Any) -> Any:
    """The ``default=`` of :func:`json.dump` for gradflow's records (result metadata, the figures'
    checks): numpy integers, floats and booleans become their Python values, arrays lists, and
    anything else its ``str`` (so a record is always written, never refused)."""
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.bool_):
        return bool(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def load_result(path: str | os.PathLike, like=None) -> FlowResult:
    """Read a result written by :meth:`FlowResult.save`.

    ``like``: optionally a model of the same architecture; its trainable leaves are replaced by the
    stored final parameters and returned as ``result.model``."""
    with np.load(os.fspath(path), allow_pickle=False) as f:
        if "metadata" not in f.files:
            raise bad_argument("path", f"{path} is not a gradflow result (no metadata)", "Pass a file written by FlowResult.save.")
        meta = json.loads(str(f["metadata"]))
        diags = {k[5:]: f[k] for k in f.files if k.startswith("diag/")}
        params = {k[7:]: f[k] for k in f.files if k.startswith("params/")}
    result = FlowResult(
        diagnostics=diags, status=meta["status"], reason=meta["reason"], stats=meta["stats"], config=meta["config"], params=params
    )
    if like is not None:
        result.model = model_from_params(like, params)
    return result
