r"""Where the wall time of a sliding step goes, phase by phase, read from XLA's own per-operation trace
(issue 25, deliverable 1).

The case is the ``cost`` part's of ``benchmarks/sliding.py``: ``hcnn`` (1,252 parameters) on 100
digits, cross-entropy, rtol 1e-5, here to t = 0.01 (the first ~240 steps of that run), and
(``--ensemble``) the 8 random starts of ``benchmarks/ensemble.py``'s sliding part in one
``simulate_ensemble``, and (``--densenet``) the quick Figure 2's DenseNet from its random
initialisation (``gradflow.figures.make_margin_model("densenet")``, 100 digits, cross-entropy,
rtol 1e-5, in the accuracy clock as ``figure2(warmup=False)`` runs it, to ln(n/L) = 0.5: the
first ~3,500 steps of its transient). The compiled solve runs once to compile, then again under
``jax.profiler.trace`` with XLA's CPU thunks traced (``--xla_cpu_enable_xprof_traceme``); every
operation's self time (its time less that of the operations nested in it, e.g. a branch inside a
``cond``) is attributed to the innermost ``sliding_*`` scope in its HLO metadata (the solver names
its phases with ``jax.named_scope``: :mod:`gradflow.flow.sliding_solver`):

* ``sliding_stage``: the Runge–Kutta stages, each a gradient with the kinks re-evaluated, less
  ``sliding_projection``: their correction onto the tangent space (the |A| × k algebra);
* ``sliding_step_end`` (the masks of entries, exits and drift), ``sliding_crossing_jvp`` (the one
  JVP of a step with a crossing), ``sliding_change`` (a change of the sliding set, less its
  ``sliding_normals``, ``sliding_box_qp`` and ``sliding_cholesky``) and
  ``sliding_refresh`` (the field at y₁ after a change);
* ``without metadata``: operations XLA made or wrapped itself and left unnamed: copies (of a
  ``cond`` branch that returns its operand, of loop-carried buffers), and, measured on the CNN, its
  max-pooling windows (``reduce-window``) and their index arithmetic;
* ``diffrax loop``: the rest (step-size control, dense output, the saves, the loop's selects).

The shares are of the traced operations' time; ``bare_gradients_per_step`` scales them to the
step's wall time measured *without* the profiler (the least of 3 runs) (tracing adds a fixed cost per operation, which
inflates many small operations more than a few large ones), in bare gradients of the same data
(jitted ``jax.grad`` of the mean loss; for the ensemble, one member's: its step is all 8 members').
The ensemble's ``batching`` compares each phase's µs per loop iteration with those of the first
member run alone (``simulate_flow``): a ratio near 1 is batching for free, near 8 none.
Writes its cases into ``benchmarks/results/sliding_profile.json`` (the cases not run keep theirs).

    python benchmarks/profile_sliding.py               # the CNN (~2 min on 2 cores)
    python benchmarks/profile_sliding.py --ensemble    # and the ensemble
    python benchmarks/profile_sliding.py --densenet --no-cnn   # the DenseNet alone (~4 min)
"""

from __future__ import annotations

import os
import sys
import tempfile

_DUMP = tempfile.mkdtemp(prefix="gradflow_hlo_")
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_xprof_traceme=true"
                           f" --xla_dump_to={_DUMP} --xla_dump_hlo_as_text --xla_dump_hlo_module_re=.*solve.*")

import argparse  # noqa: E402
import collections  # noqa: E402
import glob  # noqa: E402
import gzip  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

import gradflow as gf  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sliding import _bare_gradient_us, _cnn_case  # noqa: E402

from gradflow.datasets import load_image_data  # noqa: E402
from gradflow.figures import make_margin_model  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "sliding_profile.json")
# the solver's phase scopes, innermost first where they nest
PHASES = ("sliding_projection", "sliding_normals", "sliding_box_qp", "sliding_cholesky", "sliding_crossing_jvp", "sliding_refresh", "sliding_change", "sliding_stage", "sliding_step_end")


