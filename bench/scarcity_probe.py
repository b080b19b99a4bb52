"""How often the scarcity reservation changes a round's plan, on rounds from the simulator.

    python bench/scarcity_probe.py voting_mmlu_pro llama 20 8

Runs ``aragog-scarce`` (B = 4, the shipped router's masks, 8 GPUs) at RATE req/s for
DURATION s of arrivals and, for every round, counts the items whose request can use only
one model at their stage (inflexible) and whether the paper's rule (``aragog``) would
have planned the round differently. Prints one JSON line.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print("usage: scarcity_probe.py WORKFLOW FAMILY RATE DURATION", file=sys.stderr)
        return 2
    wf, fam, rate, duration = argv[0], argv[1], float(argv[2]), float(argv[3])
    from aragog_jax.kernels import reference
    from aragog_jax.scheduler import COMPILED_PAPER, COMPILED_SCARCE, BeamPolicy
    from aragog_jax.sim import RunConfig, build_masks, load_setup, simulate

    stats = {"rounds": 0, "rounds_with_inflexible": 0, "items": 0, "inflexible_items": 0}
    stats["plans_changed"] = 0

    class Probe(BeamPolicy):
        def assign(self, arrays):
            result = super().assign(arrays)
            n = arrays.num_items
            sc = reference.score_stages(
                arrays.item_viable, arrays.item_cfg_model, arrays.num_models
            )
            kept, nv = np.asarray(sc.kept)[:n], np.asarray(sc.num_viable)[:n]
            only = ((kept == nv[:, None]) & (nv[:, None] > 0)).any(axis=1)
            paper = COMPILED_PAPER(arrays, self.beam_width)[1]
            stats["rounds"] += 1
            stats["items"] += n
            stats["inflexible_items"] += int(only.sum())
            stats["rounds_with_inflexible"] += int(only.any())
            stats["plans_changed"] += int(
                not np.array_equal(np.asarray(paper.engine), np.asarray(result.engine))
            )
            return result

    setup = load_setup(wf, fam, gpus=8)
    masks = build_masks(setup, None, 0.001)
    cfg = RunConfig(
        policy="aragog-scarce",
        rate=rate,
        duration_s=duration,
        round_interval_s=0.1,
        horizon_s=1.5 * duration,
        route_cost_s=masks.route_cost_s,
        round_cost_s=0.001,
        seed=0,
    )
    simulate(setup, cfg, masks.router, policy=Probe(4, compiled=COMPILED_SCARCE))
    print(
        json.dumps({"workflow": wf, "family": fam, "rate": rate, "duration_s": duration, **stats})
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
