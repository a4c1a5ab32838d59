"""Gradient evaluations per second inside the solve on the Figure 2 setup, on whatever JAX sees.

Setup: ``gradflow.HomogeneousCNN(3, 32, 10)`` (bias-free H-AlexNet-style CNN, 5-homogeneous),
10,000 examples of 3×32×32 (synthetic uniform [0, 1] pixels with random labels, or the first n
CIFAR-10 training images with ``--data-dir``), cross-entropy loss, float64, Tsit5 with its
adaptive PID controller, time clock.

The loss is a *sum* over examples, so at initialisation the flow is stiff in t with a rate ∝ n
(at n = 64 Tsit5 needs > 200 steps to reach t = 0.01). A "short t_max" is therefore set as a
fixed step budget: t_max = 1 with ``max_steps = --steps`` (default 40 on an accelerator, 3 on
CPU), so the run ends with status 'failed' (max_steps reached) after exactly that many adaptive
steps; that is intended here. The diagnostics are saved at t = 0 only (``save_at=[0]``) plus the
final state, so every counted diagnostic evaluation really happens. The flow's gradient
evaluations are ``stats["gradient_evaluations"] + stats["diagnostic_evaluations"]`` (Tsit5: 6 per
attempted step + 1 first stage + 2 for the initial step size; 1 per save point + 1 at the end); its wall time is
``stats["wall_time"]`` of a second call (compiled in the first). The reference is a bare jitted loop, ``lax.fori_loop`` of ``jax.grad``
of the log-loss with tiny descent steps (as in benchmarks/overhead.py), run for the same number
of evaluations. ``ratio`` = flow evaluations/s ÷ bare evaluations/s (target ≥ 0.8 on a GPU).

Part ``cost`` (issue 25): the ``cost`` part of benchmarks/sliding.py on this device, without
its churn runs (``--transient`` adds the transients to ln(n/L) = ln n + 1): ``hcnn`` on 100
digits, the default (sliding) and Tsit5 + PID to t = 0.05, each step's and each counted
evaluation's wall time in bare jitted gradients on the same device, and the phases of a sliding
step. Part ``ensemble``: the 8 sliding wine members of benchmarks/ensemble.py (``--part
sliding``), ``simulate_ensemble`` against a loop of ``simulate_flow``. Their results go under
``sliding_cost`` and ``sliding_ensemble``; the throughput part's stay at the top level.

    python benchmarks/gpu.py                     # all three parts
    python benchmarks/gpu.py --part cost --part ensemble

Runs unchanged on a CUDA machine and on CPU. ``--quick`` uses 256 examples when no accelerator
is present (10,000 otherwise) and one repeat; ``--n`` sets the number of examples explicitly.
Writes benchmarks/results/gpu.json with the device name.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from overhead import bare_loop  # noqa: E402  (sibling scripts: benchmarks/ is on sys.path)

import gradflow as gf

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results", "gpu.json")


def has_accelerator() -> bool:
    return jax.default_backend() != "cpu"


def synthetic_images(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.0, 1.0, size=(n, 3, 32, 32))
    y = rng.integers(0, 10, size=n)
    y[:10] = np.arange(10)  # every class present
    return x, y


def _device() -> dict:
    dev = jax.devices()[0]
    return {"platform": dev.platform, "device_kind": getattr(dev, "device_kind", ""), "name": str(dev),
            "count": jax.device_count(), "jax": jax.__version__}


def _merge(update: dict) -> None:
    """Merge ``update`` into the results file after every part (a part cut short keeps the others)."""
    out = json.load(open(RESULTS)) if os.path.exists(RESULTS) else {}
    out.update(update)
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as f:
        json.dump(out, f, indent=2)
    print(f"wrote {RESULTS}", flush=True)


def part_cost(transient: bool) -> dict:
    from sliding import part_cost as sliding_cost  # a sibling script, loaded only for this part

    device = _device()
    out = sliding_cost(churn_n=None, churn_rtols=(), transient=transient,
                       write=lambda out: _merge({"sliding_cost": dict(out, device=device)}))
    return dict(out, device=device)


def part_ensemble(repeats: int) -> dict:
    # imported here: ensemble.py sets XLA_FLAGS (one host device per core) when it is imported,
    # which must not change the devices the other parts see
    from ensemble import sliding_case

    out = dict(sliding_case(repeats), device=_device())
    print(json.dumps(out, indent=1), flush=True)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["throughput", "cost", "ensemble"], action="append",
                        help="run only these parts (default: all); the others keep their results")
    parser.add_argument("--transient", action="store_true", help="the cost part runs the transients too")
    parser.add_argument("--n", type=int, default=None, help="examples (default 10,000; 256 with --quick on CPU)")
    parser.add_argument("--data-dir", default=None, help="CIFAR-10 python batches (else synthetic images)")
    parser.add_argument("--steps", type=int, default=None, help="adaptive steps (default 40; 3 on CPU)")
    parser.add_argument("--t-max", type=float, default=1.0)
    parser.add_argument("--rtol", type=float, default=1e-6)
    parser.add_argument("--repeats", type=int, default=None, help="timed flow/bare repeats (default 2; 1 with --quick)")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore", UserWarning)  # Assumption 2.3 at a random start, stalls
    parts = args.part or ["throughput", "cost", "ensemble"]
    print(f"jax {jax.__version__} on {_device()}", flush=True)
    if "throughput" in parts:
        _merge(part_throughput(args))
    if "cost" in parts:
        _merge({"sliding_cost": part_cost(args.transient)})
    if "ensemble" in parts:
        _merge({"sliding_ensemble": part_ensemble(args.repeats or 2)})


def part_throughput(args) -> dict:
    accel = has_accelerator()
    n = args.n if args.n is not None else (256 if args.quick and not accel else 10_000)
    repeats = args.repeats or (1 if args.quick else 2)
    steps = args.steps or (40 if accel else 3)
    device = _device()
    print(f"device: {device['platform']} {device['device_kind']} ({device['name']}), n = {n}", flush=True)

    if args.data_dir:
        x, y = gf.datasets.load_cifar10(args.data_dir, n=n)
        data_name = f"CIFAR-10 (first {n} training images)"
    else:
        x, y = synthetic_images(n)
        data_name = f"synthetic uniform 3x32x32, random labels, n={n}"
    model = gf.HomogeneousCNN(3, 32, 10, key=jax.random.PRNGKey(0))
    k = gf.num_params(model)
    with gf.x64():  # the data once on the device, as float64
        data = (jnp.asarray(x, jnp.float64), jnp.asarray(y))
    opts = dict(loss="cross_entropy", solver="tsit5", rtol=args.rtol, atol=args.rtol * 1e-3, save_at=[0.0],
                max_steps=steps, check_degree=False)

    start = time.perf_counter()
    r = gf.simulate_flow(model, data, args.t_max, **opts)
    first_call = time.perf_counter() - start
    flow = []
    for _ in range(repeats):
        r = gf.simulate_flow(model, data, args.t_max, **opts)
        evals = r.stats["gradient_evaluations"] + r.stats["diagnostic_evaluations"]
        flow.append((r.stats["wall_time"], evals))
    flow_wall, evals = min(flow)
    bare_wall = evals * min(bare_loop(model, x, y, evals, loss=gf.CrossEntropy()) for _ in range(repeats))
    flow_gps, bare_gps = evals / flow_wall, evals / bare_wall
    out = {
        "setup": (f"HomogeneousCNN(3, 32, 10) ({k} parameters), {data_name}, cross-entropy, float64, tsit5 "
                  f"rtol {args.rtol:g}, t_max {args.t_max:g} with a budget of {steps} adaptive steps, save_at=[0]"),
        "device": device,
        "n": n,
        "parameters": k,
        "flow_status": r.status,
        "flow_reason": r.reason,
        "flow_t_reached": float(r.t[-1]),
        "flow_steps": r.stats["steps"],
        "flow_rejected_steps": r.stats["rejected_steps"],
        "flow_gradient_evaluations": evals,
        "flow_seconds": flow_wall,
        "flow_first_call_seconds_incl_compile": first_call,
        "bare_seconds": bare_wall,
        "flow_gradients_per_second": flow_gps,
        "bare_gradients_per_second": bare_gps,
        "flow_examples_per_second": flow_gps * n,
        "ratio": flow_gps / bare_gps,
        "target": 0.8,
        "target_applies": accel,
        "ln_n_over_L": [float(r.accuracy[0]), float(r.accuracy[-1])],
        "repeats": repeats,
        "quick": bool(args.quick),
    }
    print(json.dumps(out, indent=2), flush=True)
    return out


if __name__ == "__main__":
    main()
