"""pytest-benchmark microbenchmarks of the scheduler round (not collected by ``tests/``).

    python -m pytest bench/test_bench_scheduler.py --benchmark-group-by=param:case

Each case times the compiled round (``score_stages`` + ``beam_assign``, host inputs to
host result) next to its pure-Python twin on the same round; ``bench/scheduler.py``
writes the JSON with ratios.
"""

from __future__ import annotations

import numpy as np
import pytest

from bench.scheduler import HEADLINE, jit_round, make_round, reference_round

CASES = {
    "headline": {},
    "adversarial": {"blocked_share": 0.9},
    "adversarial_one_slot": {"blocked_share": 0.9, "blocked_slots": 1},
    "r128": {"num_items": 128},
}


def _arrays(case: str):
    kw = dict(CASES[case])
    num_items = kw.pop("num_items", HEADLINE["num_items"])
    return make_round(
        num_items, HEADLINE["num_configs"], HEADLINE["num_engines"], HEADLINE["total_free"], **kw
    )


@pytest.mark.parametrize("case", list(CASES))
def test_jit_round(benchmark, case):
    run = jit_round(_arrays(case), HEADLINE["beam"])
    engine = benchmark(run)
    assert (np.asarray(engine) >= 0).sum() > 0


@pytest.mark.parametrize("case", list(CASES))
def test_reference_round(benchmark, case):
    run = reference_round(_arrays(case), HEADLINE["beam"])
    result = benchmark.pedantic(run, rounds=5, iterations=1, warmup_rounds=1)
    assert (result.engine >= 0).sum() > 0
