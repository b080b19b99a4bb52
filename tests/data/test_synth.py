"""The synthetic accuracy generator and the shipped datasets (profiles/datasets/README.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from aragog_jax.data import (
    DEFAULT_TARGET_ACCURACY,
    AccuracyDataset,
    generate,
    latent_accuracy,
    load_dataset,
    load_published_scores,
    save_dataset,
    stage_roles,
    synth_latents,
    viability_stats,
)
from aragog_jax.errors import DatasetError, SpecError
from aragog_jax.space import build_space, load_space
from aragog_jax.spec import PROFILES_DIR, family_pool, load_models, load_workflow, resolve_workflow

DATASETS = PROFILES_DIR / "datasets"
#: The paper's benchmark sizes and c_max accuracies (Qwen2.5 7/14/32B, Llama3 3/8/70B).
PAPER = {
    "self_refine_humaneval": (164, {"qwen": 0.90, "llama": 0.87}),
    "self_refine_squad": (1000, {"qwen": 0.83, "llama": 0.82}),
    "decomposition_strategyqa": (1500, {"qwen": 0.74, "llama": 0.77}),
    "voting_mmlu_pro": (1500, {"qwen": 0.63, "llama": 0.53}),
    "text_to_sql_bird": (780, {"qwen": 0.36, "llama": 0.51}),
}
FAMILIES = ("qwen", "llama", "mixed")
SHIPPED = [(wf, fam) for wf in PAPER for fam in FAMILIES]
PAPER_PAIRS = [(wf, fam) for wf in PAPER for fam in ("qwen", "llama")]

# Documented in profiles/datasets/README.md ("Viable sets"): every shipped dataset and
# every fresh seed of the generator on a shipped workflow lies inside these ranges.
# (Generator v2: model skills come from published scores, so small models are close to
# large ones and most configurations are accurate on most inputs.)
VIABLE_FRAC_MEAN = (0.8, 0.99)
CHEAPEST_NOT_CMAX_MIN = 0.95
ORACLE_FLOPS_RATIO_MAX = 0.3

# Published single-model scores (percent) as cited in profiles/datasets/README.md, typed
# in again here so that the generator's use of published_scores.toml is checked against
# the sources, not against itself. MMLU is the proxy benchmark (Qwen: MMLU-redux).
CITED = {
    "HumanEval": {
        "Qwen2.5-7B-Instruct": 84.8,
        "Qwen2.5-14B-Instruct": 83.5,
        "Qwen2.5-32B-Instruct": 88.4,
        "Llama-3.1-8B-Instruct": 72.6,
        "Llama-3.1-70B-Instruct": 80.5,
        "Phi-4": 82.6,
    },
    "MMLU-Pro": {
        "Qwen2.5-7B-Instruct": 56.3,
        "Qwen2.5-14B-Instruct": 63.7,
        "Qwen2.5-32B-Instruct": 69.0,
        "Llama-3.1-8B-Instruct": 48.3,
        "Llama-3.1-70B-Instruct": 66.4,
        "Phi-4": 70.4,
    },
    "SQuAD v2": {
        "Llama-3.2-3B-Instruct": 67.7,
        "Llama-3.1-8B-Instruct": 77.0,
        "Llama-3.1-70B-Instruct": 81.8,
    },
    "MMLU": {
        "Qwen2.5-7B-Instruct": 75.4,
        "Qwen2.5-14B-Instruct": 80.0,
        "Qwen2.5-32B-Instruct": 83.9,
        "Llama-3.2-3B-Instruct": 63.4,
        "Llama-3.1-8B-Instruct": 69.4,
        "Llama-3.1-70B-Instruct": 83.6,
        "Phi-4": 84.8,
    },
}
# Where a pool model has no score on the benchmark it is imputed from the pool model with
# a score that is nearest in size, scaled by their MMLU ratio (README, "Published scores").
IMPUTED_FROM = {
    "Llama-3.2-3B-Instruct": "Llama-3.1-8B-Instruct",
    "Qwen2.5-32B-Instruct": "Llama-3.1-8B-Instruct",
    "Phi-4": "Llama-3.1-8B-Instruct",
}
UNIFORM_TOLERANCE = 0.03  # the "within 3 points"


def _cited_score(bench: str, model: str, pool: list[str]) -> float:
    table = CITED.get(bench, {})
    if not any(m in table for m in pool):
        return CITED["MMLU"][model]  # nobody in the pool has a score: the proxy for everyone
    if model in table:
        return table[model]
    ref = IMPUTED_FROM[model]
    return table[ref] * CITED["MMLU"][model] / CITED["MMLU"][ref]


def expected_uniform(wf: str, fam: str) -> dict[str, float]:
    """The paper's c_max accuracy times each model's cited score ratio to c_max's model."""
    workflow, space = _wf_space(wf, fam)
    pool = list(space.model_names)
    anchor = space.model_names[int(space.configs[space.c_max][0])]
    a = _cited_score(workflow.dataset, anchor, pool)
    target = workflow.target_accuracy[fam]
    return {m: target * _cited_score(workflow.dataset, m, pool) / a for m in pool}


