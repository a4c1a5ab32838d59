"""What the first call of a flow spends before its first step: compiling.

On 2 CPU cores a short ``simulate_flow`` of a small CNN spends most of its wall time in XLA's
compiler, not in the flow: the compiled solve holds the network many times over (every stage, the
sliding set's normals and JVPs, the refreshed field, the diagnostics at the save points and at
both ends, the sharpness's power iteration, the first step's choice). This script measures, for the
two networks of the quick Figure 2 (``hcnn``, the homogeneous H-AlexNet, and the DenseNet, on 100
digits, cross-entropy), one short call (to t = 10⁻³) per configuration, each in this one process:

* ``bare_compile_s``: compiling a jitted ``jax.grad`` of the mean cross-entropy on the same data;
* per configuration (``default``: the sliding field, Bosh3; ``tsit5``: Tsit5 without sliding,
  ``sliding=False``), the call's wall time, the XLA compile time of its solve
  (``solve_compile_s``, from JAX's monitoring events), the tracing time, the compile time of every
  other jitted function (``other_compile_s``: the checks before the solve), and
  ``network_copies``: the convolutions in the solve's optimized HLO over those in the bare
  gradient's, i.e. how many forward-and-backward passes of the network the solve contains.

``reuse``: the same first call (the default configuration) in fresh processes: without a
persistent compilation cache, then with one (``JAX_COMPILATION_CACHE_DIR``, ``EQX_ON_ERROR=nan``)
twice, first writing it (``cache_cold_s``) and then reading it (``cache_warm_s``), and once more
reading it without ``EQX_ON_ERROR=nan`` (``cache_warm_raise_s``): equinox's default turns
diffrax's checks of its inputs inside the solve into host callbacks, and JAX does not cache an
executable with host callbacks.

The counts are exact and do not depend on the machine; the seconds do. Writes
``benchmarks/results/compile_time.json`` (~10 minutes on 2 cores).

    python benchmarks/compile_time.py
"""

from __future__ import annotations

import os
import tempfile

_XLA_FLAGS = os.environ.get("XLA_FLAGS", "")
_DUMP = tempfile.mkdtemp(prefix="gradflow_hlo_")
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" --xla_dump_to={_DUMP} --xla_dump_hlo_as_text"
                           " --xla_dump_hlo_module_re=.*(solve|bare_gradient).*")

import glob  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import jax  # noqa: E402
import jax.monitoring  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import gradflow as gf  # noqa: E402
from gradflow.figures import load_image_data, make_margin_model  # noqa: E402
from gradflow.params import combine, partition  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "compile_time.json")
ARCHS = ("hcnn", "densenet")
CONFIGS = {"default": {}, "tsit5": dict(solver="tsit5", sliding=False)}
_EVENTS: list = []


def _listen(event, duration, **kwargs):
    _EVENTS.append((event, duration, kwargs.get("fun_name", "")))


def _convolutions(stem: str, seen: set) -> int:
    """Convolutions in the optimized HLO of the newest dumped module whose name contains ``stem``
    (and that ``seen`` does not hold yet)."""
    files = sorted(f for f in glob.glob(os.path.join(_DUMP, f"*{stem}*after_optimizations.txt")) if f not in seen)
    if not files:
        raise RuntimeError(f"no optimized HLO dumped for {stem!r} in {_DUMP}")
    seen.update(files)
    with open(files[-1]) as fh:
        return sum(" convolution(" in line for line in fh)


def _compile_seconds(kind: str, name: str | None = None, exclude: str | None = None) -> float:
    return float(sum(d for e, d, f in _EVENTS if kind in e and (name is None or f == name)
                     and (exclude is None or f != exclude)))


