"""The segment driver of :func:`gradflow.simulate_flow`: runs the compiled solve :func:`gradflow.flow.segment.solve`
as a sequence of diffeqsolve segments (checkpoint chunks, ``solver='auto'`` explicit segments, resumed runs)."""

from __future__ import annotations

import hashlib
import math
import time
from typing import Any, NamedTuple

import diffrax
import jax
import numpy as np
from tqdm.auto import tqdm

from .. import activations
from ..controllers import STALL_ULPS, fresh_controller_state
from ..params import params_to_dict
from ..solvers import evaluations_at_start, evaluations_per_step, get_solver, is_implicit
from .assemble import result_name
from .segment import solve
from .stiffness import top_eigenvalue


class State(NamedTuple):
    """Where a segment starts: W, [ζ, u], the clock value s, the solver, and what the step
    controller carries over (its error history and the next step size)."""

    params: Any
    aux: Any
    s: float
    solver: Any
    solver_state: Any
    controller_state: Any
    dt_next: float | None
    eigvec: Any = None  # (top, bottom) Hessian eigenvectors for the sharpness warm start, or None
    slide: Any = None  # the sliding state (active set, λ) of gradflow.sliding, or None without sliding


def chunks(points: np.ndarray, every: int | None) -> list[np.ndarray]:
    """Save points split into consecutive chunks of ``every`` (one chunk when None)."""
    if every is None or every >= len(points):
        return [points]
    return [points[i : i + every] for i in range(0, len(points), every)]


