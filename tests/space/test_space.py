"""Configuration space tensors against hand-computed cases."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from aragog_jax.errors import SpaceTooLargeError, SpecError
from aragog_jax.space import build_space, load_space, pad_spaces, stage_depth, topo_order
from aragog_jax.spec import ModelSpec, StageSpec, WorkflowSpec, shipped_workflows


def _model(name: str, params: int) -> ModelSpec:
    return ModelSpec(
        name=name,
        family="t",
        num_params=params,
        num_layers=1,
        hidden_size=1,
        num_attention_heads=1,
        num_kv_heads=1,
        head_dim=1,
    )


SMALL, BIG = _model("small", 1), _model("big", 10)


def _stage(name, tin, tout, upstream=(), models=(), same=""):
    return StageSpec(
        name=name,
        prompt="{input}",
        input_tokens=tin,
        output_tokens=tout,
        upstream=list(upstream),
        models=list(models),
        same_model_as=same,
    )


def test_enumeration_and_flops_hand_computed():
    # Two stages: a has 3 tokens, b has 1 token. Pool: small (1 param) < big (10).
    wf = WorkflowSpec(name="w", stage=[_stage("a", 2, 1), _stage("b", 1, 0, ["a"])])
    sp = build_space(wf, [BIG, SMALL])  # pool order is normalised by size
    assert sp.model_names == ("small", "big")
    # flops = 2 * params * tokens: (s,s)=2*(3+1)=8, (s,b)=2*(3+10)=26, (b,s)=2*(30+1)=62, (b,b)=80
    np.testing.assert_array_equal(sp.configs, [[0, 0], [0, 1], [1, 0], [1, 1]])
    np.testing.assert_allclose(sp.config_flops, [8, 26, 62, 80])
    assert sp.c_max == 3 and sp.config_to_models(3) == {"a": "big", "b": "big"}
    assert sp.stage_model_onehot.shape == (2, 2, 4)
    assert sp.stage_model_onehot[1, 1].tolist() == [False, True, False, True]
    assert sp.index_of({"a": "big", "b": "small"}) == 2


def test_flops_ties_break_lexicographically():
    wf = WorkflowSpec(name="w", stage=[_stage("a", 1, 0), _stage("b", 1, 0)])
    sp = build_space(wf, [SMALL, BIG])
    # (s,b) and (b,s) cost the same: (0,1) comes first.
    np.testing.assert_array_equal(sp.configs[1:3], [[0, 1], [1, 0]])


def test_restricted_candidates_and_ties():
    wf = WorkflowSpec(
        name="w",
        stage=[_stage("a", 1, 0, models=["small"]), _stage("b", 1, 0), _stage("c", 1, 0, same="b")],
    )
    sp = build_space(wf, [SMALL, BIG])
    assert sp.num_configs == 2
    assert (sp.configs[:, 0] == 0).all() and (sp.configs[:, 1] == sp.configs[:, 2]).all()


def test_dominance_small_case():
    wf = WorkflowSpec(name="w", stage=[_stage("a", 2, 1), _stage("b", 1, 0, ["a"])])
    d = build_space(wf, [SMALL, BIG]).dominates()
    # (b,b) dominates everything; (s,b) and (b,s) are incomparable; everything dominates (s,s).
    assert d[3].all() and d[:, 0].all()
    assert not d[1, 2] and not d[2, 1]
    assert np.diag(d).all()


def test_depth_and_topo_on_dag_with_parallel_branches():
    # 0 -> {1, 2}; 2 -> 3; {1, 3} -> 4
    ups = ((), (0,), (0,), (2,), (1, 3))
    assert stage_depth(ups).tolist() == [3, 1, 2, 1, 0]
    assert topo_order(ups).tolist() == [0, 1, 2, 3, 4]
    assert topo_order(((1,), ())).tolist() == [1, 0]


def test_too_large_is_refused_with_size_and_limit():
    wf = WorkflowSpec(name="big", stage=[_stage(f"s{i}", 1, 1) for i in range(12)])
    with pytest.raises(
        SpaceTooLargeError, match=r"4,096 configurations .* exceed the enumeration limit 1,000"
    ):
        build_space(wf, [SMALL, BIG], max_configs=1000)


def test_model_outside_pool(catalog):
    wf = WorkflowSpec(name="w", stage=[_stage("a", 1, 1, models=["Phi-4"])])
    with pytest.raises(SpecError, match=r"models \['Phi-4'\] are not in the pool"):
        build_space(wf, [SMALL, BIG])


def test_padding_to_shared_bucket():
    a = load_space("self_refine_humaneval", "qwen")
    b = load_space("voting_mmlu_pro", "qwen")
    p = pad_spaces([a, b])
    assert p.configs.shape == (2, 256, 5)
    assert p.valid.sum(axis=1).tolist() == [27, 243]
    np.testing.assert_array_equal(p.configs[0, :27, :3], a.configs)
    assert (p.configs[0, 27:] == -1).all() and (p.configs[0, :, 3:] == -1).all()
    assert np.isinf(p.config_flops[0, 27:]).all()
    assert p.c_max.tolist() == [26, 242]


@pytest.mark.parametrize("path", shipped_workflows(), ids=lambda p: p.stem)
@pytest.mark.parametrize("family", ["qwen", "llama", "mixed"])
def test_shipped_spaces_are_sorted_and_cmax_is_largest(path, family):
    sp = load_space(path, family)
    assert (np.diff(sp.config_flops) >= 0).all()
    assert (sp.configs[sp.c_max] == sp.num_models - 1).all()
    assert sp.dominates()[sp.c_max].all()


def test_inspector_json_for_every_shipped_workflow():
    for path in shipped_workflows():
        out = subprocess.run(
            [sys.executable, "-m", "aragog_jax.inspect", str(path), "--family", "llama", "--json"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        d = json.loads(out)
        assert d["num_configs"] == 3 ** d["num_stages"]
        assert set(d["c_max"].values()) == {"Llama-3.1-70B-Instruct"}


def test_inspector_prints_level_and_depth_and_says_what_they_mean(capsys):
    from aragog_jax.inspect import main

    assert main(["decomposition_strategyqa", "--family", "qwen"]) == 0
    out = capsys.readouterr().out
    rows = {
        line.split()[0]: line.split()[1:3]
        for line in out.splitlines()
        if line.startswith("  ") and line.split()[0] in ("decompose", "solver_1", "aggregate")
    }
    assert rows == {"decompose": ["0", "2"], "solver_1": ["1", "1"], "aggregate": ["2", "0"]}
    assert "level: stages before this one on the longest path from the input" in out
    assert (
        "depth: stages after this one on the longest path to a sink (0: a sink, such as the output stage"
        in out
    )
    assert main(["decomposition_strategyqa", "--family", "qwen", "--json"]) == 0
    stages = json.loads(capsys.readouterr().out)["stages"]
    assert [(s["level"], s["depth"]) for s in stages] == [(0, 2), (1, 1), (1, 1), (1, 1), (2, 0)]