def _uniform_accuracy(ds, space) -> dict[str, float]:
    return {
        m: float(ds.scores[:, space.index_of({st: m for st in space.stage_names})].mean())
        for m in space.model_names
    }


def _wf_space(wf: str, fam: str):
    return load_workflow(resolve_workflow(wf)), load_space(wf, fam)


@pytest.fixture(scope="module")
def shipped() -> dict[tuple[str, str], AccuracyDataset]:
    return {
        (wf, fam): load_dataset(DATASETS / wf / fam, load_space(wf, fam)) for wf, fam in SHIPPED
    }


def _assert_documented_ranges(st: dict, where: str) -> None:
    lo, hi = VIABLE_FRAC_MEAN
    assert lo <= st["viable_frac_mean"] <= hi, (where, st)
    assert st["cheapest_not_cmax"] >= CHEAPEST_NOT_CMAX_MIN, (where, st)
    assert st["oracle_flops_ratio"] <= ORACLE_FLOPS_RATIO_MAX, (where, st)


# ----------------------------------------------------------------------------- shipped data


@pytest.mark.parametrize("wf, fam", SHIPPED)
def test_shipped_calibration(shipped, wf, fam):
    ds = shipped[(wf, fam)]
    space = load_space(wf, fam)
    num, targets = PAPER[wf]
    assert ds.num_inputs == num
    target = targets.get(fam, targets["qwen"])  # mixed uses the Qwen figures (README)
    assert ds.meta["generator"]["target_accuracy"] == target
    assert ds.meta["generator"]["skill_source"] == "published"
    acc = float(ds.scores[:, space.c_max].mean())
    assert abs(acc - target) <= 0.02, f"{wf}/{fam}: c_max accuracy {acc:.3f}, target {target}"


@pytest.mark.parametrize("wf, fam", SHIPPED)
def test_shipped_uniform_configurations_match_cited_scores(shipped, wf, fam):
    """Every uniform configuration lands within 3 points of its cited score, transferred.

    The reading (profiles/datasets/README.md, "Published scores"): the paper's harness
    gives c_max its own accuracy, so a model's published single-call score is carried into
    the workflow by its ratio to c_max's model: target * score(m) / score(c_max model).
    """
    space = load_space(wf, fam)
    got = _uniform_accuracy(shipped[(wf, fam)], space)
    for model, want in expected_uniform(wf, fam).items():
        assert abs(got[model] - want) <= UNIFORM_TOLERANCE, (
            f"{wf}/{fam} {model}: uniform {got[model]:.3f}, cited {want:.3f}"
        )


@pytest.mark.parametrize("wf, fam", PAPER_PAIRS)
def test_fresh_seed_uniform_configurations_match_cited_scores(wf, fam):
    workflow, space = _wf_space(wf, fam)
    got = _uniform_accuracy(generate(space, workflow, 1000, seed=7, family=fam), space)
    for model, want in expected_uniform(wf, fam).items():
        assert abs(got[model] - want) <= UNIFORM_TOLERANCE, (wf, fam, model, got[model], want)


