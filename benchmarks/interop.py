"""Cost of bringing your own model: the same flow written four ways, timed side by side.

The same weights (a two-layer deep linear net, d → width → 1) as a batched gradflow.DeepLinear, a
per-example eqx.nn.MLP (vmapped by gradflow.interop), gradflow.as_model on a per-example function,
and a Flax NNX module (if flax is installed). Each flow runs twice: the first call includes
compilation, the second reuses it (its wall time still includes the checks before the solve: shape
detection and, without a declared degree, its measurement). Prints the second-call times as ratios to the
gradflow model and the largest relative difference of the diagnostics; writes
benchmarks/results/interop.json.

    python benchmarks/interop.py [--width 64] [--n 200] [--t-max 2.0]   # measured: --width 32 --n 100 --t-max 1
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import gradflow as gf


def _identity(z):
    return z


def _builders(layers):
    a1, a2 = (np.asarray(a) for a in layers)
    d, width = a1.shape[1], a1.shape[0]

    def equinox():
        mlp = eqx.nn.MLP(d, "scalar", width, 1, activation=_identity, use_bias=False, use_final_bias=False,
                         key=jax.random.PRNGKey(0))
        with gf.x64():
            return eqx.tree_at(lambda m: (m.layers[0].weight, m.layers[1].weight), mlp,
                               (jnp.asarray(a1), jnp.asarray(a2)))

    def apply(p, x):
        return (p["out"] @ (p["hidden"] @ x))[0]

    def function():
        return gf.as_model(apply, {"hidden": a1, "out": a2})

    out = {"equinox": equinox, "function": function}
    try:
        from flax import nnx
    except ImportError:
        return out

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.hidden = nnx.Linear(d, width, use_bias=False, param_dtype=jnp.float64, rngs=rngs)
            self.out = nnx.Linear(width, 1, use_bias=False, param_dtype=jnp.float64, rngs=rngs)

        def __call__(self, x):
            return self.out(self.hidden(x))

    def flax_nnx():
        with gf.x64():
            net = Net(nnx.Rngs(0))
            net.hidden.kernel[...] = jnp.asarray(a1.T)
            net.out.kernel[...] = jnp.asarray(a2.T)
        return net

    out["nnx"] = flax_nnx
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--t-max", type=float, default=2.0)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.n, 3))
    y = np.where(x @ np.array([1.0, -0.5, 0.2]) > 0, 1.0, -1.0)
    # deep linear, not ReLU: from a random start the ReLU flow slides along a kink until max_steps
    # (measured: 100,000 steps in every representation), which times the step controller, not the model
    ref_model = gf.DeepLinear(2, (3, args.width), key=jax.random.PRNGKey(0), init_scale=2.0)
    ways = {"gradflow": lambda: ref_model, **_builders(ref_model.layers)}
    rows = {}
    for name, build in ways.items():
        times = []
        for _ in range(2):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                start = time.perf_counter()
                res = gf.simulate_flow(build(), (x, y), args.t_max, num_save=10)
                times.append(time.perf_counter() - start)
        rows[name] = dict(first_call_s=times[0], solve_s=times[1], steps=res.stats["steps"], status=res.status,
                          result=res)
    ref = rows["gradflow"]["result"]
    keys = ("log_loss", "norm", "smoothed_margin", "margins", "angle", "path_length")
    out = {"width": args.width, "n": args.n, "t_max": args.t_max, "backend": jax.default_backend(), "ways": {}}
    print(f"{'way':>10} {'first call s':>13} {'solve s':>9} {'solve ratio':>12} {'steps':>6} {'max rel diff':>13}")
    for name, row in rows.items():
        res = row.pop("result")
        diff = max(float(np.max(np.abs(res.diagnostics[k] - ref.diagnostics[k])) / np.max(np.abs(ref.diagnostics[k])))
                   for k in keys)
        row.update(solve_ratio=row["solve_s"] / rows["gradflow"]["solve_s"], max_rel_diff=diff)
        out["ways"][name] = row
        print(f"{name:>10} {row['first_call_s']:13.3f} {row['solve_s']:9.3f} {row['solve_ratio']:12.2f} "
              f"{row['steps']:6d} {diff:13.2e}")
    path = Path(__file__).resolve().parent / "results" / "interop.json"
    path.write_text(json.dumps(out, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
