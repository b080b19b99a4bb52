"""Routing as a batch function for data-parallel engines (Ray Data ``map_batches`` and the like).

Beyond one machine, offline routing runs as a Ray Data job (DESIGN §9); Ray is not a
dependency of this package, the callable below only speaks NumPy dicts::

    import ray
    ds = ray.data.read_json("s3://bucket/inputs/")            # rows with "id" and "text"
    out = ds.map_batches(
        BatchRouter, fn_constructor_args=("profiles/routers/voting_mmlu_pro/qwen.npz",),
        batch_size=4096, compute=ray.data.ActorPoolStrategy(size=8), batch_format="numpy",
    )
    out.write_json("s3://bucket/routed/")

Each worker loads the checkpoint and compiles one bucket once, in its constructor.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from aragog_jax.errors import DatasetError


class BatchRouter:
    """``{"id": [...], "text": [...]} -> {"id", "num_admitted", "admitted"}`` per batch.

    Args:
      checkpoint: router checkpoint path.
      batch_size: the bucket compiled at construction (smaller batches are padded).
      admitted: ``indices`` (int32 arrays of configuration indices) or ``mask`` (the bool[C] row).
      workflow, family: check the checkpoint against this space (default: the one it stores),
        as ``python -m aragog_jax.route --workflow/--family`` does.
      featurizer_overrides: e.g. ``base_url=...`` for an openai-embeddings router.
    """

    def __init__(
        self,
        checkpoint: str | Path,
        batch_size: int = 4096,
        admitted: str = "indices",
        workflow: str | None = None,
        family: str | None = None,
        **featurizer_overrides,
    ) -> None:
        from aragog_jax.router._checkpoint import load_checkpoint
        from aragog_jax.router._router import Router

        if admitted not in ("indices", "mask"):
            raise DatasetError(f"admitted must be 'indices' or 'mask', got {admitted!r}")
        space = None
        if workflow or family:
            space = load_checkpoint(checkpoint).space(workflow, family)
        self.router = Router.load(checkpoint, space, **featurizer_overrides).compile(
            (int(batch_size),)
        )
        self.admitted = admitted

    def __call__(self, batch: dict) -> dict:
        if "text" not in batch or "id" not in batch:
            raise DatasetError(
                f"a routing batch needs 'id' and 'text' columns, got {sorted(batch)}"
            )
        texts = [str(t) for t in batch["text"]]
        mask = self.router.route_texts(texts).mask
        out = {"id": np.asarray(batch["id"]), "num_admitted": mask.sum(axis=1).astype(np.int32)}
        if self.admitted == "mask":
            out["admitted"] = mask
        else:
            rows = np.empty(len(texts), dtype=object)
            rows[:] = [np.flatnonzero(m).astype(np.int32) for m in mask]
            out["admitted"] = rows
        return out
