"""Peak memory of a flow against the number of parameters k.

A flow never stores per-step states: what it keeps is the ODE state (W plus the solver's stages,
a fixed number of copies of W) and the diagnostics at the save points, O(T·n). So the memory
above the baseline should grow like c·8k bytes with a constant c that does not depend on k or on
the number of steps.

Setup: ``gradflow.Linear(d)`` (k = d parameters) on n = 8 unit-norm points in R^d with labels
from a random hyperplane, exponential loss, Tsit5, time clock, t_max = 10, num_save = 20,
rtol 1e-6 (atol 1e-9). Each size runs in a fresh subprocess; it measures

* ``baseline``: the resident set after imports, the data (as float64 JAX arrays) and the model;
* ``peak``: the RSS high-water mark (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) after the
  flow (compile included), and ``peak_minus_baseline``, its ratio to the state size 8·k bytes.

To keep the data's own construction out of the high-water mark, the worker resets the kernel's
peak-RSS counter (``/proc/self/clear_refs``) after building the data where Linux allows it and
also reports that counter (``VmHWM``); ``ru_maxrss`` is reported as well.

One size is run again with ≈20× more steps (t_max = 1e6, rtol 1e-10): its peak must not grow.
The slope between the two largest sizes gives the marginal bytes per parameter (compile and
interpreter memory are a constant, visible at small k).

Writes benchmarks/results/memory.json and prints a table. ``--quick``: k ≤ 1e6, the long run
at 1e5 (under ~2 minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
N_POINTS = 8


def _rss_kib() -> dict:
    """Current RSS and the kernel's peak RSS (VmHWM) in KiB, from /proc/self/status."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":")
                out[key] = int(value.split()[0])
    return out


def worker(k: int, t_max: float, rtol: float, atol: float, num_save: int) -> dict:
    import warnings

    import jax
    import jax.numpy as jnp
    import numpy as np

    import gradflow as gf

    warnings.simplefilter("ignore", UserWarning)
    rng = np.random.default_rng(0)
    with gf.x64():
        x_np = rng.standard_normal((N_POINTS, k))
        x_np /= np.linalg.norm(x_np, axis=1, keepdims=True)
        y_np = np.sign(x_np @ rng.standard_normal(k))
        x = jnp.array(x_np, dtype=jnp.float64)
        y = jnp.array(y_np, dtype=jnp.float64)
        del x_np
        model = gf.Linear(k, key=jax.random.PRNGKey(0), init_scale=1.0)
        jax.block_until_ready((x, y, model.w))
    reset = False
    try:  # "5" resets the peak RSS counter (Linux ≥ 4.0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        reset = True
    except OSError:
        pass
    before = _rss_kib()
    maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    res = gf.simulate_flow(model, (x, y), t_max, rtol=rtol, atol=atol, num_save=num_save, check_degree=False)
    wall = time.perf_counter() - start
    after = _rss_kib()
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {
        "k": k,
        "t_max": t_max,
        "rtol": rtol,
        "status": res.status,
        "steps": res.stats["steps"],
        "save_points": len(res),
        "wall_seconds": wall,
        "baseline_rss_bytes": before["VmRSS"] * 1024,
        "ru_maxrss_before_bytes": maxrss_before * 1024,
        "ru_maxrss_bytes": maxrss * 1024,
        "vmhwm_bytes": after["VmHWM"] * 1024,
        "hwm_reset": reset,
        "final_rss_bytes": after["VmRSS"] * 1024,
    }


