"""A DenseNet whose ReLUs read the same pre-activations, against one with a ReLU per pre-activation.

The textbook DenseNet applies the ReLU to the whole concatenated state before each layer, so a
pre-activation of the stem passes through every later ReLU of its block; ``gradflow.SmallDenseNet``
keeps relu(h) beside h and concatenates the ReLU of each new layer to it (the same function). To
the sliding field (:mod:`gradflow.sliding`) each ReLU's element is a pair: with the textbook form
every crossing of a repeated pre-activation enters the sliding set once per copy, with equal
normals (:attr:`gradflow.kinkmap.Kinks.shared`).

Both forms of the quick Figure 2's DenseNet (100 digits, cross-entropy, seed 0), from the random
initialisation in the accuracy clock (rtol 1e-5, atol 1e-8) for ``STEPS`` solver steps, in this one
process (compile included, as a user's call; the textbook form first): wall time, steps, ln(n/L)
reached, the sliding counters, and the C⁰ pairs and repeated sites the kink map finds.

``blank_patches``: the same pairs made by the data. On a blank 3×3 patch the stem's pre-activation is
its bias alone, in every example, so those pairs share one surface and one normal. The DenseNet
(one ReLU per pre-activation) from its random start in progress segments to ln(n/L) = 15, as
``figure2(warmup=False)`` runs it (accuracy clock, rtol 1e-5), on the 100 digits and on the same
digits plus N(0, ``NOISE``²) noise per pixel (no patch blank): status, steps, evaluations, entries,
the largest sliding set at a save point, ln(n/L) reached, wall time; and on the digits once more with
the copies of one surface slid as independent pairs (``digits_independent``: the rule before
:mod:`gradflow.sliding.copies`, whose search is switched off for that run).

Writes ``benchmarks/results/repeated_relus.json`` (~11 minutes on 2 cores; ``--only blank_patches``
reruns that part, ~6 minutes).

    python benchmarks/repeated_relus.py [--only forms|blank_patches]
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np

import gradflow as gf
from gradflow.figures import load_image_data, make_margin_model
from gradflow.flow import integration
from gradflow.kinkmap import model_kinks
from gradflow.params import partition
from gradflow.progress import initial_accuracy, simulate_with_progress

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "repeated_relus.json")
STEPS = 3000
NOISE = 1e-3
KEYS = ("steps", "rejected_steps", "gradient_evaluations", "sliding_entries", "sliding_exits", "sliding_brief_exits",
        "sliding_changes", "sliding_normals", "sliding_capacity")


class TextbookDenseNet(gf.SmallDenseNet):
    """SmallDenseNet with the ReLU applied to the whole state before each layer (same weights, same function)."""

    def _single(self, x):
        h = self.stem(x)
        for b, block in enumerate(self.blocks):
            for conv in block:
                h = jnp.concatenate([h, conv(jax.nn.relu(h))], axis=0)
            if b < len(self.transitions):
                h = self.pool(self.transitions[b](jax.nn.relu(h)))
        return self.head(jnp.mean(jax.nn.relu(h), axis=(1, 2)))


def _case(model, x, y) -> dict:
    params, static = partition(model)
    kinks = model_kinks(params, static, jnp.asarray(x))
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the repeated-ReLU warning, Assumption 2.3 at a random start
        r = gf.simulate_flow(model, (x, y), clock="accuracy", until_accuracy=15.0, save_at=np.linspace(0.0, 15.0, 16),
                             loss="cross_entropy", rtol=1e-5, atol=1e-8, max_steps=STEPS,
                             diagnostics=gf.Diagnostics(sharpness=False))
    wall = time.perf_counter() - start
    out = {k: r.stats.get(k) for k in KEYS}
    out.update(wall_s=wall, status=r.status, accuracy_start=initial_accuracy(model, (x, y), "cross_entropy"),
               accuracy_end=float(r.accuracy[-1]),
               c0_pairs_per_example=kinks.pairs // len(y), repeated_sites=len(kinks.shared))
    return out


def _figure_run(model, x, y, copies: bool = True) -> dict:
    """``copies=False``: the pairs that are copies of one surface slide as independent pairs (the rule
    before gradflow.sliding.copies; the library's search for them is switched off for this run)."""
    find = integration.find_copies
    if not copies:
        integration.find_copies = lambda *args, **kwargs: None
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        r = simulate_with_progress(model, (x, y), 15.0, segments=3, saves_per_segment=12, progress=False,
                                   loss="cross_entropy", rtol=1e-5, atol=1e-8, max_steps=400_000)
    wall = time.perf_counter() - start
    integration.find_copies = find
    out = {k: r.stats.get(k) for k in KEYS}
    out["surface_copies"] = r.config["surface_copies"]
    kept = r.accuracy[:-1] if r.status == "failed" else r.accuracy  # a failed run's last row is its final W
    out.update(wall_s=wall, status=r.status, reason=r.reason, accuracy_reached=float(np.max(kept)),
               max_sliding_pairs=int(np.max(np.asarray(r.diagnostics["sliding_pairs"]))))
    return out


def blank_patches() -> dict:
    x, y = load_image_data("digits", n=100, seed=0)
    x = np.asarray(x, np.float64)
    noisy = x + NOISE * np.random.default_rng(0).normal(size=x.shape)
    model = make_margin_model("densenet", x.shape[1:], 10, seed=0)
    out = {"case": "quick Figure 2 DenseNet, 100 digits, from the random start to ln(n/L) = 15 in 3 progress "
                   f"segments (accuracy clock, rtol 1e-5); noisy: the digits plus N(0, {NOISE:g}^2) per pixel",
           "noise": NOISE, "pixel_range": [float(x.min()), float(x.max())],
           "blank_share": float(np.mean(x == 0.0)),
           "digits": _figure_run(model, x, y), "digits_independent": _figure_run(model, x, y, copies=False),
           "noisy": _figure_run(model, noisy, y)}
    out["entries_ratio"] = out["digits"]["sliding_entries"] / out["noisy"]["sliding_entries"]
    out["independent_over_copies"] = {k: out["digits_independent"][k] / out["digits"][k]
                                      for k in ("sliding_entries", "gradient_evaluations", "wall_s")}
    return out


def forms() -> dict:
    x, y = load_image_data("digits", n=100, seed=0)
    model = make_margin_model("densenet", x.shape[1:], 10, seed=0)
    # make_margin_model's DenseNet, built again from the same key: the same weights
    textbook = TextbookDenseNet(x.shape[1], x.shape[2], 10, key=jax.random.PRNGKey(0), stem=8, growth=4,
                                block_layers=(2, 2))
    with gf.x64():
        same = float(jnp.max(jnp.abs(textbook(jnp.asarray(x)) - model(jnp.asarray(x)))))
    out = {"case": f"quick Figure 2 DenseNet, 100 digits, accuracy clock, rtol 1e-5, {STEPS} steps from the random start",
           "max_output_difference": same, "textbook": _case(textbook, x, y), "once": _case(model, x, y)}
    t, o = out["textbook"], out["once"]
    out["entries_ratio"] = t["sliding_entries"] / o["sliding_entries"]
    out["wall_ratio"] = t["wall_s"] / o["wall_s"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--only", choices=("forms", "blank_patches"), help="run one part (the others are kept)")
    args = ap.parse_args()
    out = json.load(open(RESULTS)) if args.only and os.path.exists(RESULTS) else {}
    if args.only in (None, "forms"):
        out.update(forms())
    if args.only in (None, "blank_patches"):
        out["blank_patches"] = blank_patches()
    out["machine"] = dict(cpus=os.cpu_count(), gradflow=gf.__version__)
    print(json.dumps(out, indent=1))
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as f:
        json.dump(out, f, indent=1)
    print("wrote", RESULTS)


if __name__ == "__main__":
    main()
