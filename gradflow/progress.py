r"""Progress bars for long runs, and results read as one run.

Flows: :func:`simulate_with_progress` is :func:`gradflow.simulate_flow` in the accuracy clock with
its one progress mechanism, ``RunOptions(progress=True)``: the driver runs the save points in
chunks and moves a ``tqdm`` bar in ln(n/L), the paper's clock, after each chunk; the step
controller carries over, so the path is the one of an uninterrupted run.

Results made of several runs (:func:`concat_results`: a warm-up and the flow after it, chunks of
:func:`descend_with_progress`) are concatenated with this bookkeeping (each run restarts t and ζ at 0):

* physical time: t = T_s + t_seg, with T_s the time at the end of the previous runs, formed
  in log space, ln t = logaddexp(ln T_s, ln t_seg) (t overflows float64 long before ln(n/L) does);
* path length: ζ = Z_s + ζ_seg (ζ is additive along a path, Lemma 3.4);
* all other diagnostics are functions of the state W and need no offset.

:func:`descend_with_progress` runs :func:`gradflow.simulate_descent` in chunks of iterations
(offsets for ``iteration``, ``log_t`` and ``path_length``; chunk s uses seed + s, so mini-batch
permutations restart at each chunk).
"""

from __future__ import annotations

import math
import sys
from dataclasses import replace
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from .data import as_dataset
from .descent import simulate_descent
from .errors import bad_argument
from .flow import simulate_flow
from .losses import get_loss
from .options import RunOptions, check_int, check_positive_finite, check_target
from .params import combine, partition
from .precision import x64
from .result import FlowResult

__all__ = ["simulate_with_progress", "descend_with_progress", "concat_results", "progress_enabled", "initial_accuracy"]

_RESERVED = ("clock", "until_accuracy", "save_at", "num_save")


def progress_enabled(progress: bool | None) -> bool:
    """``progress`` if it is a bool; for None, True exactly when stderr is a terminal (TTY)."""
    if progress is None:
        try:
            return bool(sys.stderr.isatty())
        except (AttributeError, ValueError):
            return False
    return bool(progress)


def _bar(total: float, desc: str, enabled: bool, unit: str):
    """A tqdm bar, or None when disabled."""
    if not enabled:
        return None
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True,
                bar_format="{l_bar}{bar}| {n:.4g}/{total:.4g} {unit} [{elapsed}<{remaining}]{postfix}")


def initial_accuracy(model, data, loss: str = "exponential") -> float:
    """ln(n/L(W_0)) of ``model`` on ``data``, computed as :func:`gradflow.simulate_flow` does."""
    data = as_dataset(data)
    loss_fn = get_loss(loss)
    with x64():
        params, static = partition(model)
        params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), params)
        net = combine(params, static)
        x = jnp.asarray(data.x, jnp.float64)
        out = net(x)
        if loss_fn.multiclass:
            y = jnp.asarray(data.class_labels(out.shape[1]))
        else:
            y = jnp.asarray(data.binary_labels(), jnp.float64)
        return math.log(data.n) - float(loss_fn.log_loss(out, y))


def _concat(parts: list[FlowResult]) -> dict[str, np.ndarray]:
    """Concatenate segment diagnostics with time and path-length offsets (see module docstring).

    Only diagnostics present in every part are kept (a descent part's ``iteration`` is dropped
    when flow parts follow it)."""
    common = set.intersection(*(set(r.diagnostics) for r in parts))
    out: dict[str, list[np.ndarray]] = {}
    log_t_off, zeta_off, it_off = -math.inf, 0.0, 0
    for k, r in enumerate(parts):
        d = {name: v for name, v in r.diagnostics.items() if name in common}
        start = 1 if k > 0 else 0  # a segment's first row repeats the previous segment's last one
        if k > 0 and len(d["accuracy"]) and not math.isclose(float(d["accuracy"][0]), float(parts[k - 1].accuracy[-1]), rel_tol=1e-9, abs_tol=1e-9):
            start = 0
        log_t = np.logaddexp(log_t_off, np.asarray(d["log_t"], np.float64))
        d["log_t"] = log_t
        d["t"] = np.exp(log_t)
        d["path_length"] = np.asarray(d["path_length"], np.float64) + zeta_off
        if "iteration" in d:
            d["iteration"] = np.asarray(d["iteration"]) + it_off
        for name, v in d.items():
            out.setdefault(name, []).append(np.asarray(v)[start:])
        if len(log_t):
            log_t_off, zeta_off = float(log_t[-1]), float(d["path_length"][-1])
        if "iteration" in d and len(d["iteration"]):
            it_off = int(d["iteration"][-1])
    return {name: np.concatenate(v) for name, v in out.items()}


