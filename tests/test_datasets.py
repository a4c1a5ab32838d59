"""Tests for gradflow.datasets."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest

from gradflow.datasets import (
    appendix_a_synthetic,
    appendix_a_teacher,
    breast_cancer_binary,
    digits,
    iris_binary,
    load_cifar10,
    load_image_data,
    wine_binary,
)
from gradflow.errors import InvalidArgumentError
from gradflow.maxmargin import svm_direction


def _margin_certificate(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Bounds on the hard margin γ that trust only arithmetic, not the solver's claims.

    Lower: any unit u gives γ ≥ min_i y_i⟨x_i, u⟩. Upper: weak duality for
    min ½‖u‖² s.t. y_i⟨x_i, u⟩ ≥ 1 gives D(α) = Σα − ½‖Σ α_i y_i x_i‖² ≤ 1/(2γ²) for any α ≥ 0.
    """
    res = svm_direction(x, y)
    u = res.direction / np.linalg.norm(res.direction)
    lower = float(np.min(y * (x @ u)))
    alpha = np.maximum(res.dual, 0.0)
    dual_value = alpha.sum() - 0.5 * float(np.sum(((alpha * y) @ x) ** 2))
    upper = 1.0 / np.sqrt(2.0 * dual_value)
    return lower, upper


def test_iris_binary_shape_norm_and_margin():
    x, y = iris_binary()
    assert x.shape == (100, 3) and x.dtype == np.float64
    assert abs(np.linalg.norm(x, axis=1).max() - 1.0) < 1e-15
    assert np.ptp(x[:, 2]) == 0.0 and x[0, 2] > 0
    assert set(np.unique(y)) == {-1.0, 1.0} and (y == 1).sum() == 50
    assert np.all(y[:50] == -1.0)  # setosa first in scikit-learn's order
    lower, upper = _margin_certificate(x, y)
    assert upper - lower < 1e-10
    assert abs(lower - 0.0067216) < 1e-6  # γ ≈ 0.0067216 (0.0067 to 2 significant digits)


def test_breast_cancer_binary():
    x, y = breast_cancer_binary()
    assert x.shape == (569, 31)
    assert abs(np.linalg.norm(x, axis=1).max() - 1.0) < 1e-14
    assert np.ptp(x[:, -1]) == 0.0
    assert (y == 1).sum() == 357 and (y == -1).sum() == 212
    lower, upper = _margin_certificate(x, y)
    assert upper - lower < 1e-12
    assert abs(lower - 6.7697e-5) < 1e-8
    # Standardized before scaling: column means zero.
    np.testing.assert_allclose(x[:, :-1].mean(axis=0), 0.0, atol=1e-14)
    assert breast_cancer_binary(n_features=10)[0].shape == (569, 11)


@pytest.mark.parametrize("classes, n, gamma", [((0, 1), 130, 0.070249), ((0, 2), 107, 0.233726)])
def test_wine_binary(classes, n, gamma):
    x, y = wine_binary(classes)
    assert x.shape == (n, 14)
    assert abs(np.linalg.norm(x, axis=1).max() - 1.0) < 1e-14
    lower, upper = _margin_certificate(x, y)
    assert upper - lower < 1e-10
    assert abs(lower - gamma) < 1e-6
    with pytest.raises(ValueError):
        wine_binary((1, 1))


def test_appendix_a_synthetic_deterministic_and_well_formed():
    x, y = appendix_a_synthetic(n=80, seed=3)
    x2, y2 = appendix_a_synthetic(n=80, seed=3)
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    x3, _ = appendix_a_synthetic(n=80, seed=4)
    assert np.abs(x3 - x).max() > 0.1
    assert x.shape == (80, 3) and y.shape == (80,)
    assert set(np.unique(y)) == {-1.0, 1.0}
    assert min((y == 1).sum(), (y == -1).sum()) >= 10
    assert np.ptp(x[:, 2]) == 0.0
    assert abs(np.linalg.norm(x, axis=1).max() - 1.0) < 1e-15
    z = x[:, :2] / x[:, 2:]
    assert np.all(np.abs(z) <= 1.0)


@pytest.mark.parametrize("q", [0.0, 0.25])
def test_appendix_a_synthetic_teacher_labels_and_deleted_margin(q):
    seed = 1
    x, y = appendix_a_synthetic(n=200, seed=seed, margin_quantile=q)
    teacher = appendix_a_teacher(seed=seed)
    f = teacher(x[:, :2] / x[:, 2:])
    np.testing.assert_array_equal(y, np.sign(f))  # separable by the teacher
    # The smallest kept |f| is the q-quantile of |f| over the square: about a fraction q of
    # fresh uniform points fall below it.
    fresh = np.random.default_rng(123).uniform(-1, 1, size=(40000, 2))
    below = float(np.mean(np.abs(teacher(fresh)) < np.abs(f).min()))
    assert abs(below - q) < 0.02
    if q > 0:
        assert np.abs(f).min() > 0.05 * np.abs(teacher(fresh)).max()


