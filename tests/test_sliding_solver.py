"""The sliding solver (issue 25): more sliding pairs than the old fixed capacity, the capacity grown on
demand, ensembles that slide, implicit solvers refused on kinks, a checkpointed run resumed with
sliding pairs in its state, and its gradient evaluations against a counter around its stages."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import io_callback

import gradflow as gf
import gradflow.ensemble as ensemble
import gradflow.flow.integration as integration
import gradflow.flow.sliding_solver as sliding_solver
from gradflow.sliding.state import COUNTS
from gradflow.solvers import JVP_COST

NO_SHARPNESS = gf.Diagnostics(sharpness=False)
C = 0.5  # the toy's slope on the off side
M = 150  # coordinates of the toy: more pairs than the 128 slots the sliding state once had


def _many_apply(p, xi):
    """L = e^(−Φ) = Σ_j [(1 + C) relu(w_j) − C w_j] + ½ v²: each w_j moves with dw_j/dt = −1 while
    w_j > 0 and +C while w_j < 0, so it reaches 0 at t = w_j(0) and slides there (σ = C/(1 + C));
    v = v(0) e^(−t). All M pairs slide at once from t = max_j w_j(0)."""
    w = p["w"] * xi[0]
    return -jnp.log(jnp.sum((1 + C) * jax.nn.relu(w) - C * w) + 0.5 * p["v"] ** 2)


def _many_exact(w0, v0, t):
    t = np.asarray(t)[:, None]
    return np.concatenate([np.maximum(w0[None, :] - t, 0.0), v0 * np.exp(-t)], axis=1)


@pytest.fixture(scope="module")
def many():
    w0 = np.linspace(0.2, 1.0, M)
    with gf.x64():
        model = gf.as_model(_many_apply, {"v": jnp.asarray(1.0), "w": jnp.asarray(w0)}, degree=None)
    return model, (np.ones((1, 1)), np.ones(1)), w0


def _run_many(many, t_max=1.5):
    model, data, _ = many
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # L(W₀) > ℓ(0)
        return gf.simulate_flow(model, data, t_max, save_at=np.array([0.0, 0.5, 1.2, t_max]), rtol=1e-9, atol=1e-11,
                                save_params=True, diagnostics=NO_SHARPNESS)


@pytest.mark.slow
def test_more_than_128_pairs_slide_at_once(many, monkeypatch):
    """Started at the 128 slots the sliding state once had for good, the run grows its capacity to the
    150 pairs that slide at once (one segment end and one more compile) instead of leaving pairs to
    chatter, and follows the closed form."""
    monkeypatch.setattr(integration, "INITIAL_CAPACITY", 128)
    r = _run_many(many)
    _, _, w0 = many
    assert r.status == "completed", r.reason
    assert r.stats["sliding_overflow"] == 0 and r.stats["sliding_capacity"] == M
    assert r.stats["segments"] >= 2  # a segment ended at the growth
    assert r.stats["sliding_entries"] == M and r.stats["sliding_exits"] == 0
    assert r.diagnostics["sliding_pairs"][-1] == M  # every pair slides from t = 1
    # params_flat is ravelled in key order: v, then w
    exact = _many_exact(w0, 1.0, r.t)
    np.testing.assert_allclose(r.diagnostics["params_flat"][:, 1:], exact[:, :M], atol=1e-7)
    np.testing.assert_allclose(r.diagnostics["params_flat"][:, 0], exact[:, M], rtol=1e-7)


@pytest.mark.slow
def test_capacity_grows_where_a_step_needs_more(many, monkeypatch):
    """Started at 32 slots, the run grows its capacity (32 → 64 → 128 → 150, one more compile each)
    and ends where the run that starts with room for every pair does."""
    monkeypatch.setattr(integration, "INITIAL_CAPACITY", 32)
    grown = _run_many(many)
    monkeypatch.undo()
    large = _run_many(many)
    assert grown.status == "completed", grown.reason
    assert large.stats["sliding_capacity"] >= M and large.stats["segments"] == 1
    assert grown.stats["sliding_overflow"] == 0 and grown.stats["sliding_capacity"] == M
    assert grown.stats["segments"] > large.stats["segments"]  # a segment ended at each growth
    np.testing.assert_allclose(grown.diagnostics["params_flat"], large.diagnostics["params_flat"], atol=1e-8)


@pytest.mark.slow
def test_ensemble_reruns_the_members_that_need_more_capacity(many, monkeypatch):
    """An ensemble starts at a small sliding capacity; the members whose set outgrows it are run again
    from their starts at twice it, the others keep their first run. Two starts of the toy: in one all
    M pairs slide (64 → 128 → M), in the other the ~56 with w_j(0) ≤ t_max (64 suffices). Both follow
    the closed form, with no overflow."""
    model, data, w0 = many
    w0_b = np.linspace(1.2, 2.0, M)
    with gf.x64():
        model_b = gf.as_model(_many_apply, {"v": jnp.asarray(1.0), "w": jnp.asarray(w0_b)}, degree=None)
    monkeypatch.setattr(ensemble, "ENSEMBLE_CAPACITY", 64)
    t_max = 1.5
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # L(W₀) > ℓ(0)
        ens = gf.simulate_ensemble([model, model_b], data, t_max, save_at=np.array([0.0, 0.5, 1.2, t_max]), rtol=1e-9,
                                   atol=1e-11, save_params=True)
    assert ens.status == ["completed"] * 2 and ens.stats["solves"] == 3
    for r, w, capacity, sliding in ((ens[0], w0, M, M), (ens[1], w0_b, 64, int(np.sum(w0_b <= t_max)))):
        assert r.stats["sliding_overflow"] == 0 and r.stats["sliding_capacity"] == capacity
        assert r.diagnostics["sliding_pairs"][-1] == sliding
        exact = _many_exact(w, 1.0, r.t)
        np.testing.assert_allclose(r.diagnostics["params_flat"][:, 1:], exact[:, :M], atol=1e-7)
        np.testing.assert_allclose(r.diagnostics["params_flat"][:, 0], exact[:, M], rtol=1e-7)


@pytest.mark.slow
def test_ensemble_of_relu_starts_slides_like_single_runs(wine_one_vs_rest):
    """Four random starts of the issue's net (8 bias-free ReLU units on wine) in one vmapped ensemble:
    every member completes, with its own run's steps and final ln(n/L) (measured: equal to 1e-12)."""
    models = [gf.ReLUMLP([14, 8, 1], key=jax.random.PRNGKey(seed), init_scale=1.0) for seed in range(4)]
    kw = dict(max_steps=20_000, num_save=6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        ens = gf.simulate_ensemble(models, wine_one_vs_rest, 30.0, **kw)
        singles = [gf.simulate_flow(m, wine_one_vs_rest, 30.0, diagnostics=NO_SHARPNESS, **kw) for m in models]
    assert ens.status == ["completed"] * 4
    for member, single in zip(ens.members, singles, strict=True):
        assert single.status == "completed" and member.config["sliding"]
        assert member.stats["steps"] == single.stats["steps"]
        assert member.stats["sliding_entries"] == single.stats["sliding_entries"] >= 1
        np.testing.assert_allclose(member.accuracy[-1], single.accuracy[-1], rtol=1e-9)
        np.testing.assert_allclose(member.diagnostics["sliding_pairs"], single.diagnostics["sliding_pairs"])


def test_clock_defect_counts_in_the_lags_tolerance():
    """sliding_solver._with_clock_defect against numpy: the displacement d f₁/speed₁ added to W's
    error estimate is scaled so that its RMS over atol + rtol max(|W₀|, |W₁|) is max(its own, |d| /
    (lag_rtol(rtol) max(1, |s|))); nothing is added where d = 0."""
    with gf.x64():
        rng = np.random.default_rng(0)
        shapes = [(3, 4), (5,)]
        W0, W1, f1, err = ([jnp.asarray(rng.normal(size=sh)) for sh in shapes] for _ in range(4))
        aux = jnp.zeros((2,))
        y_error = sliding_solver.FlowState(err, aux)
        for rtol, atol, d, speed, s in [(1e-3, 1e-6, -2e-3, 1.5, 2.2), (1e-5, 1e-8, 1e-9, 0.8, 0.5),
                                        (1e-2, 1e-5, 0.3, 4.0, -3.0)]:
            sliding = gf.sliding.Sliding(None, rtol, atol=atol)
            out = sliding_solver._with_clock_defect(y_error, jnp.asarray(d), sliding_solver.FlowState(f1, aux),
                                                    jnp.asarray(speed), (W0, W1), sliding, jnp.asarray(s))
            flat = lambda tree: np.concatenate([np.ravel(np.asarray(a)) for a in tree])  # noqa: E731
            scale = atol + rtol * np.maximum(np.abs(flat(W0)), np.abs(flat(W1)))
            step = d / speed * flat(f1)
            own = np.sqrt(np.mean((step / scale) ** 2))
            wanted = abs(d) / (min(rtol, 1e-4) * max(1.0, abs(s)))
            added = step * max(1.0, wanted / own)
            np.testing.assert_allclose(flat(out.W), flat(err) + added, rtol=0, atol=1e-15)
            alone = sliding_solver._with_clock_defect(
                sliding_solver.FlowState([0.0 * e for e in err], aux), jnp.asarray(d),
                sliding_solver.FlowState(f1, aux), jnp.asarray(speed), (W0, W1), sliding, jnp.asarray(s))
            np.testing.assert_allclose(flat(alone.W), added, rtol=1e-12)
            np.testing.assert_allclose(np.sqrt(np.mean((flat(alone.W) / scale) ** 2)), max(own, wanted), rtol=1e-12)
        zero = sliding_solver._with_clock_defect(y_error, jnp.asarray(0.0), sliding_solver.FlowState(f1, aux),
                                                 jnp.asarray(1.0), (W0, W1), gf.sliding.Sliding(None, 1e-3, atol=1e-6),
                                                 jnp.asarray(1.0))
        np.testing.assert_array_equal(flat(zero.W), flat(err))


@pytest.mark.parametrize("rtol", [1e-2, 1e-3])
def test_loose_tolerance_keeps_the_accuracy_clock_on_w_or_fails(wine_one_vs_rest, rtol):
    """The issue's net from six random starts at each of two init scales, in the accuracy clock to
    ln(n/L) = 10 at a loose rtol: a run that ends ``completed`` has its final W at the target to the
    clock's tolerance (1e-2 relative: gradflow.clock.lag_rtol caps it at 1e-4, ×100), whatever rtol.
    Before the cap, at rtol 1e-2 all twelve ended ``completed`` with W at ln(n/L) = 9.3–9.7; with the
    clock defect in W's tolerance, 10 of 12 completed (within 0.065) and two failed off the clock;
    with the defect in the lag's own tolerance (sliding_solver._with_clock_defect) all twelve
    complete within 0.018, and at 1e-3 within 0.01. A failed run would have to name the clock."""
    statuses = []
    for scale in (1.0, 0.05):
        for seed in range(6):
            model = gf.ReLUMLP([14, 8, 1], key=jax.random.PRNGKey(seed), init_scale=scale)
            r = gf.simulate_flow(model, wine_one_vs_rest, clock="accuracy", until_accuracy=10.0, rtol=rtol,
                                 atol=1e-3 * rtol, max_steps=20_000, num_save=20, diagnostics=NO_SHARPNESS)
            statuses.append(r.status)
            assert r.status in ("completed", "failed"), r.reason
            if r.status == "completed":
                assert abs(float(r.accuracy[-1]) - 10.0) <= 1e-2 * 10.0, (scale, seed, r.accuracy[-1])
            else:
                assert "left the clock" in r.reason, r.reason
    assert statuses.count("completed") == 12, statuses


def test_implicit_solver_on_relu_net_is_refused():
    """An implicit solver cannot enter sliding modes: with sliding (the default on ReLU nets) it is
    refused before anything compiles, naming the argument and the ways out."""
    model = gf.ReLUMLP([14, 8, 1], key=jax.random.PRNGKey(0), init_scale=1.0)
    x, y = np.ones((3, 14)), np.array([1.0, -1.0, 1.0])
    for solver in ("kvaerno5", "kvaerno3"):
        with pytest.raises(gf.InvalidArgumentError, match="solver.*cannot integrate the sliding"):
            gf.simulate_flow(model, (x, y), 1e4, solver=solver)


@pytest.mark.slow  # two compiles of the wine net's solve (~60 s on 2 cores)
def test_implicit_solver_on_relu_net_is_bounded(wine_one_vs_rest):
    """With sliding=False an implicit solver chatters on the kinks and ends at a small max_steps
    (never minutes to end failed); 'auto' stays explicit (with a warning) and completes."""
    model = gf.ReLUMLP([14, 8, 1], key=jax.random.PRNGKey(0), init_scale=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        r = gf.simulate_flow(model, wine_one_vs_rest, 1e4, solver="kvaerno5", sliding=False, max_steps=300,
                             diagnostics=NO_SHARPNESS)
    assert r.status == "failed" and "max_steps" in r.reason and r.stats["steps"] == 300
    with pytest.warns(UserWarning, match="stays explicit"):
        a = gf.simulate_flow(model, wine_one_vs_rest, clock="accuracy", until_accuracy=5.0, solver="auto",
                             max_steps=20_000, diagnostics=NO_SHARPNESS, num_save=4)
    assert a.status == "completed" and a.config["solver"] == "bosh3" and a.stats["implicit_segments"] == 0


class _Killed(Exception):
    """Stands for a process killed right after a checkpoint was written."""


@pytest.mark.slow
def test_resume_with_sliding_pairs_in_the_checkpoint(wine_one_vs_rest, tmp_path, monkeypatch):
    """A checkpointed run killed after a chunk while pairs slide, then resumed: the same steps and the
    same W, bit for bit, as the same run uninterrupted (the sliding set, its multipliers and
    normals are in the checkpoint)."""
    model = gf.ReLUMLP([14, 8, 1], key=jax.random.PRNGKey(1), init_scale=1.0)
    kw = dict(save_at=np.concatenate([[0.0], np.geomspace(0.1, 30.0, 11)]), diagnostics=NO_SHARPNESS,
              save_params=True, max_steps=20_000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        whole = gf.simulate_flow(model, wine_one_vs_rest, 30.0, run=gf.RunOptions(checkpoint=tmp_path / "whole.npz",
                                                                                  checkpoint_every=3), **kw)
        assert whole.status == "completed" and whole.diagnostics["sliding_pairs"][-1] >= 1
        path = tmp_path / "run.npz"
        save = gf.flow.checkpoint.CheckpointStore.save
        written = []

        def save_then_die(self, state, segments, next_chunk, switches):
            save(self, state, segments, next_chunk, switches)
            written.append(next_chunk)
            if next_chunk == 3:
                raise _Killed

        monkeypatch.setattr(gf.flow.checkpoint.CheckpointStore, "save", save_then_die)
        with pytest.raises(_Killed):
            gf.simulate_flow(model, wine_one_vs_rest, 30.0, run=gf.RunOptions(checkpoint=path, checkpoint_every=3), **kw)
        monkeypatch.undo()
        with np.load(path) as f:
            assert np.sum(f["state/slide/0"] >= 0) >= 1  # pairs slide in the saved state
            arrays = dict(f)
        # the same checkpoint as written before the "declined" counter existed (its counters end earlier)
        last = max((k for k in arrays if k.startswith("state/slide/")), key=lambda k: int(k.rsplit("/", 1)[1]))
        arrays[last] = arrays[last][:COUNTS.index("declined")]
        old = tmp_path / "old.npz"
        np.savez(old, **arrays)
        resumed = gf.simulate_flow(model, wine_one_vs_rest, 30.0, run=gf.RunOptions(checkpoint=path, checkpoint_every=3),
                                   **kw)
        from_old = gf.simulate_flow(model, wine_one_vs_rest, 30.0, run=gf.RunOptions(checkpoint=old, checkpoint_every=3),
                                    **kw)
    assert written == [1, 2, 3]
    for run in (resumed, from_old):
        assert run.status == "completed", run.reason
        assert run.stats["steps"] == whole.stats["steps"]
        np.testing.assert_array_equal(run.diagnostics["params_flat"], whole.diagnostics["params_flat"])
    assert from_old.stats["sliding_changes"] == whole.stats["sliding_changes"]


@pytest.mark.slow
def test_sliding_evaluations_against_a_counter_around_the_stages(wine_one_vs_rest, monkeypatch):
    """The sliding solver's network passes, counted on the host at every call inside the compiled
    solve (rejected attempts included): gradients (each stage's projection or plain gradient, the
    field after a change), normals (one VJP each) and JVPs of the kink values. Stats count exactly
    these, JVPs at JVP_COST, less the passes of the diagnostics at the save points and both ends (each computes the
    normals of its sliding pairs and one JVP)."""
    counts = {"gradients": 0, "normals": 0, "jvps": 0, "save_normals": 0}

    def bump(kind, amount=None):
        def f(value):
            counts[kind] += int(value) if amount is None else amount
            return np.zeros((), np.int32)

        return f

    def tagged(out, tick):
        return jax.tree_util.tree_map(
            lambda v: v + 0 * tick.astype(v.dtype) if jnp.issubdtype(v.dtype, jnp.floating) else v, out)

    def counted_gradient(fn):
        def wrapper(*args, **kwargs):
            return tagged(fn(*args, **kwargs), io_callback(bump("gradients", 1), jax.ShapeDtypeStruct((), jnp.int32), 0))

        return wrapper

    normal_rows, jvp = gf.sliding.Sliding.normal_rows, jax.jvp

    def counted_rows(self, params, static, x, pattern, slots, which, normals):
        out = normal_rows(self, params, static, x, pattern, slots, which, normals)
        return tagged(out, io_callback(bump("normals"), jax.ShapeDtypeStruct((), jnp.int32), jnp.sum(which)))

    def counted_jvp(fn, primals, tangents, **kwargs):
        out, dout = jvp(fn, primals, tangents, **kwargs)
        return out, tagged(dout, io_callback(bump("jvps", 1), jax.ShapeDtypeStruct((), jnp.int32), 0))

    state_at = gf.sliding.Sliding.state_at

    def counted_state_at(self, params, static, x, key, dtype):  # the diagnostics' normals, at a save point or an end
        out = state_at(self, params, static, x, key, dtype)
        return tagged(out, io_callback(bump("save_normals"), jax.ShapeDtypeStruct((), jnp.int32), jnp.sum(key.slots >= 0)))

    monkeypatch.setattr(gf.sliding.Sliding, "state_at", counted_state_at)
    monkeypatch.setattr(sliding_solver, "project", counted_gradient(sliding_solver.project))
    monkeypatch.setattr(sliding_solver, "evaluate", counted_gradient(sliding_solver.evaluate))
    monkeypatch.setattr(gf.sliding.Sliding, "normal_rows", counted_rows)
    monkeypatch.setattr(jax, "jvp", counted_jvp)
    jax.clear_caches()  # an earlier test may have compiled this very solve without the counters
    model = gf.ReLUMLP([14, 8, 1], key=jax.random.PRNGKey(2), init_scale=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        r = gf.simulate_flow(model, wine_one_vs_rest, 5.0, num_save=3, diagnostics=NO_SHARPNESS, max_steps=20_000)
    s = r.stats
    assert r.status == "completed" and s["sliding_changes"] >= 1 and s["rejected_steps"] >= 1
    # the diagnostics at the 3 save points, the start and the end: 2 JVPs each (the chain-rule check), and
    # the normals of the pairs that slide there (computed at each point's W)
    saves = 2 * 5
    save_normals = counts["save_normals"]
    assert save_normals >= int(np.sum(r.diagnostics["sliding_pairs"][:3]))
    assert counts["gradients"] >= 3 * s["steps"] + 3 + s["sliding_refreshes"]
    expected = (counts["gradients"] + counts["normals"] - save_normals + JVP_COST * (counts["jvps"] - saves))
    assert counts["jvps"] - saves == s["jacobian_vector_products"] >= s["sliding_crossing_steps"] >= 1
    assert s["gradient_evaluations"] == round(expected)
    # the note names the JVPs' source: the sliding set's checks (no implicit segment ran)
    note = s["gradient_evaluations_note"]
    assert note.startswith(f"includes {s['jacobian_vector_products']} Jacobian-vector products (the sliding set's")
    assert "Newton" not in note