def test_published_scores_table_matches_the_citations():
    table = load_published_scores()
    for bench, scores in CITED.items():
        for model, value in scores.items():
            assert table.score(model, bench) == value, (model, bench)
    assert table.proxy_benchmark == "MMLU"
    assert all(table.sources[k] in table.source_text for k in table.scores)


@pytest.mark.parametrize("wf, fam", SHIPPED)
def test_shipped_accuracy_plateaus_below_c_max(shipped, wf, fam):
    """A configuration cheaper than c_max ties it on aggregate (within the per-workflow
    baseline's 2 points), so per-workflow does not have to pick c_max; and a cheaper model
    whose cited score beats c_max's model (Phi-4 in the mixed pool) ties it on its own."""
    space = load_space(wf, fam)
    acc = shipped[(wf, fam)].scores.mean(axis=0)
    ties = np.flatnonzero(acc >= acc[space.c_max] - 0.02)
    assert (
        ties.min() < space.c_max
        and space.config_flops[ties.min()] < space.config_flops[space.c_max]
    )
    uniform = _uniform_accuracy(shipped[(wf, fam)], space)
    anchor = space.model_names[int(space.configs[space.c_max][0])]
    for model, want in expected_uniform(wf, fam).items():
        if model != anchor and want >= uniform[anchor]:
            assert uniform[model] >= acc[space.c_max] - 1.0 / acc.shape[0], (wf, fam, model)


def test_shipped_stats_match_stats_json_and_documented_ranges(shipped):
    documented = json.loads((DATASETS / "stats.json").read_text())
    assert set(documented) == {f"{wf}/{fam}" for wf, fam in SHIPPED}
    for (wf, fam), ds in shipped.items():
        space = load_space(wf, fam)
        st = viability_stats(ds.scores, space.c_max, space.config_flops)
        doc = documented[f"{wf}/{fam}"]
        for k, v in st.items():
            assert v == pytest.approx(doc[k], abs=1e-4), (wf, fam, k)
        _assert_documented_ranges(st, f"{wf}/{fam}")


@pytest.mark.parametrize("wf", list(PAPER))
def test_shipped_regenerate_bit_for_bit(tmp_path, shipped, wf):
    for fam in FAMILIES:
        ds = shipped[(wf, fam)]
        workflow, space = _wf_space(wf, fam)
        fresh = generate(space, workflow, ds.num_inputs, ds.meta["seed"], family=fam)
        out = save_dataset(fresh, tmp_path / fam)
        for name in ("meta.json", "inputs.jsonl", "scores.npy"):
            assert (out / name).read_bytes() == (DATASETS / wf / fam / name).read_bytes(), (
                f"{wf}/{fam}/{name} differs"
            )


def test_shipped_same_inputs_across_families(shipped):
    for wf in PAPER:
        a, b = shipped[(wf, "qwen")], shipped[(wf, "llama")]
        assert a.texts == b.texts and a.splits == b.splits
        np.testing.assert_array_equal(a.tokens, b.tokens)


# ----------------------------------------------------------------------------- generator model


@pytest.mark.parametrize("wf, fam", PAPER_PAIRS)
def test_fresh_seed_within_documented_ranges(wf, fam):
    workflow, space = _wf_space(wf, fam)
    ds = generate(space, workflow, 1000, seed=7, family=fam)
    st = viability_stats(ds.scores, space.c_max, space.config_flops)
    assert abs(st["c_max_accuracy"] - workflow.target_accuracy[fam]) <= 0.0005
    _assert_documented_ranges(st, f"{wf}/{fam} seed 7")


def test_determinism_and_seed_sensitivity():
    workflow, space = _wf_space("text_to_sql_bird", "llama")
    a = generate(space, workflow, 300, seed=3, family="llama")
    b = generate(space, workflow, 300, seed=3, family="llama")
    c = generate(space, workflow, 300, seed=4, family="llama")
    assert a.texts == b.texts and a.splits == b.splits and a.ids == b.ids and a.meta == b.meta
    np.testing.assert_array_equal(a.scores, b.scores)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    assert a.texts != c.texts
    assert a.splits != c.splits
    assert not np.array_equal(a.scores, c.scores)
    assert not np.array_equal(a.tokens, c.tokens)