def test_digits_shapes_and_subsample():
    x, y = digits()
    assert x.shape == (1797, 1, 8, 8) and x.dtype == np.float64
    assert x.min() == 0.0 and x.max() == 1.0
    assert y.dtype == np.int64 and set(np.unique(y)) == set(range(10))
    xs, ys = digits(n=100, seed=2)
    xs2, ys2 = digits(n=100, seed=2)
    assert xs.shape == (100, 1, 8, 8) and ys.shape == (100,)
    np.testing.assert_array_equal(xs, xs2)
    np.testing.assert_array_equal(ys, ys2)
    # Each subsampled image is one of the full set's, with its own label.
    flat = x.reshape(len(x), -1)
    for img, lab in zip(xs[:10], ys[:10], strict=True):
        idx = np.flatnonzero(np.all(flat == img.ravel(), axis=1))
        assert lab in y[idx]


def _write_cifar(
    directory, per_batch: int = 3, protocol: int = 2, legacy_names: bool = False
) -> tuple[np.ndarray, list]:
    """Tiny CIFAR-10 batches in the official format; returns all data rows and labels.

    ``legacy_names`` rewrites numpy ≥ 2's ``numpy._core`` globals to the ``numpy.core`` names
    that the official (numpy 1 era) files reference.
    """
    rng = np.random.default_rng(0)
    all_data, all_labels = [], []
    for k in range(1, 6):
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=per_batch)]
        batch = {
            b"batch_label": f"training batch {k} of 5".encode(),
            b"labels": labels,
            b"data": data,
            b"filenames": [f"img_{k}_{i}.png".encode() for i in range(per_batch)],
        }
        raw = pickle.dumps(batch, protocol=protocol)
        if legacy_names:
            raw = raw.replace(b"numpy._core.", b"numpy.core.")
        (directory / f"data_batch_{k}").write_bytes(raw)
        all_data.append(data)
        all_labels += labels
    return np.concatenate(all_data), all_labels


@pytest.mark.parametrize("protocol, legacy", [(2, False), (2, True), (pickle.HIGHEST_PROTOCOL, False)])
def test_load_cifar10_tiny_files(tmp_path, protocol, legacy):
    data, labels = _write_cifar(tmp_path, per_batch=3, protocol=protocol, legacy_names=legacy)
    x, y = load_cifar10(tmp_path)
    assert x.shape == (15, 3, 32, 32) and x.dtype == np.float64
    np.testing.assert_array_equal(y, labels)
    # Row layout: 1024 red, then green, then blue values, each row-major 32×32.
    assert x[4, 0, 0, 0] == data[4, 0] / 255.0
    assert x[4, 1, 0, 0] == data[4, 1024] / 255.0
    assert x[4, 2, 31, 31] == data[4, 3071] / 255.0
    assert x[7, 0, 1, 2] == data[7, 32 + 2] / 255.0
    assert 0.0 <= x.min() and x.max() <= 1.0
    xn, yn = load_cifar10(tmp_path, n=5)  # crosses a batch boundary
    np.testing.assert_array_equal(xn, x[:5])
    np.testing.assert_array_equal(yn, labels[:5])


def test_load_cifar10_subdirectory_and_missing(tmp_path):
    sub = tmp_path / "cifar-10-batches-py"
    sub.mkdir()
    _write_cifar(sub, per_batch=2)
    assert load_cifar10(tmp_path)[0].shape == (10, 3, 32, 32)
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_cifar10(missing)
    (sub / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        load_cifar10(sub)


def test_load_cifar10_refuses_foreign_pickles(tmp_path):
    _write_cifar(tmp_path, per_batch=1)
    buf = io.BytesIO()
    pickle.dump({b"data": np.zeros((1, 3072), np.uint8), b"labels": [print]}, buf, protocol=2)
    (tmp_path / "data_batch_2").write_bytes(buf.getvalue())
    with pytest.raises(pickle.UnpicklingError, match="disallowed"):
        load_cifar10(tmp_path)


def test_load_image_data_by_name(tmp_path):
    """The figures' image sets by name: 'digits' is digits(n, seed); 'cifar10' reads data_dir and
    refuses to run without one; other names are refused with the accepted ones."""
    x, y = load_image_data("digits", n=12, seed=3)
    xd, yd = digits(n=12, seed=3)
    np.testing.assert_array_equal(x, xd)
    np.testing.assert_array_equal(y, yd)
    data, labels = _write_cifar(tmp_path, per_batch=4)
    xc, yc = load_image_data("cifar10", n=6, data_dir=tmp_path)
    np.testing.assert_array_equal(xc, data[:6].reshape(6, 3, 32, 32) / 255.0)
    np.testing.assert_array_equal(yc, labels[:6])
    with pytest.raises(InvalidArgumentError, match="data_dir"):
        load_image_data("cifar10", n=6)
    with pytest.raises(InvalidArgumentError, match="'digits' or 'cifar10'"):
        load_image_data("mnist")