def run_size(k: int, t_max: float, rtol: float, atol: float, num_save: int) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", str(k), str(t_max), str(rtol), str(atol),
           str(num_save)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"worker k={k} failed:\n{proc.stderr[-3000:]}")
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    state = 8 * k
    # Peak of the run: the reset kernel counter where available (excludes building the data),
    # else getrusage's high-water mark.
    peak = r["vmhwm_bytes"] if r["hwm_reset"] else r["ru_maxrss_bytes"]
    r["state_bytes"] = state
    r["data_bytes"] = 8 * k * N_POINTS
    r["peak_bytes"] = peak
    r["peak_minus_baseline_bytes"] = peak - r["baseline_rss_bytes"]
    r["ru_maxrss_minus_baseline_bytes"] = r["ru_maxrss_bytes"] - r["baseline_rss_bytes"]
    r["ratio_to_state"] = r["peak_minus_baseline_bytes"] / state
    return r


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--worker":
        k, t_max, rtol, atol, num_save = int(argv[1]), float(argv[2]), float(argv[3]), float(argv[4]), int(argv[5])
        print(json.dumps(worker(k, t_max, rtol, atol, num_save)))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="k ≤ 1e6 and the long run at 1e5 (< ~2 min)")
    parser.add_argument("--sizes", type=int, nargs="*", default=None)
    args = parser.parse_args(argv)
    sizes = args.sizes or ([10**4, 10**5, 10**6] if args.quick else [10**4, 10**5, 10**6, 10**7])
    long_k = 10**5 if args.quick else 10**6
    short = dict(t_max=10.0, rtol=1e-6, atol=1e-9, num_save=20)
    long = dict(t_max=1e6, rtol=1e-10, atol=1e-13, num_save=20)

    rows = []
    for k in sizes:
        rows.append(dict(run_size(k, **short), run="short"))
        print(f"  k={k:.0e} done", file=sys.stderr, flush=True)
    long_row = dict(run_size(long_k, **long), run="long")
    short_same = next((r for r in rows if r["k"] == long_k), None)
    if short_same is None:
        short_same = dict(run_size(long_k, **short), run="short")

    mib = 2.0**20
    print(f"{'run':6} {'k':>9} {'steps':>6} {'state MiB':>10} {'baseline MiB':>13} {'peak MiB':>9} "
          f"{'peak-base MiB':>14} {'(peak-base)/8k':>15} {'wall s':>7}")
    for r in [*rows, long_row]:
        print(f"{r['run']:6} {r['k']:>9.0e} {r['steps']:>6} {r['state_bytes'] / mib:>10.2f} "
              f"{r['baseline_rss_bytes'] / mib:>13.1f} {r['peak_bytes'] / mib:>9.1f} "
              f"{r['peak_minus_baseline_bytes'] / mib:>14.1f} {r['ratio_to_state']:>15.2f} {r['wall_seconds']:>7.2f}")
    a, b = rows[-2], rows[-1]
    slope = (b["peak_minus_baseline_bytes"] - a["peak_minus_baseline_bytes"]) / (b["k"] - a["k"])
    steps_factor = long_row["steps"] / max(short_same["steps"], 1)
    growth = long_row["peak_minus_baseline_bytes"] - short_same["peak_minus_baseline_bytes"]
    out = {
        "setup": (f"gradflow.Linear(k) on n={N_POINTS} points, exponential loss, tsit5, time clock, "
                  "t_max=10, num_save=20, rtol 1e-6, atol 1e-9; one fresh subprocess per run"),
        "peak_measure": "VmHWM after resetting it post-data (/proc/self/clear_refs 5) where possible, else ru_maxrss",
        "runs": rows,
        "marginal_bytes_per_parameter": slope,
        "marginal_copies_of_state": slope / 8.0,
        "steps_test": {
            "k": long_k,
            "short": {"t_max": short["t_max"], "rtol": short["rtol"], "steps": short_same["steps"],
                      "peak_minus_baseline_bytes": short_same["peak_minus_baseline_bytes"]},
            "long": {"t_max": long["t_max"], "rtol": long["rtol"], "steps": long_row["steps"],
                     "peak_minus_baseline_bytes": long_row["peak_minus_baseline_bytes"]},
            "steps_factor": steps_factor,
            "peak_growth_bytes": growth,
            "peak_growth_relative": growth / max(short_same["peak_minus_baseline_bytes"], 1),
        },
        "quick": bool(args.quick),
    }
    print(f"marginal memory: {slope:.1f} bytes/parameter = {slope / 8:.1f} copies of the state "
          f"(from k={a['k']:.0e} to {b['k']:.0e})")
    print(f"{steps_factor:.1f}x more steps at k={long_k:.0e}: peak-baseline {growth / mib:+.1f} MiB "
          f"({out['steps_test']['peak_growth_relative']:+.1%})")
    path = os.path.join(HERE, "results", "memory.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(out, f, indent=2)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