@pytest.mark.parametrize("wf, fam", PAPER_PAIRS)
def test_ordered_like_the_cited_scores(shipped, wf, fam):
    """Per stage, mean accuracy over configurations follows the models' cited score order.

    Not model size: Qwen2.5-7B-Instruct outscores 14B on HumanEval (84.8 vs 83.5).
    """
    ds = shipped[(wf, fam)]
    space = load_space(wf, fam)
    cited = expected_uniform(wf, fam)
    order = sorted(range(space.num_models), key=lambda m: cited[space.model_names[m]])
    for s in range(space.num_stages):
        acc = [ds.scores[:, space.configs[:, s] == m].mean() for m in order]
        assert np.all(np.diff(acc) >= -0.01), (wf, fam, space.stage_names[s], acc)


@pytest.mark.parametrize("wf, fam", PAPER_PAIRS)
def test_late_stage_repairs_weak_draft(shipped, wf, fam):
    """Largest model on the final stage(s), smallest elsewhere, fixes many all-small errors."""
    ds = shipped[(wf, fam)]
    space = load_space(wf, fam)
    sinks = {space.stage_names[s] for s in range(space.num_stages) if space.stage_depth[s] == 0}
    small, big = space.model_names[0], space.model_names[-1]
    repaired = space.index_of({s: big if s in sinks else small for s in space.stage_names})
    cheapest = space.index_of({s: small for s in space.stage_names})
    s = ds.scores
    errors = (s[:, cheapest] == 0) & (s[:, space.c_max] == 1)
    assert errors.sum() >= 5
    fixed = float(s[errors, repaired].mean())
    assert fixed >= 0.35, (
        f"{wf}/{fam}: the big final stage fixes only {fixed:.2f} of the all-small errors"
    )


@pytest.mark.parametrize("wf, fam", PAPER_PAIRS)
def test_small_models_fail_where_c_max_fails(shipped, wf, fam):
    ds = shipped[(wf, fam)]
    space = load_space(wf, fam)
    fail = ds.scores[:, space.c_max] == 0
    # Mostly: with published scores a 7B model is right on up to ~12 % of the inputs
    # Qwen2.5-32B fails (HumanEval), as small models are on real benchmarks.
    assert ds.scores[fail, 0].mean() <= 0.15
    assert ds.scores[fail].mean() <= 0.2


def test_easy_and_hard_inputs_in_between(shipped):
    for (wf, fam), ds in shipped.items():
        space = load_space(wf, fam)
        right = ds.scores[:, space.c_max] == 1
        frac = ds.labels(space.c_max).mean(axis=1)[right]
        assert (frac >= 0.95).mean() >= 0.5, (wf, fam)  # easy: (nearly) every configuration right
        assert (frac <= 0.25).sum() >= 1, (wf, fam)  # hard: only a few configurations right
        assert ((frac > 0.25) & (frac < 0.95)).mean() >= 0.05, (wf, fam)


def _bag_of_words(texts: list[str]) -> np.ndarray:
    vocab: dict[str, int] = {}
    rows = [[vocab.setdefault(w, len(vocab)) for w in t.lower().rstrip("?").split()] for t in texts]
    x = np.zeros((len(texts), len(vocab)))
    for i, r in enumerate(rows):
        np.add.at(x[i], r, 1.0)
    return x / x.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("wf", ["voting_mmlu_pro", "decomposition_strategyqa", "self_refine_squad"])
def test_text_signal_learnable_but_noisy(shipped, wf):
    """Ridge regression on word frequencies predicts how many configurations are right, imperfectly."""
    ds = shipped[(wf, "qwen")]
    x = _bag_of_words(ds.texts)
    y = ds.scores.mean(axis=1)
    tr, te = ds.split_index("train"), ds.split_index("test")
    w = np.linalg.solve(
        x[tr].T @ x[tr] + 1e-3 * np.eye(x.shape[1]), x[tr].T @ (y[tr] - y[tr].mean())
    )
    pred = x[te] @ w + y[tr].mean()
    r = float(np.corrcoef(pred, y[te])[0, 1])
    assert 0.6 <= r <= 0.97, f"{wf}: text -> mean accuracy correlation {r:.3f}"


