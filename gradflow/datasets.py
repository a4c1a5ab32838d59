"""Bundled data sets, returned as numpy float64 inputs and labels.

Binary sets return labels as float64 ±1 and are meant for the margin results of Ji & Telgarsky
(inputs carry a constant feature as a bias and are scaled so that ``max_i ‖x_i‖ = 1``, the
normalization ``‖x_i‖ ≤ 1`` assumed in Proposition 4.6); multiclass sets return int64 labels
``0..C−1``. Everything except :func:`load_cifar10` comes from scikit-learn's bundled files (no
download).
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt

from .errors import bad_argument

__all__ = [
    "iris_binary",
    "breast_cancer_binary",
    "wine_binary",
    "wine_one_vs_rest",
    "appendix_a_teacher",
    "appendix_a_synthetic",
    "digits",
    "load_cifar10",
    "load_image_data",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


def _with_bias_unit_rows(features: FloatArray) -> FloatArray:
    """Append a constant-1 column, then divide by the largest row norm (so ``max ‖x_i‖ = 1``)."""
    x = np.hstack([features, np.ones((features.shape[0], 1))])
    return x / np.max(np.linalg.norm(x, axis=1))


def _standardize(features: FloatArray) -> FloatArray:
    """Per-feature z-score ``(f − mean) / std`` (population std) over the given rows."""
    return (features - features.mean(axis=0)) / features.std(axis=0)


def iris_binary() -> tuple[FloatArray, FloatArray]:
    """Iris setosa (y = −1) vs versicolor (y = +1): sepal length, sepal width and a constant 1.

    Rows ``(sepal_length, sepal_width, 1)`` of the 100 flowers of classes 0 and 1 (scikit-learn
    order), divided by the largest row norm so that ``max_i ‖x_i‖ = 1``. Raw features, not
    standardized. Linearly separable through the origin with hard margin
    ``γ = max_{‖u‖≤1} min_i y_i⟨x_i, u⟩ ≈ 0.0067216`` (points 36, 41, 57 and 84 lie on the margin): a small
    margin, so directional convergence is slow on it.

    Returns:
        ``x`` of shape (100, 3) float64 and ``y`` of shape (100,) float64 in {−1, +1}.
    """
    from sklearn.datasets import load_iris

    data = load_iris()
    keep = data.target < 2
    x = _with_bias_unit_rows(np.asarray(data.data[keep][:, :2], dtype=np.float64))
    y = np.where(data.target[keep] == 1, 1.0, -1.0)
    return x, y


def breast_cancer_binary(n_features: int = 30) -> tuple[FloatArray, FloatArray]:
    """Wisconsin breast cancer: malignant (y = −1) vs benign (y = +1), 569 rows.

    The first ``n_features`` of the 30 scikit-learn features, each standardized (z-score over
    all 569 rows), plus a constant-1 column, then rows divided by the largest row norm.

    Only ``n_features = 30`` gives separable data (checked with the HiGHS LP of
    :func:`gradflow.maxmargin.svm_direction`; the first 2, 5, 10, 15, 20, 25 features are not
    separable). Even then the hard margin is tiny, ``γ ≈ 6.77e-5`` (29 support vectors), so it
    is a hard case for flows; see :func:`wine_binary` for a well-separated one.

    Returns:
        ``x`` of shape (569, n_features + 1) and ``y`` of shape (569,) float64 in {−1, +1}.
    """
    from sklearn.datasets import load_breast_cancer

    if not 1 <= n_features <= 30:
        raise ValueError(f"n_features must be in 1..30, got {n_features}")
    data = load_breast_cancer()
    feats = _standardize(np.asarray(data.data, dtype=np.float64))[:, :n_features]
    return _with_bias_unit_rows(feats), np.where(data.target == 1, 1.0, -1.0)


def wine_binary(classes: tuple[int, int] = (0, 1)) -> tuple[FloatArray, FloatArray]:
    """Wine: two of the three cultivars, all 13 standardized features plus a constant 1.

    Rows of the two ``classes`` (``classes[0]`` → y = −1, ``classes[1]`` → y = +1), features
    standardized over those rows, a constant-1 column appended, rows divided by the largest row
    norm. Separable for every pair, with hard margins ``γ ≈ 0.0702`` for (0, 1) (130 rows),
    ``0.2337`` for (0, 2) (107 rows) and ``0.0572`` for (1, 2) (119 rows); no subset of the
    first 5 features is separable.

    Returns:
        ``x`` of shape (n, 14) and ``y`` of shape (n,) float64 in {−1, +1}.
    """
    from sklearn.datasets import load_wine

    a, b = classes
    if a == b or {a, b} - {0, 1, 2}:
        raise ValueError(f"classes must be two distinct labels in {{0, 1, 2}}, got {classes}")
    data = load_wine()
    keep = np.isin(data.target, (a, b))
    feats = _standardize(np.asarray(data.data[keep], dtype=np.float64))
    return _with_bias_unit_rows(feats), np.where(data.target[keep] == b, 1.0, -1.0)


def wine_one_vs_rest(cls: int = 2) -> tuple[FloatArray, FloatArray]:
    """Wine: one cultivar (y = +1) against the other two (y = −1), all 178 rows.

    The 13 features standardized over all rows, a constant-1 column appended, rows divided by the
    largest row norm (as :func:`wine_binary`). Class 2 against the rest is the data of the sliding
    benchmarks and tests (bias-free ReLU nets that slide from random starts).

    Returns:
        ``x`` of shape (178, 14) and ``y`` of shape (178,) float64 in {−1, +1}.
    """
    from sklearn.datasets import load_wine

    if cls not in (0, 1, 2):
        raise ValueError(f"cls must be a label in {{0, 1, 2}}, got {cls}")
    data = load_wine()
    feats = _standardize(np.asarray(data.data, dtype=np.float64))
    return _with_bias_unit_rows(feats), np.where(data.target == cls, 1.0, -1.0)


def appendix_a_teacher(seed: int = 0, width: int = 8) -> Callable[[FloatArray], FloatArray]:
    """The random teacher network of :func:`appendix_a_synthetic` (fixed by ``seed``).

    ``f(z) = Σ_k a_k max(0, ⟨v_k, z⟩ + b_k) + c`` for ``z ∈ R²`` with ``v_k, b_k, a_k``
    i.i.d. standard normal (``width`` hidden units) and the output bias ``c`` set to minus the
    median of the hidden part over a fixed reference sample of 20 000 uniform points in
    ``[−1, 1]²`` (so roughly half the square is positive). Labels are ``sign(f(z))``.

    Returns:
        A function mapping points of shape ``(n, 2)`` to outputs of shape ``(n,)``.
    """
    rng = np.random.default_rng([seed, 0])
    v = rng.standard_normal((width, 2))
    b = rng.standard_normal(width)
    a = rng.standard_normal(width)

    def hidden(z: FloatArray) -> FloatArray:
        return np.maximum(0.0, np.asarray(z, dtype=np.float64) @ v.T + b) @ a

    ref = np.random.default_rng([seed, 1]).uniform(-1.0, 1.0, size=(20_000, 2))
    c = -float(np.median(hidden(ref)))

    def teacher(z: FloatArray) -> FloatArray:
        return hidden(z) + c

    return teacher


def appendix_a_synthetic(
    n: int = 100,
    seed: int = 0,
    margin_quantile: float = 0.2,
    width: int = 8,
) -> tuple[FloatArray, FloatArray]:
    """Synthetic 2-D data of Appendix A / Figure 1, embedded in R³.

    Following Appendix A: points ``z ~ Uniform([−1, 1]²)`` are labelled ``y = sign(f(z))`` by a
    random two-layer ReLU teacher *with biases* (:func:`appendix_a_teacher`, same ``seed`` and
    ``width``); low-margin points, ``|f(z)| < τ``, are deleted, where ``τ`` is the
    ``margin_quantile`` quantile of ``|f|`` over the teacher's fixed 20 000-point reference
    sample; points are drawn until ``n`` survive. Each kept ``z`` is embedded as ``(z, 1)`` and
    the rows are then divided by their largest norm, so ``max_i ‖x_i‖ = 1`` (the ``‖x_i‖ ≤ 1``
    of Proposition 4.6) and the last column is the constant ``1/max_i ‖(z_i, 1)‖``. The original
    ``z`` is ``x[:, :2] / x[:, 2:]``.

    Deterministic for a given ``(n, seed, margin_quantile, width)``; both classes are present
    (an error is raised otherwise).

    Returns:
        ``x`` of shape (n, 3) float64 and ``y`` of shape (n,) float64 in {−1, +1}.
    """
    if n < 2:
        raise ValueError(f"n must be ≥ 2, got {n}")
    if not 0.0 <= margin_quantile < 1.0:
        raise ValueError(f"margin_quantile must be in [0, 1), got {margin_quantile}")
    teacher = appendix_a_teacher(seed=seed, width=width)
    ref = np.random.default_rng([seed, 1]).uniform(-1.0, 1.0, size=(20_000, 2))
    tau = float(np.quantile(np.abs(teacher(ref)), margin_quantile))
    rng = np.random.default_rng([seed, 2])
    kept: list[FloatArray] = []
    count = 0
    while count < n:
        z = rng.uniform(-1.0, 1.0, size=(max(2 * n, 256), 2))
        z = z[np.abs(teacher(z)) >= max(tau, 1e-12)]
        kept.append(z)
        count += z.shape[0]
    z = np.vstack(kept)[:n]
    y = np.sign(teacher(z))
    if np.all(y == y[0]):
        raise ValueError("the teacher labelled every sampled point alike; try another seed or n")
    return _with_bias_unit_rows(z), y


def digits(n: int | None = None, seed: int = 0) -> tuple[FloatArray, IntArray]:
    """scikit-learn's bundled 8×8 handwritten digits (1797 images, 10 classes).

    Pixel values 0..16 divided by 16 → [0, 1], shaped ``(n, 1, 8, 8)`` (NCHW, one channel).
    With ``n`` given, a uniformly random subset of ``n`` images (without replacement, fixed by
    ``seed``) is returned in its original order.

    Returns:
        ``x`` of shape (n, 1, 8, 8) float64 and int64 labels ``y`` in 0..9 of shape (n,).
    """
    from sklearn.datasets import load_digits

    data = load_digits()
    x = np.asarray(data.images, dtype=np.float64)[:, None, :, :] / 16.0
    y = np.asarray(data.target, dtype=np.int64)
    if n is not None:
        if not 1 <= n <= x.shape[0]:
            raise ValueError(f"n must be in 1..{x.shape[0]}, got {n}")
        idx = np.sort(np.random.default_rng(seed).choice(x.shape[0], size=n, replace=False))
        x, y = x[idx], y[idx]
    return x, y


_CIFAR_TRAIN = tuple(f"data_batch_{k}" for k in range(1, 6))
_CIFAR_TEST = ("test_batch",)
# The only globals the official CIFAR-10 pickles (and numpy re-pickles of them) may reference.
_CIFAR_ALLOWED_GLOBALS = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes
    }
)


class _CifarUnpickler(pickle.Unpickler):
    """Unpickler for the CIFAR-10 batch format only: refuses every global but numpy arrays."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) in _CIFAR_ALLOWED_GLOBALS:
            if module.startswith("numpy.core.") and hasattr(np, "_core"):
                # numpy ≥ 2 renamed numpy.core to numpy._core (the old name warns).
                module = "numpy._core." + module.removeprefix("numpy.core.")
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"CIFAR-10 batch references disallowed global {module}.{name}")


