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
reached, the sliding counters, and the C⁰ pairs and repeated sites the kink map finds. Writes
``benchmarks/results/repeated_relus.json`` (~5 minutes on 2 cores).

    python benchmarks/repeated_relus.py
"""

from __future__ import annotations

import json
import os
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np

import gradflow as gf
from gradflow.figures import load_image_data, make_margin_model
from gradflow.kinkmap import model_kinks
from gradflow.params import partition
from gradflow.progress import initial_accuracy

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "repeated_relus.json")
STEPS = 3000
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


def main() -> None:
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
    out["machine"] = dict(cpus=os.cpu_count(), gradflow=gf.__version__)
    print(json.dumps(out, indent=1))
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as f:
        json.dump(out, f, indent=1)
    print("wrote", RESULTS)


if __name__ == "__main__":
    main()