def test_tokens_and_splits():
    workflow, space = _wf_space("voting_mmlu_pro", "qwen")
    ds = generate(space, workflow, 1000, seed=1, family="qwen")
    assert ds.tokens.shape == (1000, space.num_stages, 2) and ds.tokens.dtype == np.int32
    assert (ds.tokens >= 1).all()
    ratio = ds.tokens.mean(axis=0) / space.stage_tokens
    assert np.all((ratio > 0.85) & (ratio < 1.25)), ratio
    assert ds.tokens[:, 0, 0].std() > 0
    assert Counter(ds.splits) == {"train": 600, "calibration": 200, "test": 200}
    assert len(set(ds.ids)) == 1000
    assert set(np.unique(ds.scores).tolist()) == {0.0, 1.0}


def test_stage_roles_group_parallel_stages():
    assert stage_roles(load_workflow(resolve_workflow("voting_mmlu_pro"))) == [0, 0, 0, 0, 1]
    assert stage_roles(load_workflow(resolve_workflow("decomposition_strategyqa"))) == [
        0,
        1,
        1,
        1,
        2,
    ]
    assert stage_roles(load_workflow(resolve_workflow("text_to_sql_bird"))) == [0, 1, 2, 3]


# ----------------------------------------------------------------------------- custom workflows

TWO_STAGE = """
name = "draft_polish"
target_accuracy = { qwen = 0.6 }

[[stage]]
name = "draft"
input_tokens = 100
output_tokens = 50
prompt = "Draft: {input}"

[[stage]]
name = "polish"
upstream = ["draft"]
input_tokens = 150
output_tokens = 60
MODELS
prompt = "Polish: {input} {draft}"
"""

TIED = """
name = "tied_chain"

[[stage]]
name = "plan"
input_tokens = 80
output_tokens = 40
prompt = "Plan: {input}"

[[stage]]
name = "act"
upstream = ["plan"]
input_tokens = 120
output_tokens = 0
prompt = "Act: {plan}"

[[stage]]
name = "check"
upstream = ["plan", "act"]
input_tokens = 160
output_tokens = 30
same_model_as = "plan"
prompt = "Check: {plan} {act}"
"""


def _write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / f"{name}.toml"
    p.write_text(text)
    return p


def test_custom_two_stage_restricted_candidates(tmp_path):
    catalog = load_models()
    restricted = TWO_STAGE.replace(
        "MODELS", 'models = ["Qwen2.5-14B-Instruct", "Qwen2.5-32B-Instruct"]'
    )
    wf = load_workflow(_write(tmp_path, "draft_polish", restricted), catalog)
    space = build_space(wf, family_pool(catalog, "qwen"))
    assert space.num_configs == 6
    ds = generate(space, wf, 200, seed=0, family="qwen")
    assert ds.scores.shape == (200, 6)
    assert ds.scores[:, space.c_max].mean() == pytest.approx(0.6, abs=0.005)
    assert ds.meta["workflow"] == "draft_polish" and ds.meta["fingerprint"] == space.fingerprint()
    # no benchmark named (dataset = ""): no published scores, version 1's size curve
    assert ds.meta["generator"]["skill_source"] == "size_curve"
    # an explicit target wins over the workflow's figure
    ds3 = generate(space, wf, 200, seed=0, family="qwen", target=0.3)
    assert ds3.scores[:, space.c_max].mean() == pytest.approx(0.3, abs=0.005)
    # a family the workflow has no figure for falls back to the documented default
    free = load_workflow(
        _write(tmp_path, "draft_polish_free", TWO_STAGE.replace("MODELS", "")), catalog
    )
    llama = build_space(free, family_pool(catalog, "llama"))
    ds2 = generate(llama, free, 200, seed=0, family="llama")
    assert ds2.scores[:, llama.c_max].mean() == pytest.approx(DEFAULT_TARGET_ACCURACY, abs=0.005)
    assert ds2.meta["generator"]["target_accuracy"] == DEFAULT_TARGET_ACCURACY