def concat_results(parts: list[FlowResult], config_extra: dict | None = None) -> FlowResult:
    """One :class:`~gradflow.FlowResult` from consecutive runs (each starting from the previous
    one's final model): diagnostics concatenated with the offsets of the module docstring (t, ζ,
    iteration), stats summed, status the first failure's or the last part's, final model the last
    part's. ``config`` is the first part's, updated with ``config_extra``."""
    return _merge(list(parts), dict(config_extra or {}))


def _merge(parts: list[FlowResult], config_extra: dict) -> FlowResult:
    if not parts:
        raise bad_argument("parts", "is empty", "Pass at least one FlowResult.")
    last = parts[-1]
    stats: dict[str, Any] = {}
    for r in parts:
        for key, v in r.stats.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v is not None:
                stats[key] = stats.get(key, 0) + v
            elif key not in stats:
                stats[key] = v
    stats["progress_segments"] = len(parts)
    config = dict(parts[0].config)
    config.update(config_extra)
    failed = [r for r in parts if r.status == "failed"]
    status, reason = (failed[0].status, failed[0].reason) if failed else (last.status, last.reason)
    return FlowResult(diagnostics=_concat(parts), status=status, reason=reason, stats=stats, config=config,
                      params=last.params, model=last.model)


def simulate_with_progress(
    model,
    data,
    until_accuracy: float,
    *,
    segments: int = 8,
    saves_per_segment: int = 16,
    progress: bool | None = None,
    desc: str = "gradient flow",
    **flow_options: Any,
) -> FlowResult:
    r"""Integrate the flow in the accuracy clock up to ln(n/L) = ``until_accuracy``, with a progress
    bar in ln(n/L) that moves ``segments`` times.

    The interval [K_0, K] of ln(n/L) (K_0 = ln(n/L(W_0))) is cut into ``segments`` equal parts
    K_s = K_0 + s (K − K_0)/S, each with ``saves_per_segment`` save points equally spaced in
    (K_s, K_{s+1}] (plus K_0 itself in the first). This is ``simulate_flow(..., clock="accuracy",
    save_at=<those points>, run=RunOptions(progress=..., checkpoint_every=saves_per_segment))``:
    one run, driven in chunks of a segment each by the driver that also writes checkpoints
    (:class:`gradflow.flow.driver.Driver`), whose bar advances after every chunk. The step
    controller carries over from chunk to chunk, so the path is the one of an uninterrupted run.

    Args:
      model, data: as for :func:`gradflow.simulate_flow`.
      until_accuracy: the final ln(n/L) K.
      segments: S ≥ 1. saves_per_segment: save points per segment (≥ 2).
      progress: show the bar (True), hide it (False) or show it only on a TTY (None).
      desc: kept for compatibility; the bar is the driver's ("gradflow", in ln(n/L)).
      **flow_options: any other option of ``simulate_flow`` (loss, solver, rtol, atol, max_steps
        (of the whole run), t_max, save_params, ``run``, ...); ``clock``, ``until_accuracy``,
        ``save_at`` and ``num_save`` are set here.

    Returns:
      The :class:`gradflow.FlowResult` of the run, with ``stats["progress_segments"]`` = S.
    """
    del desc
    for key in _RESERVED:
        if key in flow_options:
            raise bad_argument(key, "is set by simulate_with_progress", f"Drop {key}=...; pass until_accuracy and saves_per_segment.")
    segments = check_int("segments", segments, example=8)
    saves_per_segment = check_int("saves_per_segment", saves_per_segment, least=2, example=16)
    target = check_positive_finite("until_accuracy", until_accuracy, example="100.0")
    data = as_dataset(data)
    loss = flow_options.get("loss", "exponential")
    acc0 = initial_accuracy(model, data, loss)
    check_target(target, acc0)
    bounds = acc0 + (target - acc0) * np.linspace(0.0, 1.0, segments + 1)
    bounds[-1] = target
    points = []
    for s in range(segments):
        pts = bounds[s] + (bounds[s + 1] - bounds[s]) * np.linspace(0.0, 1.0, saves_per_segment + 1)[1:]
        pts[-1] = bounds[s + 1]
        if s == 0:
            # the initial point itself (nudged up by a few ulps so rounding never puts it below K_0)
            pts = np.concatenate([[acc0 + 1e-12 * max(1.0, abs(acc0))], pts[1:]])
        points.append(pts)
    run = flow_options.pop("run", None) or RunOptions()
    enabled = progress_enabled(progress)
    run = replace(run, progress=enabled, **({"checkpoint_every": saves_per_segment} if run.checkpoint is None else {}))
    r = simulate_flow(model, data, clock="accuracy", until_accuracy=target, save_at=np.concatenate(points), run=run,
                      **flow_options)
    r.stats["progress_segments"] = segments
    r.config["progress_segments"] = segments
    return r


