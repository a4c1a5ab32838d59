"""Shared fixtures. Sizes are tiny and options shared so compiled solves are reused across tests."""

import os
import shutil
import tempfile

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradflow as gf

TEACHER = np.array([1.0, -0.5, 0.2])
_CACHE_ENV = "JAX_COMPILATION_CACHE_DIR"


def pytest_configure(config):
    """One JAX persistent compilation cache for the session, shared by the xdist workers (they
    inherit the environment): a solve whose HLO another test or module already compiled is loaded,
    not compiled again. Measured on 2 cores: the default suite 634 s without it, 494 s with it
    (from an empty cache). A cache the user set (the environment variable) is used as it is."""
    if os.environ.get(_CACHE_ENV):
        path = os.environ[_CACHE_ENV]
    else:
        path = tempfile.mkdtemp(prefix="gradflow-tests-jax-cache-")
        os.environ[_CACHE_ENV] = path
        config._gradflow_jax_cache = path  # made here: removed at the end
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")
    # this process imported jax before the environment was set (the workers import it after)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)


def pytest_unconfigure(config):
    path = getattr(config, "_gradflow_jax_cache", None)
    if path is not None:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def separable_2d():
    """Eight points in R^3 (2-D + constant 1), separable through the origin by TEACHER, ‖x_i‖ ≤ 1."""
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=(40, 2))
    x = np.c_[x, np.ones(len(x))]
    s = x @ TEACHER
    keep = np.abs(s) > 0.3
    x, y = x[keep][:8], np.sign(s[keep][:8])
    return x / np.linalg.norm(x, axis=1).max(), y


@pytest.fixture(scope="session")
def wine_one_vs_rest():
    """Wine, class 2 against the rest (±1), standardized, a constant feature appended, ‖x_i‖ ≤ 1:
    the issue's data for bias-free ReLU nets that slide."""
    return gf.datasets.wine_one_vs_rest(2)


@pytest.fixture(scope="session")
def squared_relu_model(separable_2d):
    """Width-6 squared-ReLU net (alternating signs, eq. 4.5) with L(W_0) < ℓ(0) on ``separable_2d``.

    Neurons 1 and 2 (signs −1, +1) start at ∓c·u for the teacher direction u, so
    Φ(x) = c²⟨u,x⟩|⟨u,x⟩| classifies every point; the other neurons are small and random."""
    x, y = separable_2d
    model = gf.TwoLayerSquaredReLU(3, 6, key=jax.random.PRNGKey(1), signs="alternating", init_scale=0.3)
    u = TEACHER / np.linalg.norm(TEACHER)
    c = 3.0 / np.min(np.abs(x @ u))
    with gf.x64():
        w = model.w.at[0].set(-c * jnp.asarray(u)).at[1].set(c * jnp.asarray(u))
        return eqx.tree_at(lambda m: m.w, model, w)


@pytest.fixture(autouse=True, scope="module")
def _fresh_jax_caches():
    """Empty JAX's compilation caches after each test module. One process compiling every module's
    solves in turn died in XLA:CPU's backend compile (segfault; issue 14 saw "LLVM ERROR: Unable to
    allocate section memory" the same way); compiled solves stay shared within a module."""
    yield
    jax.clear_caches()