def _read_cifar_batch(path: Path) -> tuple[npt.NDArray[np.uint8], IntArray]:
    """One CIFAR-10 python batch: dict with b"data" uint8 (N, 3072) and b"labels" (N,)."""
    with path.open("rb") as fh:
        batch = _CifarUnpickler(fh, encoding="bytes").load()
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise ValueError(f"{path} is not a CIFAR-10 python batch (no b'data'/b'labels' keys)")
    data = np.asarray(batch[b"data"], dtype=np.uint8)
    labels = np.asarray(batch[b"labels"], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3072 or labels.shape != (data.shape[0],):
        raise ValueError(f"{path}: expected data (N, 3072) and N labels, got {data.shape}")
    return data, labels


def load_cifar10(data_dir: str | Path, n: int | None = None, train: bool = True) -> tuple[FloatArray, IntArray]:
    """CIFAR-10 from the official python batches in a local directory (no download).

    Reads ``data_batch_1`` … ``data_batch_5`` (``train=True``, 50 000 images) or ``test_batch``
    (10 000) from ``data_dir`` or from ``data_dir/cifar-10-batches-py``. Each batch is a pickled
    dict with ``b"data"``: uint8 (N, 3072), rows = 1024 red, 1024 green, 1024 blue values in
    row-major 32×32 order, and ``b"labels"``: N ints in 0..9. The pickle is read with
    ``encoding="bytes"`` by an unpickler that only admits numpy array reconstruction.

    Args:
        data_dir: directory holding the batch files.
        n: if given, only the first ``n`` images (in batch order); later batches are not read.
        train: training batches (default) or the test batch.

    Returns:
        ``x`` of shape (n, 3, 32, 32) float64 in [0, 1] (value / 255) and int64 labels (n,).

    Raises:
        FileNotFoundError: ``data_dir`` or any required batch file is missing.
    """
    root = Path(data_dir)
    names = _CIFAR_TRAIN if train else _CIFAR_TEST
    if not (root / names[0]).is_file() and (root / "cifar-10-batches-py" / names[0]).is_file():
        root = root / "cifar-10-batches-py"
    missing = [name for name in names if not (root / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"CIFAR-10 python batches not found in data_dir={str(data_dir)!r}: missing "
            f"{', '.join(missing)} (download and extract cifar-10-python.tar.gz there)"
        )
    if n is not None and n < 1:
        raise ValueError(f"n must be ≥ 1, got {n}")
    xs, ys, total = [], [], 0
    for name in names:
        data, labels = _read_cifar_batch(root / name)
        xs.append(data)
        ys.append(labels)
        total += data.shape[0]
        if n is not None and total >= n:
            break
    data = np.concatenate(xs)
    labels = np.concatenate(ys)
    if n is not None:
        if n > data.shape[0]:
            raise ValueError(f"n = {n} exceeds the {data.shape[0]} images available")
        data, labels = data[:n], labels[:n]
    x = data.reshape(-1, 3, 32, 32).astype(np.float64) / 255.0
    return x, labels


def load_image_data(
    data: str = "digits", n: int | None = None, data_dir: str | os.PathLike | None = None, seed: int = 0
) -> tuple[FloatArray, IntArray]:
    """The image sets of Figures 2 and 3, by name: images (n, C, H, W) in [0, 1] and int64 labels 0..9.

    * ``'digits'``: scikit-learn's bundled 8×8×1 digits (:func:`digits`; ``n`` a random subset
      fixed by ``seed``), the default because it needs no download;
    * ``'cifar10'``: 32×32×3, the first ``n`` training images of the python batches in
      ``data_dir`` (:func:`load_cifar10`), the paper's data.

    Raises:
        InvalidArgumentError: an unknown ``data``, or ``'cifar10'`` without ``data_dir``.
    """
    if data == "digits":
        return digits(n=n, seed=seed)
    if data == "cifar10":
        if data_dir is None:
            raise bad_argument("data_dir", "is required with data='cifar10'", "Pass --data-dir PATH holding the CIFAR-10 python batches (data_batch_1 … data_batch_5).")
        return load_cifar10(data_dir, n=n)
    raise bad_argument("data", f"unknown data set {data!r}", "Use 'digits' or 'cifar10'.")