def descend_with_progress(
    model,
    data,
    optimizer: Any,
    steps: int,
    *,
    chunks: int = 8,
    saves_per_chunk: int = 16,
    progress: bool | None = None,
    desc: str = "descent",
    seed: int = 0,
    **descent_options: Any,
) -> FlowResult:
    r""":func:`gradflow.simulate_descent` for ``steps`` iterations, in ``chunks`` chunks with a bar.

    Chunk c runs ⌈steps/chunks⌉ iterations (fewer in the last) from the previous chunk's final
    W, with seed + c (so mini-batch permutations restart per chunk) and ``saves_per_chunk`` save
    iterations; ``iteration``, ``log_t`` and ``path_length`` are offset to read as one run.
    Optimizer state (momentum, Adam moments) is *not* carried across chunks: use stateless
    optimizers ('gd', 'normalized'), or ``chunks=1``. Stops early if a chunk fails or reaches
    ``until_accuracy``.
    """
    for key in ("save_at", "save_every", "num_save"):
        if key in descent_options:
            raise bad_argument(key, "is set by descend_with_progress", "Pass saves_per_chunk instead.")
    chunks = check_int("chunks", chunks, example=8)
    steps = check_int("steps", steps, example=1000)
    chunks = min(chunks, steps)
    per = math.ceil(steps / chunks)
    bar = _bar(steps, desc, progress_enabled(progress), "it")
    parts: list[FlowResult] = []
    current, done = model, 0
    try:
        for c in range(chunks):
            k = min(per, steps - done)
            if k <= 0:
                break
            save_at = np.unique(np.round(np.linspace(0, k, min(saves_per_chunk, k + 1))).astype(np.int64))
            r = simulate_descent(current, data, optimizer, k, seed=seed + c, save_at=save_at, **descent_options)
            parts.append(r)
            done += int(r.stats["steps"])
            if bar is not None:
                bar.update(int(r.stats["steps"]))
                bar.set_postfix_str(f"ln(n/L)={float(r.accuracy[-1]):.4g}")
            if r.status != "completed":
                break
            current = r.model
    finally:
        if bar is not None:
            bar.close()
    return _merge(parts, {"steps": steps, "progress_segments": chunks})