def test_custom_tied_stages_and_zero_tokens(tmp_path):
    catalog = load_models()
    wf = load_workflow(_write(tmp_path, "tied_chain", TIED), catalog)
    space = build_space(wf, family_pool(catalog, "llama"))
    assert space.num_configs == 9
    ds = generate(space, wf, 300, seed=5, family="llama")
    assert ds.scores[:, space.c_max].mean() == pytest.approx(DEFAULT_TARGET_ACCURACY, abs=0.005)
    assert (ds.tokens[:, 1, 1] == 0).all() and (ds.tokens[:, 1, 0] > 0).all()
    st = viability_stats(ds.scores, space.c_max)
    assert 0.0 < st["viable_frac_mean"] < 1.0
    save_dataset(ds, tmp_path / "out")
    assert load_dataset(tmp_path / "out", space).num_inputs == 300


def test_single_model_pool(tmp_path):
    catalog = load_models()
    wf = load_workflow(_write(tmp_path, "draft_polish", TWO_STAGE.replace("MODELS", "")), catalog)
    pool = [m for m in family_pool(catalog, "qwen") if m.name == "Qwen2.5-7B-Instruct"]
    space = build_space(wf, pool)
    ds = generate(space, wf, 50, seed=0, target=0.5)
    assert ds.scores.shape == (50, 1) and ds.scores.mean() == 0.5


def test_generate_rejects_mismatch_and_bad_sizes():
    workflow, space = _wf_space("self_refine_squad", "qwen")
    with pytest.raises(DatasetError, match="not 'self_refine_squad'"):
        generate(load_space("voting_mmlu_pro", "qwen"), workflow, 10)
    with pytest.raises(DatasetError, match="at least 1 input"):
        generate(space, workflow, 0)
    with pytest.raises(DatasetError, match="not in"):
        generate(space, workflow, 10, target=1.5)


# ----------------------------------------------------------------------------- CLI


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "aragog_jax.synth", *args], capture_output=True, text=True
    )


def test_cli_writes_a_dataset(tmp_path):
    r = _cli(
        "--workflow",
        "self_refine_humaneval",
        "--family",
        "llama",
        "--num-inputs",
        "40",
        "--seed",
        "2",
        "--out",
        str(tmp_path / "d"),
    )
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["num_inputs"] == 40 and summary["num_configs"] == 27
    ds = load_dataset(tmp_path / "d", load_space("self_refine_humaneval", "llama"))
    assert ds.meta["seed"] == 2 and ds.meta["family"] == "llama"


def test_cli_custom_workflow_path(tmp_path):
    path = _write(tmp_path, "tied_chain", TIED)
    r = _cli(
        "--workflow",
        str(path),
        "--family",
        "mixed",
        "--num-inputs",
        "20",
        "--out",
        str(tmp_path / "d"),
        "--quiet",
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout == ""
    assert (tmp_path / "d" / "scores.npy").is_file()


@pytest.mark.parametrize(
    "args, needle",
    [
        (
            ["--workflow", "no_such_workflow", "--family", "qwen", "--num-inputs", "5"],
            "workflow file not found",
        ),
        (
            ["--workflow", "self_refine_squad", "--family", "nope", "--num-inputs", "5"],
            "unknown family",
        ),
        (
            ["--workflow", "self_refine_squad", "--family", "qwen", "--num-inputs", "0"],
            "at least 1 input",
        ),
    ],
)
def test_cli_user_errors_are_one_line(tmp_path, args, needle):
    r = _cli(*args, "--out", str(tmp_path / "d"))
    assert r.returncode == 2
    assert needle in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) <= 2