def fingerprint(x, y, params0, config, save_points) -> dict:
    """What must match for a checkpoint to be resumed: the data, the model's parameter shapes,
    the loss, clock, solver, tolerances and save points."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(np.asarray(x)).tobytes())
    h.update(np.ascontiguousarray(np.asarray(y)).tobytes())
    shapes = {k: list(v.shape) for k, v in params_to_dict(params0).items()}
    keys = ("loss", "clock", "solver", "rtol", "atol", "t_max", "until_accuracy", "dtype", "jacobian", "sharpness")
    return {
        "data_sha256": h.hexdigest(),
        "param_shapes": shapes,
        "save_points_sha256": hashlib.sha256(np.ascontiguousarray(save_points).tobytes()).hexdigest(),
        **{k: config[k] for k in keys},
        # a run with activation-pattern diagnostics has more columns, one with sliding more state
        # (absent: resumable as before)
        **({"activation_patterns": True} if config.get("activation_patterns") else {}),
        **({"sliding": True} if config.get("sliding") else {}),
        # the default sharpness budget evaluates fewer save points than sharpness=True
        **({"sharpness_budget": config["sharpness_budget"]} if config.get("sharpness_budget") else {}),
    }


class Driver:
    """Runs the flow as a sequence of diffeqsolve segments.

    Segments arise from checkpoint chunks (the save points split every ``checkpoint_every``) and
    from ``solver='auto'`` (explicit segments of ``explicit_steps`` steps between stiffness
    checks). Between segments the controller's state and the next step size are carried over, so a
    chunked run and a run resumed from a checkpoint take exactly the same steps.

    Bounds (issue 14): ``max_steps`` is the budget of the whole run, shared by all segments, chunks
    and resumes (``steps_left``); each solve gets what is left as a traced budget
    (:class:`gradflow.controllers.StepGuard`), and save points are padded to one length
    (``pad``), so every segment reuses one compiled solve. A solve whose steps stop moving
    the clock ends at once with a "no progress" failure (see :meth:`_no_progress_reason`)."""

    def __init__(self, *, common, f, t_end, max_steps, auto, explicit_steps, rtol, atol, jacobian, state_size=None):
        self.common, self.f, self.t_end, self.max_steps = common, f, t_end, max_steps
        self.auto, self.explicit_steps = auto, explicit_steps
        self.rtol, self.atol, self.jacobian, self.state_size = rtol, atol, jacobian, state_size
        self.switches: list[str] = []
        self.pattern = None  # activation pattern at the last save point (gradflow.activations)
        self.steps_left = max_steps
        self.pad = 1

    def run(self, state: State, chunks, *, store=None, progress=False):
        segments: list[dict] = []
        first = 0
        if store is not None:
            loaded = store.load(like_state=state, solvers=self._solver_by_name)
            if loaded is not None:
                state, segments, first, self.switches = loaded
                self.steps_left = self.max_steps - sum(seg["stats"]["num_steps"] for seg in segments)
                if first >= len(chunks) or segments and segments[-1]["result_name"] != "successful":
                    return segments, state, True
        self.pad = max(len(c) for c in chunks)
        bar = _progress_bar(progress, self.common["clock"], self.t_end)
        for i in range(first, len(chunks)):
            end = self.t_end if i == len(chunks) - 1 else float(chunks[i][-1])
            state, new, finished = self._run_chunk(state, chunks[i], end)
            segments.extend(new)
            if store is not None:
                store.save(state, segments, i + 1, self.switches)
            if bar is not None:
                last = segments[-1]["final_diag"]
                bar.update(float(last["t"] if self.common["clock"] == "time" else last["accuracy"]), segments)
            if not finished:
                break
        if bar is not None:
            bar.close()
        return segments, state, True

    def _solver_by_name(self, name: str):
        return get_solver(name.lower(), rtol=self.rtol, atol=self.atol, jacobian=self.jacobian, state_size=self.state_size)

    def _run_chunk(self, state: State, points, end):
        """Integrate to ``end`` saving at ``points``; returns (state, segments, finished_ok)."""
        out = []
        while True:
            explicit_phase = self.auto and not is_implicit(state.solver)
            budget = min(self.explicit_steps, self.steps_left) if explicit_phase else self.steps_left
            seg = self._segment(state, points, end, budget)
            out.append(seg)
            self.steps_left -= seg["stats"]["num_steps"]
            params, aux = seg["final_state"][:2]
            # The solver's own state (e.g. Tsit5's FSAL stage) is not carried: it is recomputed at the
            # start of the next segment, exactly as after a resume from a checkpoint.
            new_state = State(params, aux, seg["s_final"], state.solver, None, seg["controller_state"], seg["dt_next"],
                              seg["eigvec"], seg["final_state"][2] if len(seg["final_state"]) > 2 else None)
            name = seg["result_name"]
            if name == "successful":
                return new_state, out, True
            if name == "max_steps_reached" and self.steps_left <= 0:
                seg["reason"] = (f"The maximum number of solver steps was reached: max_steps = {self.max_steps} over the whole run ("
                                 f"{sum(s['stats']['num_steps'] for s in out)} in this chunk's {len(out)} segment(s)) "
                                 f"at {self._where(seg)}. Increase max_steps, loosen rtol/atol, or try another solver.")
                return new_state, out, False
            if name != "max_steps_reached" or not explicit_phase:
                return new_state, out, False
            if seg["s_final"] <= state.s:  # no step moved the clock (StepGuard normally stops this first)
                seg["result_name"], seg["reason"] = "failed", self._no_progress_reason(seg)
                return new_state, out, False
            # auto: the explicit solver ran out of its segment budget; is it stability-limited?
            lam = top_eigenvalue(params, aux, self.f(seg["s_final"]), self.common, slide=new_state.slide)
            h = seg["dt_next"]
            position = seg["final_diag"]["t"] if self.common["clock"] == "time" else seg["final_diag"]["accuracy"]
            points = points[points > position]
            if points.size == 0:
                points = np.asarray([end])
            if h * lam > 1.0:
                implicit = self._solver_by_name("kvaerno5")
                self.switches.append(f"Kvaerno5 from ln(n/L) = {seg['final_diag']['accuracy']:.6g} "
                                     f"(step {h:.3g} × |λ_max| {lam:.3g} > 1)")
                new_state = new_state._replace(solver=implicit, solver_state=None)
            state = new_state

    def _where(self, seg) -> str:
        """Where a segment ended, in the clock's units and in ln(n/L)."""
        acc = float(seg["final_diag"]["accuracy"])
        if self.common["clock"] == "time":
            return f"t = {seg['s_final']:.6g} (ln(n/L) = {acc:.6g})"
        return f"α = {seg['s_final']:.6g} (ln(n/L) = {acc:.6g})"

    def _no_progress_reason(self, seg) -> str:
        eps = float(np.finfo(np.float64 if self.common["rtol"].dtype == np.float64 else np.float32).eps)
        step = STALL_ULPS * eps * abs(seg["s_final"])
        cause = ""
        if self.common["clock"] == "time":
            hint = ("t has grown so large that steps no longer change it; use clock='accuracy' "
                    "(until_accuracy=K) for long runs, or a smaller t_max")
        else:
            t_now = float(np.exp(min(float(seg["final_diag"]["log_t"]), 700.0)))
            cause = (f" Physical time is t = {t_now:.3g} here: if t grows while ln(n/L) stalls, the flow converges to a "
                     "stationary point with L > 0 (for a ReLU net, a Clarke-critical point: dα/dt = ‖∇α‖² → 0), which "
                     "the accuracy clock cannot pass; clock='time' shows it.")
            hint = ("start with clock='time' (e.g. until_accuracy=ln n − ln ℓ(0) + 1) to bring L below ℓ(0), then "
                    "continue from result.model in clock='accuracy'; or loosen atol, or rescale the initialisation")
        return (f"The minimum step size was reached (no progress) at {self._where(seg)}: the step size fell to ≤ {step:.3g} "
                f"({STALL_ULPS:g} float64 spacings of the clock value), so steps no longer move the clock.{cause} "
                f"Try: {hint}.")

    def _start_evaluations(self, state: State) -> int:
        """Field evaluations before a segment's first step (no step size carried: one is chosen)."""
        constant = dict(self.common["controller_opts"]).get("constant", False)
        return evaluations_at_start(state.solver, fresh_solver_state=state.solver_state is None,
                                    choose_step=state.dt_next is None and not constant)

    def _segment(self, state: State, points, end, budget) -> dict:
        f = self.f
        start = time.perf_counter()
        # one compiled solve for every segment: save points padded (repeating the last) to self.pad
        # and masked below; the budget and a "choose dt0" NaN are traced values; max_steps is static.
        padded = np.concatenate([points, np.full(max(self.pad - len(points), 0), points[-1])])
        controller_state = state.controller_state
        if controller_state is None:
            controller_state = fresh_controller_state(self.common["controller_opts"], self.common["rtol"].dtype)
        if self.common["patterns"] and self.pattern is None:  # first segment, or resumed from a checkpoint
            self.pattern = activations.state_at(state.params, self.common["static"], self.common["x"])
        saved, final_diag, final_state, result, stats, s_final, _solver_state, controller_state, initial, self.pattern, eigvec = solve(
            state.params, state.aux, f(state.s), state.solver_state, controller_state,
            save_points=f(padded), t_end=f(end), dt0=f(math.nan if state.dt_next is None else state.dt_next),
            solver=state.solver, max_steps=self.max_steps, budget=jax.numpy.asarray(budget, jax.numpy.int32),
            pattern_prev=self.pattern, eigvec=state.eigvec, slide0=state.slide, **self.common,
        )
        jax.block_until_ready(final_state)
        wall = time.perf_counter() - start
        saved = jax.tree_util.tree_map(lambda v: np.asarray(v)[: len(points)], saved)
        final_diag = jax.tree_util.tree_map(lambda v: np.asarray(v)[0], final_diag)  # SubSaveAt(t1): length-1 axis
        reached = np.isfinite(saved["log_loss"])  # diffrax fills save points after a stop with inf
        if not reached.any():  # failed before the first save point: report at least the start
            saved = jax.tree_util.tree_map(np.asarray, initial)
            reached = np.isfinite(saved["log_loss"])
        stats = {k: int(v) for k, v in stats.items() if k != "max_steps"}
        s_final = float(np.asarray(s_final).reshape(-1)[0])
        accepted = max(stats["num_accepted_steps"], 1)
        seg = dict(
            saved={k: v[reached] for k, v in saved.items()}, final_diag=final_diag, final_state=final_state,
            result_name=result_name(result), reason=diffrax.RESULTS[result], stats=stats, wall=wall,
            s_final=s_final, solver_name=type(state.solver).__name__, num_save=len(points),
            evals_per_step=evaluations_per_step(state.solver),
            implicit_segments=int(is_implicit(state.solver)),
            controller_state=controller_state,
            start_evals=self._start_evaluations(state), eigvec=eigvec,
            # next step size for a following segment: the segment's mean accepted step
            dt_next=(s_final - state.s) / accepted if s_final > state.s else state.dt_next,
        )
        if result == diffrax.RESULTS.dt_min_reached and "dtmin" not in dict(self.common["controller_opts"]):
            seg["reason"] = self._no_progress_reason(seg)
        return seg


def _progress_bar(progress: bool, clock: str, t_end: float):
    return _SegmentProgress(clock, t_end) if progress else None


class _SegmentProgress:
    """A tqdm bar over t (time clock, on a log scale) or ln(n/L), updated after each segment.

    diffrax's own progress meters report (t − t0)/(t1 − t0), useless for t1 = 1e12 or for runs
    that stop on an event; this one shows where the flow is in the units that matter."""

    def __init__(self, clock: str, total: float):
        self.clock = clock
        self.scale = (lambda v: math.log10(1.0 + v)) if clock == "time" else (lambda v: v)
        unit = "log10(1+t)" if clock == "time" else "ln(n/L)"
        self.bar = tqdm(total=round(self.scale(total), 3), unit=unit, desc="gradflow", dynamic_ncols=True)

    def update(self, position: float, segments) -> None:
        self.bar.n = round(self.scale(position), 3)
        steps = sum(seg["stats"]["num_steps"] for seg in segments)
        self.bar.set_postfix(steps=steps, refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()
