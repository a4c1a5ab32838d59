"""Data sharded over 4 (forced host) devices gives the single-device flow to 1e-12."""

import json
import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import json
    import numpy as np, jax
    import gradflow as gf
    assert len(jax.devices()) == 4, jax.devices()
    x, y = gf.datasets.appendix_a_synthetic(n=40, seed=0)
    model = gf.TwoLayerSquaredReLU(3, 16, key=jax.random.PRNGKey(0), signs="alternating", init_scale=0.5)
    def rel(a, b):
        return {k: float(np.max(np.abs(a.diagnostics[k] - b.diagnostics[k]) / (np.abs(a.diagnostics[k]) + 1e-300)))
                for k in ("norm", "log_loss", "angle", "path_length", "raw_margins")}
    # fixed steps: both runs take the same steps, so only the summation order differs
    fixed = dict(num_save=10, check_degree=False, dt0=0.01, controller_options={"constant": True}, max_steps=3000)
    one = gf.simulate_flow(model, (x, y), 20.0, **fixed)
    four = gf.simulate_flow(model, (x, y), 20.0, devices="all", **fixed)
    out = {"fixed": rel(one, four), "steps": [one.stats["steps"], four.stats["steps"]]}
    # adaptive steps: rounding may flip an accept/reject decision; agreement is then to tolerance
    adaptive = dict(rtol=1e-8, atol=1e-10, num_save=10, check_degree=False)
    out["adaptive"] = rel(gf.simulate_flow(model, (x, y), 20.0, **adaptive),
                          gf.simulate_flow(model, (x, y), 20.0, devices="all", **adaptive))
    out["sharding"] = str(four.model.w.sharding)
    print(json.dumps(out))
    """
)


def test_sharded_equals_single_device():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    p = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["steps"][0] == out["steps"][1] == 2000
    assert "'data': 4" in out["sharding"]
    for k in ("norm", "log_loss", "angle", "path_length", "raw_margins"):
        assert out["fixed"][k] <= 1e-12, (k, out["fixed"][k])
    for k in ("norm", "log_loss", "path_length"):  # adaptive: agreement to solver tolerance only
        assert out["adaptive"][k] <= 1e-5, (k, out["adaptive"][k])