def test_published_scores_errors_name_the_field(tmp_path):
    base = (
        'proxy_benchmark = "MMLU"\n[sources]\nx = "a card"\n'
        '[[score]]\nmodel = "M"\nbenchmark = "MMLU"\nvalue = 50.0\nsource = "x"\n'
    )
    path = tmp_path / "s.toml"
    path.write_text(base)
    assert load_published_scores(path).score("M", "MMLU") == 50.0
    for old, new, needle in [
        ("value = 50.0", "value = 150.0", r"score\[0\]\.value"),
        ('source = "x"', 'source = "y"', r"score\[0\]\.source: 'y' is not in \[sources\]"),
        ('proxy_benchmark = "MMLU"\n', "", "proxy_benchmark"),
    ]:
        path.write_text(base.replace(old, new))
        with pytest.raises(SpecError, match=needle):
            load_published_scores(path)
    path.write_text(base + base[base.index("[[score]]") :])
    with pytest.raises(SpecError, match="duplicate score for M on MMLU"):
        load_published_scores(path)
    with pytest.raises(SpecError, match="file not found"):
        load_published_scores(tmp_path / "missing.toml")


# ----------------------------------------------------------------------------- latents


def test_latents_regenerate_the_draw():
    """synth_latents reproduces generate's draw: same threshold and skills, and the labels
    follow from difficulty and role the way the generator's model says (harder inputs are
    right less often; a small model is right more often when its stage is not critical)."""
    workflow, space = _wf_space("self_refine_squad", "llama")
    ds = generate(space, workflow, 3000, seed=11, family="llama")
    lat = synth_latents(space, workflow, 3000, seed=11, family="llama")
    gen = ds.meta["generator"]
    assert lat.threshold == gen["threshold"]
    assert list(lat.stage_roles) == gen["stage_roles"]
    assert {
        m: round(float(a), 6) for m, a in zip(space.model_names, lat.skill, strict=True)
    } == gen["skill"]
    again = synth_latents(space, workflow, 3000, seed=11, family="llama")
    np.testing.assert_array_equal(lat.difficulty, again.difficulty)
    np.testing.assert_array_equal(lat.critical_role, again.critical_role)
    other = synth_latents(space, workflow, 3000, seed=12, family="llama")
    assert not np.array_equal(lat.difficulty, other.difficulty)
    right = ds.scores[:, space.c_max] > 0.5
    easy = lat.difficulty < np.median(lat.difficulty)
    assert right[easy].mean() > right[~easy].mean() + 0.2


def test_latent_accuracy_is_calibrated_and_beats_the_marginal():
    """The yardstick's P(accurate | difficulty, role) matches the labels' frequencies in
    every probability bin (a wrong luck model or a sign error in d breaks this) and has a
    lower log loss than each configuration's marginal rate."""
    workflow, space = _wf_space("self_refine_squad", "llama")
    n = 6000
    ds = generate(space, workflow, n, seed=5, family="llama")
    lat = synth_latents(space, workflow, n, seed=5, family="llama")
    prob = latent_accuracy(space, lat, num_samples=1 << 13)
    labels = ds.labels(space.c_max)
    assert prob.shape == labels.shape and (prob[:, space.c_max] == 1).all()
    assert ((prob >= 0) & (prob <= 1)).all()
    p, y = prob.ravel(), labels.ravel()
    edges = np.array([0.0, 0.5, 0.8, 0.9, 0.95, 0.99, 0.999, 1.0 + 1e-9])
    which = np.digitize(p, edges) - 1
    for b in range(len(edges) - 1):
        sel = which == b
        if sel.sum() < 500:
            continue
        # binomial noise of the bin's mean plus a little Monte-Carlo error
        tol = 4 * np.sqrt(p[sel].mean() * (1 - p[sel].mean()) / sel.sum()) + 0.004
        assert abs(y[sel].mean() - p[sel].mean()) <= tol, (edges[b], y[sel].mean(), p[sel].mean())

    def log_loss(q):
        q = np.clip(q, 1e-4, 1 - 1e-4)
        return -np.mean(y * np.log(q) + (~y) * np.log(1 - q))

    marginal = np.broadcast_to(labels.mean(axis=0), labels.shape).ravel()
    assert log_loss(p) < 0.8 * log_loss(marginal)


def test_latent_accuracy_rejects_latents_of_another_space():
    workflow, space = _wf_space("self_refine_squad", "llama")
    lat = synth_latents(space, workflow, 50, seed=0, family="llama")
    wf2, space2 = _wf_space("voting_mmlu_pro", "llama")
    with pytest.raises(DatasetError, match="latents are for"):
        latent_accuracy(space2, lat, num_samples=64)