def measure(arch: str, seen: set) -> dict:
    x, y = load_image_data("digits", n=100, seed=0)
    model = make_margin_model(arch, x.shape[1:], 10, seed=0)
    out: dict = {"parameters": int(sum(a.size for a in jax.tree_util.tree_leaves(partition(model)[0])))}
    with gf.x64():
        params, static = partition(model)
        xs, labels = jnp.asarray(x, jnp.float64), jnp.asarray(y)

        def bare_gradient(p):
            logits = combine(p, static)(xs)
            return jnp.mean(jax.nn.logsumexp(logits, axis=-1) - logits[jnp.arange(labels.shape[0]), labels])

        t0 = time.perf_counter()
        jax.jit(jax.grad(bare_gradient)).lower(params).compile()
        out["bare_compile_s"] = time.perf_counter() - t0
        out["bare_convolutions"] = _convolutions("bare_gradient", seen)
    for name, options in CONFIGS.items():
        _EVENTS.clear()
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = gf.simulate_flow(model, (x, y), 1e-3, loss="cross_entropy", rtol=1e-5, atol=1e-8, **options)
        wall = time.perf_counter() - t0
        convs = _convolutions("solve", seen)
        solve = _compile_seconds("backend_compile", "jit(solve)")
        out[name] = dict(status=res.status, steps=int(res.stats["steps"]), wall_s=wall, solve_compile_s=solve,
                         other_compile_s=_compile_seconds("backend_compile", exclude="jit(solve)"),
                         trace_s=_compile_seconds("jaxpr_trace"),
                         compile_share=(solve + _compile_seconds("backend_compile", exclude="jit(solve)")) / wall,
                         solve_convolutions=convs, network_copies=convs / out["bare_convolutions"],
                         solve_compile_over_bare=solve / out["bare_compile_s"])
        print(arch, name, json.dumps(out[name]), flush=True)
    return out


_FIRST_CALL = """
import sys, time, warnings
import gradflow as gf
from gradflow.figures import load_image_data, make_margin_model
warnings.simplefilter("ignore")
x, y = load_image_data("digits", n=100, seed=0)
model = make_margin_model(sys.argv[1], x.shape[1:], 10, seed=0)
t0 = time.perf_counter()
gf.simulate_flow(model, (x, y), 1e-3, loss="cross_entropy", rtol=1e-5, atol=1e-8)
print(time.perf_counter() - t0)
"""


def reuse(arch: str) -> dict:
    """The first call (default configuration, to t = 1e-3) in fresh processes, without and with a
    persistent compilation cache (see the module docstring)."""
    cache = tempfile.mkdtemp(prefix="gradflow_jax_cache_")
    base = {k: v for k, v in os.environ.items() if k not in ("JAX_COMPILATION_CACHE_DIR", "EQX_ON_ERROR")}
    base["XLA_FLAGS"] = _XLA_FLAGS  # no HLO dumps in the children

    def first_call(**env) -> float:
        done = subprocess.run([sys.executable, "-c", _FIRST_CALL, arch], env={**base, **env}, capture_output=True,
                              text=True, check=True)
        return float(done.stdout.split()[-1])

    try:
        out = {"no_cache_s": first_call()}
        out["cache_cold_s"] = first_call(JAX_COMPILATION_CACHE_DIR=cache, EQX_ON_ERROR="nan")
        out["cache_warm_s"] = first_call(JAX_COMPILATION_CACHE_DIR=cache, EQX_ON_ERROR="nan")
        out["cache_warm_raise_s"] = first_call(JAX_COMPILATION_CACHE_DIR=cache)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    out["warm_over_no_cache"] = out["cache_warm_s"] / out["no_cache_s"]
    print(arch, "reuse", json.dumps(out), flush=True)
    return out


def main() -> None:
    jax.monitoring.register_event_duration_secs_listener(_listen)
    seen: set = set()
    results = {"setup": "one call to t = 1e-3 per configuration (100 digits, cross-entropy, rtol 1e-5), "
                        "each compiled in this process; network copies = convolutions in the solve's "
                        "optimized HLO over those in a bare jitted gradient's"}
    try:
        for arch in ARCHS:
            results[arch] = measure(arch, seen)
    finally:
        shutil.rmtree(_DUMP, ignore_errors=True)
    results["rows"] = [dict(network=arch, config=name, parameters=results[arch]["parameters"],
                            **{k: results[arch][name][k] for k in ("wall_s", "solve_compile_s", "other_compile_s", "trace_s",
                                                                   "compile_share", "network_copies")},
                            bare_compile_s=results[arch]["bare_compile_s"])
                       for arch in ARCHS for name in CONFIGS]
    results["reuse"] = [dict(network=arch, **reuse(arch)) for arch in ARCHS]
    results["machine"] = dict(cpus=os.cpu_count(), jax=jax.__version__, gradflow=gf.__version__)
    with open(OUT, "w") as fh:
        json.dump(results, fh, indent=1)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
