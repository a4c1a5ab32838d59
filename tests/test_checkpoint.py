"""Long runs never lose work: a run killed with SIGKILL resumes from its checkpoint and ends where an
uninterrupted run ends; a corrupt or foreign checkpoint is refused."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import gradflow as gf

SCRIPT = textwrap.dedent(
    """
    import sys, time
    import numpy as np, jax
    import gradflow as gf
    from gradflow.datasets import iris_binary

    x, y = iris_binary()
    model = gf.Linear(3, key=jax.random.PRNGKey(0), init_scale=1.0)
    import equinox as eqx, jax.numpy as jnp
    u = gf.maxmargin.svm_direction(x, y).direction
    with gf.x64():
        model = eqx.tree_at(lambda m: m.w, model, jnp.asarray(u) * 600.0 + jnp.array([0.5, -0.5, 0.0]))
    kwargs = dict(rtol=1e-8, atol=1e-11, save_at=np.geomspace(1e-2, 1e3, 12),
                  run=gf.RunOptions(checkpoint=sys.argv[1], checkpoint_every=1))
    r = gf.simulate_flow(model, (x, y), 1e3, **kwargs)
    r.save(sys.argv[1] + ".result")
    """
)


def _run(path, env=None):
    return subprocess.Popen([sys.executable, "-c", SCRIPT, path], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.slow  # two subprocesses, each compiling its own solve (~55 s on 2 cores)
def test_kill_and_resume(tmp_path):
    """Uninterrupted vs killed-then-resumed: same diagnostics (bitwise: the segments are the same)."""
    ref_path = str(tmp_path / "ref.npz")
    assert _run(ref_path).wait(timeout=600) == 0
    ref = gf.load_result(ref_path + ".result.npz")

    path = str(tmp_path / "ck.npz")
    proc = _run(path)
    deadline = time.time() + 600
    while not os.path.exists(path) and time.time() < deadline:  # first segment written
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert os.path.exists(path)
    with np.load(path) as f:
        done_before_kill = len(f["diag/accuracy"])
    assert _run(path).wait(timeout=600) == 0
    resumed = gf.load_result(path + ".result.npz")
    assert resumed.status == ref.status == "completed"
    assert 0 < done_before_kill < len(ref)  # killed mid-run, not after the end
    for k in ("accuracy", "norm", "angle", "path_length", "log_t", "margins"):
        np.testing.assert_allclose(resumed.diagnostics[k], ref.diagnostics[k], rtol=1e-12, atol=1e-14, err_msg=k)


def _tiny():
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    x = np.array([[1.0, 0.2], [0.3, 1.0], [-0.5, -0.8]])
    y = np.array([1.0, 1.0, -1.0])
    m = gf.Linear(2, key=jax.random.PRNGKey(0))
    with gf.x64():
        m = eqx.tree_at(lambda mm: mm.w, m, jnp.array([2.0, 2.0]))
    return m, x, y


def test_chunked_equals_single_run_and_resume_in_process(tmp_path):
    """Segments of 3 save points (checkpointed) give the same flow as one solve, to tolerance; a
    second call with the same path resumes at the end without recomputing."""
    m, x, y = _tiny()
    ts = np.geomspace(1e-2, 1e6, 12)
    single = gf.simulate_flow(m, (x, y), 1e6, save_at=ts, rtol=1e-9, atol=1e-12)
    path = tmp_path / "c.npz"
    chunked = gf.simulate_flow(m, (x, y), 1e6, save_at=ts, rtol=1e-9, atol=1e-12, run=gf.RunOptions(checkpoint=path, checkpoint_every=3))
    assert chunked.stats["segments"] == 4
    np.testing.assert_allclose(chunked.norm, single.norm, rtol=1e-7)
    np.testing.assert_allclose(chunked.path_length, single.path_length, rtol=1e-6, atol=1e-12)
    again = gf.simulate_flow(m, (x, y), 1e6, save_at=ts, rtol=1e-9, atol=1e-12, run=gf.RunOptions(checkpoint=path, checkpoint_every=3))
    np.testing.assert_array_equal(again.norm, chunked.norm)
    assert again.stats["steps"] == chunked.stats["steps"]


def test_mismatched_or_corrupt_checkpoint(tmp_path):
    m, x, y = _tiny()
    ts = np.geomspace(1e-2, 1e6, 12)
    path = tmp_path / "c.npz"
    gf.simulate_flow(m, (x, y), 1e6, save_at=ts, rtol=1e-9, atol=1e-12, run=gf.RunOptions(checkpoint=path, checkpoint_every=3))
    with pytest.raises(gf.InvalidArgumentError, match="different run.*data_sha256"):
        gf.simulate_flow(m, (x * 1.1, y), 1e6, save_at=ts, rtol=1e-9, atol=1e-12, run=gf.RunOptions(checkpoint=path, checkpoint_every=3))
    with pytest.raises(gf.InvalidArgumentError, match="different run.*rtol"):
        gf.simulate_flow(m, (x, y), 1e6, save_at=ts, rtol=1e-8, atol=1e-12, run=gf.RunOptions(checkpoint=path, checkpoint_every=3))
    path.write_bytes(b"not an npz")
    with pytest.raises(gf.InvalidArgumentError, match="not a readable gradflow checkpoint"):
        gf.simulate_flow(m, (x, y), 1e6, save_at=ts, rtol=1e-9, atol=1e-12, run=gf.RunOptions(checkpoint=path, checkpoint_every=3))