def _metadata() -> dict[str, str]:
    """Instruction name → its metadata's op_name (empty: none), from the optimized HLO of the solves."""
    out: dict[str, str] = {}
    for path in glob.glob(os.path.join(_DUMP, "*cpu_after_optimizations.txt")):
        with open(path) as f:
            for line in f:
                m = re.match(r"^\s*(?:ROOT )?%([\w.\-]+) = ", line)
                if m:
                    op = re.search(r'op_name="([^"]*)"', line)
                    out.setdefault(m.group(1), op.group(1) if op else "")
    return out


def _self_times(trace_dir: str) -> collections.Counter:
    """Each traced event name's self time (µs): its duration less that of the events nested in it."""
    path = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)[0]
    with gzip.open(path) as f:
        events = json.load(f)
    events = events["traceEvents"] if isinstance(events, dict) else events
    threads = collections.defaultdict(list)
    for e in events:
        if e.get("ph") == "X":
            threads[(e["pid"], e["tid"])].append(e)
    own: collections.Counter = collections.Counter()
    for evs in threads.values():
        evs.sort(key=lambda e: (e["ts"], -e.get("dur", 0)))
        stack: list = []
        for e in evs:
            start, dur = e["ts"], e.get("dur", 0)
            while stack and stack[-1][0] + stack[-1][1] <= start:
                stack.pop()
            if stack:
                own[stack[-1][2]] -= dur
            own[e["name"]] += dur
            stack.append((start, dur, e["name"]))
    return own


def _phase(op_name: str) -> str:
    if not op_name:
        return "without metadata"
    scopes = [p for p in PHASES if f"/{p}/" in op_name or op_name.endswith(f"/{p}")]
    if not scopes:
        return "diffrax loop"
    # the innermost: the scope that appears last in the name stack
    return max(scopes, key=lambda p: op_name.rfind(f"/{p}"))


def _clear_dump() -> None:
    """Empty the HLO dump, so that the next case's instruction names are its own (names repeat across modules)."""
    for path in glob.glob(os.path.join(_DUMP, "*")):
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


def breakdown(run, steps: int, wall: float, bare_us: float) -> dict:
    """Run ``run`` (compiled since the last :func:`_clear_dump`) under the profiler and attribute the
    traced time to the phases."""
    trace_dir = tempfile.mkdtemp(prefix="gradflow_trace_")
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
        run()
    meta = _metadata()
    own = _self_times(trace_dir)
    phases: collections.Counter = collections.Counter()
    top: collections.Counter = collections.Counter()
    for name, us in own.items():
        if name in meta and us > 0:
            phases[_phase(meta[name])] += us
            top[name] += us
    total = sum(phases.values())
    per_step_bare = wall / steps / (bare_us * 1e-6)
    return {
        "traced_ms": total / 1e3,
        "per_step_bare_gradients": per_step_bare,
        "phases": {p: {"share": v / total, "bare_gradients_per_step": per_step_bare * v / total}
                   for p, v in phases.most_common()},
        "top_operations": [{"name": k, "share": v / total, "phase": _phase(meta[k])} for k, v in top.most_common(12)],
    }


def _best_of(run, repeats: int = 3):
    """(result, the least wall time of ``repeats`` calls): the machine's noise only ever adds time."""
    best, result = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = run()
        best = min(best, time.perf_counter() - t0)
    return result, best


def _flow_case(case: str, model, x, y, **flow) -> dict:
    """One ``simulate_flow`` of ``model`` on (x, y), cross-entropy, rtol 1e-5, with ``flow``: compiled,
    timed (best of 3) and profiled by phase, against a bare gradient of the same data."""
    kw = dict(loss="cross_entropy", rtol=1e-5, atol=1e-8, diagnostics=gf.Diagnostics(sharpness=False),
              max_steps=300_000) | flow
    bare = _bare_gradient_us(model, x, y)

    def run():
        return gf.simulate_flow(model, (x, y), **kw)

    _clear_dump()
    run()  # compiles
    r, wall = _best_of(run)
    st = r.stats
    out = {"case": case, "status": r.status, "steps": st["steps"], "gradient_evaluations": st["gradient_evaluations"],
           "wall_s": wall, "bare_gradient_us": bare,
           "per_evaluation_bare_gradients": wall / st["gradient_evaluations"] / (bare * 1e-6),
           "sliding_changes": st["sliding_changes"], "sliding_crossing_steps": st["sliding_crossing_steps"],
           "sliding_capacity": st["sliding_capacity"]}
    out.update(breakdown(run, st["steps"], wall, bare))
    return out


