"""simulate_ensemble: one vmapped solve, each member with its own adaptive steps, equal to its own
simulate_flow up to solver tolerance."""


import jax
import numpy as np
import pytest

import gradflow as gf


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("steps", ["per_member", "shared"])
def test_ensemble_matches_individual_flows(separable_2d, steps):
    x, y = separable_2d
    models = [gf.TwoLayerSquaredReLU(3, 6, key=jax.random.PRNGKey(i), signs="alternating", init_scale=2.0) for i in range(3)]
    opts = dict(rtol=1e-9, atol=1e-12, num_save=12, check_degree=False)
    ens = gf.simulate_ensemble(models, (x, y), 50.0, steps=steps, **opts)
    assert ens.diagnostics["norm"].shape == (3, 12)
    assert ens[0].config["steps"] == steps
    for i, m in enumerate(models):
        ref = gf.simulate_flow(m, (x, y), 50.0, **opts)
        assert ens[i].status == ref.status == "completed"
        np.testing.assert_allclose(ens[i].t, ref.t, rtol=1e-14)
        np.testing.assert_allclose(ens[i].norm, ref.norm, rtol=1e-7)
        np.testing.assert_allclose(ens[i].log_loss, ref.log_loss, rtol=1e-6)
    # members differ (different seeds), so the stacking is not a broadcast of one member
    assert np.ptp(ens.diagnostics["norm"][:, -1]) > 1e-3


def test_ensemble_rejects_mixed_architectures(separable_2d):
    x, y = separable_2d
    a = gf.TwoLayerSquaredReLU(3, 6, key=jax.random.PRNGKey(0))
    b = gf.TwoLayerSquaredReLU(3, 7, key=jax.random.PRNGKey(0))
    with pytest.raises(gf.InvalidArgumentError, match="member 1"):
        gf.simulate_ensemble([a, b], (x, y), 10.0, check_degree=False)
    with pytest.raises(gf.InvalidArgumentError, match="auto"):
        gf.simulate_ensemble([a], (x, y), 10.0, solver="auto")
    with pytest.raises(gf.InvalidArgumentError, match="devices"):
        gf.simulate_ensemble([a], (x, y), 10.0, run=gf.RunOptions(devices="gpus"))
    with pytest.raises(gf.InvalidArgumentError, match="devices"):
        gf.simulate_ensemble([a], (x, y), 10.0, run=gf.RunOptions(devices=["cpu:0"]))
    with pytest.raises(gf.InvalidArgumentError, match="steps"):
        gf.simulate_ensemble([a], (x, y), 10.0, until_accuracy=5.0, steps="shared")


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_ensemble_accuracy_clock_stops_at_t_max(separable_2d):
    """t_max in the accuracy clock stops every member where t reaches it, as in its own simulate_flow
    (the horizon is resolved by the same gradflow.options.SolveOptions for both)."""
    x, y = separable_2d
    models = [gf.Linear(3, key=jax.random.PRNGKey(i), init_scale=3.0) for i in range(2)]
    opts = dict(clock="accuracy", until_accuracy=40.0, num_save=6, rtol=1e-9, atol=1e-12, solver="tsit5")
    ens = gf.simulate_ensemble(models, (x, y), 5.0, **opts)
    for i, m in enumerate(models):
        ref = gf.simulate_flow(m, (x, y), 5.0, **opts)
        assert ens[i].status == ref.status == "stopped at target" and ens[i].reason == ref.reason == "t_max reached"
        np.testing.assert_allclose(ens[i].t[-1], ref.t[-1], rtol=1e-6)
        np.testing.assert_allclose(ens[i].accuracy[-1], ref.accuracy[-1], rtol=1e-6)
        assert ens[i].accuracy[-1] < 40.0


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_ensemble_member_that_leaves_the_clock_fails_as_in_simulate_flow(separable_2d, monkeypatch):
    """The accuracy clock's check that W sits at its clock value at every save point
    (gradflow.flow.assemble.off_clock) runs per member, as in simulate_flow. The members here stay on
    their clock (within 1e-6: checked first); the member-wise wiring is then exercised by moving
    member 1's recorded ln(n/L) off by 1 at its fourth save point: that member alone fails there
    with the save points before it and its final state, the other completes unchanged."""
    import gradflow.flow.assemble as assemble

    x, y = separable_2d
    models = [gf.Linear(3, key=jax.random.PRNGKey(i), init_scale=3.0) for i in range(2)]
    opts = dict(clock="accuracy", until_accuracy=40.0, num_save=6, rtol=1e-9, atol=1e-12, solver="tsit5")
    ens = gf.simulate_ensemble(models, (x, y), **opts)
    wanted = ens[0].accuracy
    for member in ens:
        assert member.status == "completed", member.reason
        np.testing.assert_allclose(member.accuracy, wanted, rtol=1e-6)
    real, calls = assemble.off_clock, []

    def member_1_off(position, wanted_, start, rtol):
        calls.append(len(calls))
        moved = np.array(position, np.float64)
        if len(calls) == 2:  # member 1 (members are checked in order)
            moved[3] += 1.0
        return real(moved, wanted_, start, rtol)

    monkeypatch.setattr(assemble, "off_clock", member_1_off)
    ens2 = gf.simulate_ensemble(models, (x, y), **opts)
    assert len(calls) == 2
    assert ens2[0].status == "completed" and len(ens2[0]) == len(ens[0])
    assert ens2[1].status == "failed" and "left the clock" in ens2[1].reason, ens2[1].reason
    # the three save points before it, then the final state (the result's last row, as in simulate_flow)
    assert len(ens2[1]) == 4
    np.testing.assert_allclose(ens2[1].accuracy[:3], ens[1].accuracy[:3], rtol=1e-12)
    np.testing.assert_allclose(ens2[1].accuracy[3], ens[1].accuracy[-1], rtol=1e-12)
