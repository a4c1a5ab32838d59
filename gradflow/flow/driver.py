"""The segment driver of :func:`gradflow.simulate_flow`: runs the compiled solve :func:`gradflow.flow.segment.solve`
as a sequence of diffeqsolve segments (checkpoint chunks, ``solver='auto'`` explicit segments, resumed runs)."""

from __future__ import annotations

import hashlib
import math
import time
from typing import Any, NamedTuple, Protocol

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from .. import activations
from ..clock import Clock
from ..controllers import STALL_ULPS, fresh_controller_state
from ..params import params_to_dict
from ..sliding import grown_capacity
from ..solvers import evaluations_at_start, evaluations_per_step, is_implicit
from .assemble import Segment, fail_off_clock, result_name
from .field import Data, FieldArgs
from .record import Record
from .segment import FlowSpec, Start, solve
from .state import FlowState
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


class Plan(Protocol):
    """What the driver needs of a run's plan (:class:`gradflow.flow.simulate.Plan`)."""

    clock: Clock
    auto: bool
    explicit_steps: int
    record: Record
    fdtype: Any
    sliding: Any
    max_capacity: int

    def spec(self, solver) -> FlowSpec: ...

    def with_capacity(self, capacity: int) -> Plan: ...

    def solver_by_name(self, name: str): ...

    def field_args(self, data: Data) -> FieldArgs: ...


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

    def __init__(self, plan: Plan, data: Data, *, end: float, max_steps: int):
        self.plan, self.data, self.end, self.max_steps = plan, data, end, max_steps
        self.switches: list[str] = []
        self.pattern = None  # activation pattern at the last save point (gradflow.activations)
        self.steps_left = max_steps
        self.pad = 1

    def f(self, value):
        """A clock value or save points as an array of the run's dtype (traced: no recompiles)."""
        return jnp.asarray(value, self.plan.fdtype)

    def run(self, state: State, chunks, *, store=None, progress=False) -> tuple[list[Segment], State]:
        segments: list[Segment] = []
        first = 0
        if store is not None:
            loaded = store.load(like_state=state, solvers=self.plan.solver_by_name)
            if loaded is not None:
                state, segments, first, self.switches = loaded
                self.steps_left = self.max_steps - sum(seg.stats["num_steps"] for seg in segments)
                if state.slide is not None and state.slide.slots.shape[0] != self.plan.sliding.max_pairs:
                    self.plan = self.plan.with_capacity(state.slide.slots.shape[0])  # grown before the checkpoint
                if first >= len(chunks) or segments and segments[-1].result_name != "successful":
                    return segments, state
        self.pad = max(len(c) for c in chunks)
        bar = _SegmentProgress(self.plan.clock, self.end) if progress else None
        for i in range(first, len(chunks)):
            end = self.end if i == len(chunks) - 1 else float(chunks[i][-1])
            state, new, finished = self._run_chunk(state, chunks[i], end)
            segments.extend(new)
            if store is not None:
                store.save(state, segments, i + 1, self.switches)
            if bar is not None:
                bar.update(self.plan.clock.position(segments[-1].final_diag), segments)
            if not finished:
                break
        if bar is not None:
            bar.close()
        return segments, state

    def _run_chunk(self, state: State, points, end):
        """Integrate to ``end`` saving at ``points``; returns (state, segments, finished_ok)."""
        out = []
        clock = self.plan.clock
        while True:
            explicit_phase = self.plan.auto and not is_implicit(state.solver)
            budget = min(self.plan.explicit_steps, self.steps_left) if explicit_phase else self.steps_left
            seg = self._segment(state, points, end, budget)
            out.append(seg)
            self.steps_left -= seg.stats["num_steps"]
            final = seg.final_state
            # The solver's own state (e.g. Tsit5's FSAL stage) is not carried: it is recomputed at the
            # start of the next segment, exactly as after a resume from a checkpoint.
            new_state = State(final.W, final.aux, seg.s_final, state.solver, None, seg.controller_state, seg.dt_next,
                              seg.eigvec, final.slide)
            if seg.stats.get("capacity_overflow", 0):
                # more pairs slide than the capacity holds: the same chunk goes on from the last accepted
                # step with twice the capacity (one more compile; gradflow.sliding.INITIAL_CAPACITY)
                capacity = grown_capacity(self.plan.sliding.max_pairs, self.plan.max_capacity)
                self.plan = self.plan.with_capacity(capacity)
                new_state = new_state._replace(slide=new_state.slide.widened(capacity))
                seg.result_name, seg.reason = "successful", ""
                points = points[points > clock.position(seg.final_diag)]
                if points.size == 0:
                    points = np.asarray([end])
                state = new_state
                continue
            name = seg.result_name
            if name == "successful":
                return new_state, out, True
            if name == "max_steps_reached" and self.steps_left <= 0:
                seg.reason = (f"The maximum number of solver steps was reached: max_steps = {self.max_steps} over the whole run ("
                              f"{sum(s.stats['num_steps'] for s in out)} in this chunk's {len(out)} segment(s)) "
                              f"at {self._where(seg)}. Increase max_steps, loosen rtol/atol, or try another solver.")
                return new_state, out, False
            if name != "max_steps_reached" or not explicit_phase:
                return new_state, out, False
            if seg.s_final <= state.s:  # no step moved the clock (StepGuard normally stops this first)
                seg.result_name, seg.reason = "failed", self._no_progress_reason(seg)
                return new_state, out, False
            # auto: the explicit solver ran out of its segment budget; is it stability-limited?
            args = self.plan.field_args(self.data)
            lam = top_eigenvalue(args, FlowState(final.W, final.aux, final.slide), self.f(seg.s_final))
            h = seg.dt_next
            points = points[points > clock.position(seg.final_diag)]
            if points.size == 0:
                points = np.asarray([end])
            if h * lam > 1.0:
                implicit = self.plan.solver_by_name("kvaerno5")
                self.switches.append(f"Kvaerno5 from ln(n/L) = {seg.final_diag['accuracy']:.6g} "
                                     f"(step {h:.3g} × |λ_max| {lam:.3g} > 1)")
                new_state = new_state._replace(solver=implicit, solver_state=None)
            state = new_state

    def _where(self, seg: Segment) -> str:
        """Where a segment ended, in the clock's units and in ln(n/L)."""
        return self.plan.clock.where(seg.s_final, float(seg.final_diag["accuracy"]))

    def _no_progress_reason(self, seg: Segment) -> str:
        eps = float(np.finfo(self.plan.fdtype).eps)
        step = STALL_ULPS * eps * abs(seg.s_final)
        cause, hint = self.plan.clock.no_progress(float(seg.final_diag["log_t"]))
        return (f"The minimum step size was reached (no progress) at {self._where(seg)}: the step size fell to ≤ {step:.3g} "
                f"({STALL_ULPS:g} float64 spacings of the clock value), so steps no longer move the clock.{cause} "
                f"Try: {hint}.")

    def _segment(self, state: State, points, end, budget) -> Segment:
        f = self.f
        wall_start = time.perf_counter()
        spec = self.plan.spec(state.solver)
        adaptive = not isinstance(spec.controller, diffrax.ConstantStepSize)
        # one compiled solve for every segment: save points padded (repeating the last) to self.pad
        # and masked below; the budget and a "choose dt0" NaN are traced values; max_steps is static.
        padded = np.concatenate([points, np.full(max(self.pad - len(points), 0), points[-1])])
        controller_state = state.controller_state
        if controller_state is None:
            controller_state = fresh_controller_state(spec.controller, self.plan.fdtype)
        if self.plan.record.patterns and self.pattern is None:  # first segment, or resumed from a checkpoint
            self.pattern = activations.state_at(state.params, self.data.static, self.data.x)
        start = Start(FlowState(state.params, state.aux, state.slide), f(state.s), state.solver_state, controller_state,
                      f(math.nan if state.dt_next is None else state.dt_next), state.eigvec, self.pattern)
        out = solve(spec, self.data, start, f(padded), f(end), jnp.asarray(budget, jnp.int32))
        jax.block_until_ready(out.state)
        wall = time.perf_counter() - wall_start
        self.pattern = out.pattern
        saved = jax.tree_util.tree_map(lambda v: np.asarray(v)[: len(points)], out.saved)
        final_diag = jax.tree_util.tree_map(lambda v: np.asarray(v)[0], out.final)  # SubSaveAt(t1): length-1 axis
        reached = np.isfinite(saved["log_loss"])  # diffrax fills save points after a stop with inf
        stats = {k: int(v) for k, v in out.stats.items() if k != "max_steps"}
        if not reached.any() and not stats["capacity_overflow"]:  # failed before the first save point: report the start
            saved = jax.tree_util.tree_map(np.asarray, out.initial)
            reached = np.isfinite(saved["log_loss"])
        s_final = float(np.asarray(out.s_final).reshape(-1)[0])
        accepted = max(stats["num_accepted_steps"], 1)
        result = result_name(out.result)
        seg = Segment(
            saved={k: v[reached] for k, v in saved.items()}, final_diag=final_diag, final_state=out.state,
            result_name=result, reason=diffrax.RESULTS[out.result], stats=stats, wall=wall, num_save=len(points),
            evals_per_step=evaluations_per_step(state.solver),
            start_evals=self._start_evaluations(state, spec, adaptive),
            solver_name=type(state.solver).__name__, implicit_segments=int(is_implicit(state.solver)),
            s_final=s_final, controller_state=out.controller_state, eigvec=out.eigvec,
            # next step size for a following segment: the segment's mean accepted step
            dt_next=(s_final - state.s) / accepted if s_final > state.s else state.dt_next,
        )
        if out.result == diffrax.RESULTS.dt_min_reached and not _has_dtmin(spec.controller):
            seg.reason = self._no_progress_reason(seg)
        if result in ("successful", "event_occurred") and reached.shape[0] == len(points):  # a solve that ran its course
            key = self.plan.clock.save_key
            fail_off_clock(seg, key, np.asarray(points)[reached], float(np.asarray(out.initial[key]).reshape(-1)[0]),
                           float(self.plan.rtol))
        return seg

    @staticmethod
    def _start_evaluations(state: State, spec: FlowSpec, adaptive: bool) -> int:
        """Field evaluations before a segment's first step: the first stage (the sliding solver
        always evaluates it at its start) and two where the first step is chosen."""
        choose = state.dt_next is None and adaptive
        if spec.sliding is not None:
            return 1 + (2 if choose else 0)
        return evaluations_at_start(state.solver, fresh_solver_state=state.solver_state is None, choose_step=choose)


def _has_dtmin(controller) -> bool:
    """Whether the user set a minimum step (then dt_min_reached is theirs, not the no-progress stop)."""
    return getattr(controller, "dtmin", None) is not None


class _SegmentProgress:
    """A tqdm bar over the clock's position (t on a log scale, or ln(n/L)), updated after each segment.

    diffrax's own progress meters report (t − t0)/(t1 − t0), useless for t1 = 1e12 or for runs
    that stop on an event; this one shows where the flow is in the units that matter."""

    def __init__(self, clock: Clock, total: float):
        self.clock = clock
        self.bar = tqdm(total=round(clock.progress_scale(total), 3), unit=clock.progress_unit, desc="gradflow",
                        dynamic_ncols=True)

    def update(self, position: float, segments) -> None:
        self.bar.n = round(self.clock.progress_scale(position), 3)
        steps = sum(seg.stats["num_steps"] for seg in segments)
        self.bar.set_postfix(steps=steps, refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()
