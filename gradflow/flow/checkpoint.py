"""Checkpoints of a segmented flow: written atomically, refused when they belong to another run.

A checkpoint is an ``.npz`` file (no pickle) holding
  * ``fingerprint``: JSON of what must match to resume (data hash, parameter shapes, loss, clock,
    solver, tolerances, save points);
  * ``state/params/<i>``, ``state/aux``, ``state/controller/<i>``, ``state/eigvec/<i>`` (the
    sharpness warm start) and JSON ``state/meta`` (clock
    value s, next step size, solver name, next chunk, solver switches, stats so far);
  * ``diag/<name>``: every diagnostic saved so far, and ``final/<name>`` the last state's.
It is written to a temporary file in the same directory and renamed over the old one, so a
crash at any moment leaves either the previous or the new checkpoint, never half of one.
"""

from __future__ import annotations

import json
import os
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import bad_argument
from .assemble import Segment
from .state import FlowState

__all__ = ["CheckpointStore"]

_FORMAT = "gradflow-checkpoint/2"


class CheckpointStore:
    """Reads and writes the checkpoint of one run at ``path``."""

    def __init__(self, path, fingerprint: dict):
        path = os.fspath(path)
        self.path = path if path.endswith(".npz") else path + ".npz"
        self.fingerprint = json.loads(json.dumps(fingerprint, default=float))

    def save(self, state, segments, next_chunk: int, switches: list[str]) -> None:
        arrays = {"format": np.array(_FORMAT), "fingerprint": np.array(json.dumps(self.fingerprint))}
        for i, leaf in enumerate(jax.tree_util.tree_leaves(state.params)):
            arrays[f"state/params/{i}"] = np.asarray(leaf)
        arrays["state/aux"] = np.asarray(state.aux)
        for i, leaf in enumerate(jax.tree_util.tree_leaves(getattr(state, "slide", None))):
            arrays[f"state/slide/{i}"] = np.asarray(leaf)  # the sliding set and its multipliers
        for i, vec in enumerate(getattr(state, "eigvec", None) or ()):
            if vec is not None:  # the sharpness warm start (top, bottom eigenvector)
                arrays[f"state/eigvec/{i}"] = np.asarray(vec)
        for i, leaf in enumerate(jax.tree_util.tree_leaves(state.controller_state)):
            arrays[f"state/controller/{i}"] = np.asarray(leaf)
        saved = [seg.saved for seg in segments]
        for k in saved[0]:
            arrays[f"diag/{k}"] = np.concatenate([p[k] for p in saved])
        for k, v in segments[-1].final_diag.items():
            arrays[f"final/{k}"] = np.asarray(v)
        stats = {k: sum(seg.stats[k] for seg in segments) for k in segments[-1].stats}
        meta = {
            "s": state.s,
            "dt_next": state.dt_next,
            "solver": type(state.solver).__name__,
            "next_chunk": next_chunk,
            "switches": switches,
            "stats": stats,
            "wall": sum(seg.wall for seg in segments),
            "num_save": sum(seg.num_save for seg in segments),
            "evals_per_step": [seg.evals_per_step for seg in segments],
            # explicit stage evaluations of all segments (their evals_per_step differ: Bosh3, then Kvaerno5)
            "stage_evaluations": None if any(seg.evals_per_step is None for seg in segments) else sum(
                seg.stats["num_steps"] * seg.evals_per_step for seg in segments),
            "implicit_segments": sum(seg.implicit_segments for seg in segments),
            "start_evals": sum(seg.start_evals for seg in segments),
            "result_name": segments[-1].result_name,
            "reason": segments[-1].reason,
            "solver_name": segments[-1].solver_name,
        }
        arrays["state/meta"] = np.array(json.dumps(meta))
        directory = os.path.dirname(os.path.abspath(self.path))
        fd, tmp = tempfile.mkstemp(suffix=".npz", dir=directory)
        os.close(fd)
        try:
            np.savez(tmp, **arrays)
            os.replace(tmp, self.path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    def load(self, like_state, solvers):
        """``(state, [segment], next_chunk, switches)`` from the file, or None if there is none."""
        if not os.path.exists(self.path):
            return None
        try:
            with np.load(self.path, allow_pickle=False) as f:
                files = {k: f[k] for k in f.files}
            fingerprint = json.loads(str(files["fingerprint"]))
            meta = json.loads(str(files["state/meta"]))
            if str(files["format"]) != _FORMAT:
                raise ValueError(f"unknown format {files['format']}")
        except Exception as e:
            raise bad_argument(
                "checkpoint",
                f"{self.path} is not a readable gradflow checkpoint ({type(e).__name__}: {e})",
                "Delete the file to start from scratch, or pass another path.",
            ) from e
        if fingerprint != self.fingerprint:
            diff = sorted(k for k in set(fingerprint) | set(self.fingerprint) if fingerprint.get(k) != self.fingerprint.get(k))
            raise bad_argument(
                "checkpoint",
                f"{self.path} was written by a different run (differs in: {', '.join(diff)})",
                "Resume with the same model, data and options, or pass another checkpoint path.",
            )
        leaves, treedef = jax.tree_util.tree_flatten(like_state.params)
        dtype = leaves[0].dtype
        params = jax.tree_util.tree_unflatten(
            treedef, [jnp.asarray(files[f"state/params/{i}"], dtype) for i in range(len(leaves))]
        )
        n_ctrl = sum(1 for k in files if k.startswith("state/controller/"))
        controller = tuple(jnp.asarray(files[f"state/controller/{i}"]) for i in range(n_ctrl)) or None
        state = like_state._replace(
            params=params,
            aux=jnp.asarray(files["state/aux"], dtype),
            s=meta["s"],
            solver=like_state.solver if type(like_state.solver).__name__ == meta["solver"] else solvers(meta["solver"]),
            solver_state=None,
            controller_state=controller,
            dt_next=meta["dt_next"],
        )
        if getattr(like_state, "eigvec", None) is not None:
            state = state._replace(eigvec=tuple(
                jnp.asarray(files[f"state/eigvec/{i}"], dtype) if f"state/eigvec/{i}" in files else v
                for i, v in enumerate(like_state.eigvec)))
        if getattr(like_state, "slide", None) is not None:
            slide_leaves, slide_def = jax.tree_util.tree_flatten(like_state.slide)
            saved = [jnp.asarray(files[f"state/slide/{i}"], leaf.dtype) for i, leaf in enumerate(slide_leaves)]
            # the counters (last leaf) grow at the end when a counter is added: an older checkpoint's
            # missing counters start at zero
            saved[-1] = jnp.zeros_like(slide_leaves[-1]).at[:saved[-1].shape[0]].set(saved[-1])
            state = state._replace(slide=jax.tree_util.tree_unflatten(slide_def, saved))
        evals = meta["evals_per_step"]
        stats = dict(meta["stats"])
        if None in evals:
            per_step = None
        elif meta.get("stage_evaluations") is not None:  # the stage evaluations as counted work
            per_step = 0
            stats["extra_evaluations"] = stats.get("extra_evaluations", 0) + meta["stage_evaluations"]
        else:  # written before the stage count was kept
            per_step = max(evals)
        segment = Segment(
            saved={k[5:]: v for k, v in files.items() if k.startswith("diag/")},
            final_diag={k[6:]: v for k, v in files.items() if k.startswith("final/")},
            final_state=FlowState(params, state.aux, state.slide),
            result_name=meta["result_name"],
            reason=meta["reason"],
            stats=stats,
            wall=meta["wall"],
            num_save=meta["num_save"],
            evals_per_step=per_step,
            start_evals=meta.get("start_evals", 0),
            solver_name=meta["solver_name"],
            implicit_segments=meta.get("implicit_segments", int(None in evals)),
            extra={"resumed": True},
        )
        return state, [segment], meta["next_chunk"], meta["switches"]