def cnn_case() -> dict:
    model, x, y = _cnn_case(100)
    return _flow_case("hcnn, 100 digits, cross-entropy, rtol 1e-5, to t = 0.01", model, x, y, t_max=0.01,
                      save_at=np.array([0.0, 0.005, 0.01]))


def densenet_case(until: float = 0.5) -> dict:
    """The quick Figure 2's DenseNet from its random initialisation, in the accuracy clock, to
    ln(n/L) = ``until`` (its transient starts at ln(n/L) ≈ −0.83: L = Σ ℓ ≈ n ln 10)."""
    x, y = load_image_data("digits", n=100, seed=0)
    model = make_margin_model("densenet", x.shape[1:], 10, seed=0)
    return _flow_case("the quick Figure 2's DenseNet, 100 digits, cross-entropy, rtol 1e-5, accuracy clock, "
                      f"from its random initialisation to ln(n/L) = {until:g}", model, x, y, clock="accuracy",
                      until_accuracy=until)


def ensemble_case() -> dict:
    x, y = gf.datasets.wine_one_vs_rest(2)
    models = [gf.ReLUMLP([14, 8, 1], key=jax.random.PRNGKey(seed), init_scale=1.0) for seed in range(8)]

    def run():
        return gf.simulate_ensemble(models, (x, y), 1e4, max_steps=20_000, num_save=20)

    _clear_dump()
    run()  # compiles
    r, wall = _best_of(run)
    steps = max(m.stats["steps"] for m in r.members)
    bare = _bare_gradient_us(models[0], x, y, loss_name="exponential")  # one member's
    out = {"case": "8 ReLU starts (wine 2 vs rest, 8 units) to t = 1e4, one device", "statuses": r.status,
           "loop_steps": steps, "wall_s": wall, "bare_gradient_us": bare}
    out.update(breakdown(run, steps, wall, bare))

    def alone():  # the first member on its own, as the loop of benchmarks/ensemble.py runs it
        return gf.simulate_flow(models[0], (x, y), 1e4, max_steps=20_000, num_save=20,
                                diagnostics=gf.Diagnostics(sharpness=False))

    _clear_dump()
    alone()
    r1, wall1 = _best_of(alone)
    one = breakdown(alone, r1.stats["steps"], wall1, bare)
    # µs per loop iteration, by phase: one member's step against the 8 members' vmapped step
    per_ensemble, per_single = wall / steps * 1e6, wall1 / r1.stats["steps"] * 1e6
    rows = [(p, one["phases"].get(p, {"share": 0.0})["share"] * per_single, v["share"] * per_ensemble)
            for p, v in out["phases"].items()] + [("step", per_single, per_ensemble)]
    out["batching"] = [{"phase": p, "single_us": single, "ensemble_us": batched, "ratio": batched / max(single, 1e-9)}
                       for p, single, batched in rows]
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ensemble", action="store_true", help="also the ensemble of 8 ReLU starts")
    parser.add_argument("--densenet", action="store_true", help="also the quick Figure 2's DenseNet from init")
    parser.add_argument("--no-cnn", action="store_true", help="skip the CNN (its entry in the file stays)")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore", UserWarning)
    cases = {"cnn": cnn_case, "ensemble": ensemble_case, "densenet": densenet_case}
    wanted = {"cnn": not args.no_cnn, "ensemble": args.ensemble, "densenet": args.densenet}
    out = {name: case() for name, case in cases.items() if wanted[name]}
    print(json.dumps(out, indent=2))
    stored = json.load(open(RESULTS)) if os.path.exists(RESULTS) else {}
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as f:
        json.dump(stored | out, f, indent=2)


if __name__ == "__main__":
    main()
