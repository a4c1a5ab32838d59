"""Figure reproductions at their tiny sizes: the checks of Figures 1–3, the CIFAR path, the
non-homogeneous models and the progress helper."""

from __future__ import annotations

import pickle

import jax
import numpy as np
import pytest

import gradflow as gf
from gradflow import figures
from gradflow.models.nonhomogeneous import SmallDenseNet, SmallResNet
from gradflow.progress import concat_results, simulate_with_progress


def test_figure1_tiny_checks(tmp_path):
    res = figures.figure1("tiny", out=tmp_path, progress=False)
    c = res["checks"]
    assert c["b_classifies_all"] and c["b_train_error"] == 0.0
    assert c["margin_c"] >= c["margin_b"] and c["margin_nondecreasing"]
    assert 0.0 <= c["disagreement_fraction"] <= 1.0
    assert c["c_accuracy"] == pytest.approx(20.0, rel=0.02)
    assert (tmp_path / "figure1.png").is_file() and (tmp_path / "figure1.pdf").is_file()
    assert res["surfaces"]["a"].shape == res["surfaces"]["c"].shape


def test_ntk_features_match_frozen_activation():
    model = gf.TwoLayerSquaredReLU(3, 7, key=jax.random.PRNGKey(2))
    x = np.random.default_rng(0).normal(size=(5, 3))
    v = np.random.default_rng(1).normal(size=(7, 3))
    psi = figures.ntk_features(np.asarray(model.w), np.asarray(model.signs, float), x)
    with gf.x64():
        direct = np.asarray(gf.linearize(model, init=v)(jax.numpy.asarray(x)))
    np.testing.assert_allclose(psi @ v.ravel(), direct, rtol=1e-10)


def test_normalize_by_median():
    raw = np.array([[-1.0, 1.0, 2.0, 3.0], [-1.0, -2.0, -3.0, -4.0]])
    q = figures.normalize_by_median(raw)
    np.testing.assert_allclose(q[0], raw[0] / 2.0)
    assert np.all(np.isnan(q[1]))


def test_progress_segments_concatenate(separable_2d, squared_relu_model):
    x, y = separable_2d
    one = gf.simulate_flow(squared_relu_model, (x, y), clock="accuracy", until_accuracy=12.0, rtol=1e-9, atol=1e-12)
    seg = simulate_with_progress(squared_relu_model, (x, y), 12.0, segments=3, saves_per_segment=4, progress=False,
                                 rtol=1e-9, atol=1e-12)
    assert seg.stats["progress_segments"] == 3 and len(seg) == 3 * 4
    assert np.all(np.diff(seg.accuracy) > 0) and np.all(np.diff(seg.log_t) > 0) and np.all(np.diff(seg.path_length) >= 0)
    # same path: final time, path length and margin agree with one uninterrupted solve
    assert seg.log_t[-1] == pytest.approx(one.log_t[-1], rel=1e-5)
    assert seg.path_length[-1] == pytest.approx(one.path_length[-1], rel=1e-5)
    assert seg.margin[-1] == pytest.approx(one.margin[-1], rel=1e-6)
    both = concat_results([one, seg])
    assert len(both) == len(one) + len(seg) - 1 or len(both) == len(one) + len(seg)


def test_progress_rejects_reserved_options(separable_2d, squared_relu_model):
    with pytest.raises(gf.InvalidArgumentError, match="num_save"):
        simulate_with_progress(squared_relu_model, separable_2d, 10.0, num_save=4)


@pytest.mark.parametrize("cls, kwargs", [(SmallDenseNet, {}), (SmallResNet, {})])
def test_nonhomogeneous_models(cls, kwargs):
    x, _ = gf.datasets.digits(n=6)
    model = cls(1, 8, 10, key=jax.random.PRNGKey(0), **kwargs)
    assert model.degree is None
    with gf.x64():
        out = model(jax.numpy.asarray(x))
    assert out.shape == (6, 10) and out.dtype == np.float64
    with gf.x64():  # biases: Φ(x; 2W) ≠ 2^L Φ(x; W) for every L
        p, static = gf.params.partition(model)
        doubled = gf.params.combine(jax.tree_util.tree_map(lambda a: 2 * a, p), static)
        ratio = np.asarray(doubled(jax.numpy.asarray(x))) / out
    assert np.ptp(np.log2(np.abs(ratio))) > 1e-3
    with pytest.raises(gf.InvalidArgumentError, match="x"):
        model(np.zeros((2, 3, 8, 8)))
    with pytest.raises(gf.InvalidArgumentError, match="image_size"):
        cls(1, 6, 10, key=jax.random.PRNGKey(0))


@pytest.mark.slow  # ~45 s on 2 idle cores (two compiles: GD warm-up and flow)
def test_margin_run_hcnn_tiny_checks():
    r = figures.margin_run("hcnn", "tiny", progress=False)
    c = figures.margin_checks(r, homogeneous=True)
    assert c["final_train_error"] == 0.0
    assert c["margins_converge"], c
    assert c["alpha_tilde_nondecreasing"], c
    assert r.config["warmup_points"] > 0 and np.all(np.diff(r.log_t) >= 0)


def _write_cifar(root, n_per_batch=4):
    """Tiny CIFAR-10 python batches (dict with b'data' uint8 (N, 3072) and b'labels')."""
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, size=(n_per_batch, 3072), dtype=np.uint8),
                 b"labels": [int(v) for v in rng.integers(0, 10, size=n_per_batch)]}
        with open(root / name, "wb") as fh:
            pickle.dump(batch, fh, protocol=2)


def test_cifar_path(tmp_path):
    _write_cifar(tmp_path)
    x, y = figures.load_image_data("cifar10", n=6, data_dir=tmp_path)
    assert x.shape == (6, 3, 32, 32) and y.shape == (6,)
    model = figures.make_margin_model("resnet", x.shape[1:])
    with gf.x64():
        assert model(jax.numpy.asarray(x)).shape == (6, 10)
    with pytest.raises(gf.InvalidArgumentError, match="data_dir"):
        figures.load_image_data("cifar10", n=6)


@pytest.mark.slow
def test_figure3_cifar_tiny(tmp_path):
    _write_cifar(tmp_path, n_per_batch=8)
    res = figures.figure3("tiny", out=tmp_path / "out", data="cifar10", data_dir=tmp_path, n=8, target=6.0)
    assert res["checks"]["resnet"]["final_train_error"] == 0.0
    assert (tmp_path / "out" / "figure3.png").is_file()


@pytest.mark.slow
def test_figure2_tiny_checks(tmp_path):
    res = figures.figure2("tiny", out=tmp_path, progress=False)
    for arch in ("hcnn", "densenet"):
        assert res["checks"][arch]["margins_converge"], res["checks"][arch]
    assert res["checks"]["hcnn"]["alpha_tilde_nondecreasing"]
