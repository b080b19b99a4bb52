"""Labeller: configuration tree counts, calls on fake engines, resume, failures, sampling, CLI."""

from __future__ import annotations

import asyncio
import json
import re
import textwrap
from pathlib import Path

import numpy as np
import pytest

from aragog_jax._cli import run_cli
from aragog_jax.data import load_dataset
from aragog_jax.data._label import EngineTarget, Labeller, LabelSettings, load_inputs, load_scorer, make_plan, sample_configs
from aragog_jax.data.scorers import contains_answer, exact_match, normalize
from aragog_jax.errors import AragogError, DatasetError
from aragog_jax.label import main as label_main
from aragog_jax.serving import FakeEngine, LoopbackServer
from aragog_jax.space import build_space
from aragog_jax.spec import WorkflowSpec, family_pool, load_workflow, shipped_workflows
from aragog_jax.spec._load import check_workflow

from ..serving._fleetkit import CATALOG, FAN  # the shared two-model test catalog and fan-in workflow


CHAIN3 = """
name = "refine3"

[[stage]]
name = "generate"
input_tokens = 10
output_tokens = 8
prompt = "Answer: {input}"

[[stage]]
name = "critique"
upstream = ["generate"]
input_tokens = 20
output_tokens = 8
prompt = "Critique {generate} for {input}"

[[stage]]
name = "refine"
upstream = ["generate", "critique"]
input_tokens = 30
output_tokens = 8
prompt = "Refine {generate} with {critique} for {input}"
"""


@pytest.fixture
def tiny(tmp_path):
    from aragog_jax.spec import load_models

    (tmp_path / "models.toml").write_text(CATALOG)
    cat = load_models(tmp_path / "models.toml")
    (tmp_path / "refine3.toml").write_text(textwrap.dedent(CHAIN3))
    (tmp_path / "fan.toml").write_text(textwrap.dedent(FAN))
    return cat, tmp_path


def _space(cat, text):
    import msgspec

    wf = msgspec.toml.decode(textwrap.dedent(text).encode(), type=WorkflowSpec)
    check_workflow(wf, cat)
    return wf, build_space(wf, family_pool(cat, "t"))


def test_chain_of_three_stages_over_three_models_needs_39_calls_not_81(catalog):
    path = next(p for p in shipped_workflows() if "self_refine_squad" in str(p))
    space = build_space(load_workflow(path, catalog), family_pool(catalog, "qwen"))
    plan = make_plan(space)
    print(f"S=3 M=3: calls {plan.num_calls}, distinct prefixes {plan.num_prefixes}, naive {plan.num_naive}")
    assert (plan.num_calls, plan.num_prefixes, plan.num_naive) == (39, 39, 81)


def test_parallel_branches_share_more_than_prefixes(tiny):
    cat, _ = tiny
    _, space = _space(cat, FAN)
    plan = make_plan(space)
    # a: 2 calls, b: 2 (independent of a's model), join: 8; prefixes 2 + 4 + 8.
    assert (plan.num_calls, plan.num_prefixes, plan.num_naive) == (12, 14, 24)
    ups = plan.upstream_calls(space)
    join = space.stage_names.index("join")
    for k, (s, _) in enumerate(plan.call_keys):
        assert len(ups[k]) == (2 if s == join else 0)


def test_sample_is_seeded_and_keeps_c_max(tiny):
    cat, _ = tiny
    _, space = _space(cat, CHAIN3)
    a, b = sample_configs(space, 3, seed=5), sample_configs(space, 3, seed=5)
    assert np.array_equal(a, b) and a.size == 3 and space.c_max in a
    assert sample_configs(space, None, 0).size == space.num_configs == 8
    plan = make_plan(space, a)
    assert plan.num_calls <= plan.num_prefixes <= 3 * 3


def test_scorers():
    row = {"answer": "The Eiffel Tower"}
    assert normalize("  The  Eiffel, tower! ") == "eiffel tower"
    assert exact_match(row, "eiffel tower.") == 1.0 and exact_match(row, "the tower") == 0.0
    assert contains_answer(row, "It is the Eiffel Tower in Paris") == 1.0
    assert contains_answer({"answers": ["x", "paris"]}, "in Paris.") == 1.0
    assert contains_answer({"answers": ["aris"]}, "in Paris.") == 0.0  # whole words only
    with pytest.raises(DatasetError, match="answer"):
        exact_match({"id": 3}, "x")
    assert load_scorer("aragog_jax.data.scorers:exact_match") is exact_match
    for bad in ("nocolon", "/no/such/file.py:f", "no_such_module_xyz:f", "aragog_jax.data.scorers:nope"):
        with pytest.raises(AragogError, match="scorer"):
            load_scorer(bad)


def test_scorer_from_a_file(tmp_path):
    (tmp_path / "my_scorer.py").write_text("def score(row, out):\n    return 1.0 if row['answer'] in out else 0.0\n")
    fn = load_scorer(f"{tmp_path / 'my_scorer.py'}:score")
    assert fn({"answer": "a"}, "cat") == 1.0


def _write_rows(path, n, extra=None):
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"q{i}", "input": f"question number {i}", "answer": "x", **(extra or {})}) + "\n")
    return path


def test_load_inputs_splits_are_seeded_and_errors_name_the_line(tmp_path):
    p = _write_rows(tmp_path / "d.jsonl", 20)
    a = load_inputs(p, seed=3).rows
    b = load_inputs(p, seed=3).rows
    assert [r.split for r in a] == [r.split for r in b]
    assert {s: [r.split for r in a].count(s) for s in ("train", "calibration", "test")} == {"train": 12, "calibration": 4, "test": 4}
    given = _write_rows(tmp_path / "g.jsonl", 3, {"split": "test"})
    assert {r.split for r in load_inputs(given).rows} == {"test"}


def test_load_inputs_keeps_every_good_row_and_lists_the_bad_lines(tmp_path):
    """One malformed line refused the whole file; null and list texts were stringified."""
    lines = ['{"input": "a"}', '{"nope": 1}', "not json", "[1, 2]", '{"input": null}', '{"input": ["a", "b"]}',
             '{"input": 3}', '{"id": 7, "input": "b"}', '{"id": "7", "input": "c"}', '{"id": null, "input": "d"}', "",
             '{"text": "e"}']  # fmt: skip
    (tmp_path / "bad.jsonl").write_text("\n".join(lines) + "\n")
    got = load_inputs(tmp_path / "bad.jsonl")
    assert [(r.id, r.text, r.line) for r in got.rows] == [("1", "a", 1), ("7", "b", 8), ("12", "e", 12)]
    assert [b["line"] for b in got.bad] == [2, 3, 4, 5, 6, 7, 9, 10]
    reasons = {b["line"]: b["reason"] for b in got.bad}
    assert "no 'input' / 'text' / 'question' field" in reasons[2] and reasons[3].startswith("bad JSON")
    assert reasons[4] == "expected a JSON object, got list"
    assert reasons[5] == "input: expected a string, got null" and reasons[6] == "input: expected a string, got list"
    assert reasons[7] == "input: expected a string, got int"
    assert reasons[9] == "id: duplicate id '7' (first on line 8)" and reasons[10] == "id: expected a string or an integer, got null"
    with pytest.raises(DatasetError, match=r"no usable inputs: 2 bad lines \(line 1: input: expected a string, got null\)"):
        (tmp_path / "none.jsonl").write_text('{"input": null}\n{"x": 1}\n')
        load_inputs(tmp_path / "none.jsonl")


def _parity_scorer(row: dict, output: str) -> float:
    """Deterministic 0/1 from the fake engine's hash text."""
    return float(int(output[-1], 16) % 2)


async def _with_fakes(fn, small_mode="ok"):
    fakes = {"small": FakeEngine("small-served", mode=small_mode), "big": FakeEngine("big-served")}
    servers = {m: LoopbackServer(f.app) for m, f in fakes.items()}
    urls = {m: await s.start() for m, s in servers.items()}
    targets = [EngineTarget(f"e-{m}", m, urls[m], fakes[m].served) for m in fakes]
    try:
        return await fn(fakes, targets)
    finally:
        for s in servers.values():
            await s.stop()


def _requests(fakes) -> int:
    return sum(f.num_requests for f in fakes.values())


def test_labeller_calls_each_distinct_key_once_and_resumes(tiny, tmp_path):
    cat, _ = tiny
    wf, space = _space(cat, CHAIN3)
    inputs = load_inputs(_write_rows(tmp_path / "d.jsonl", 10), seed=0)
    out = tmp_path / "out"
    msgs: list[str] = []

    async def go(fakes, targets):
        lab = Labeller(wf, space, targets, inputs, _parity_scorer, out, LabelSettings(concurrency=3, progress_every_s=0.0),
                       family="t", progress=msgs.append)  # fmt: skip
        res = await lab.run()
        first = (res, _requests(fakes), max(f.max_in_flight for f in fakes.values()), (out / "scores.npy").read_bytes())
        # Rerun on the same engines: nothing recomputed, identical dataset.
        res2 = await Labeller(wf, space, targets, inputs, _parity_scorer, out, LabelSettings(), family="t").run()
        return first, (res2, _requests(fakes) - first[1])

    (res, num_requests, max_in_flight, before), (res2, num2) = asyncio.run(_with_fakes(go))
    assert res.plan.num_calls == res.plan.num_prefixes == 2 + 4 + 8
    assert num_requests == res.calls_made == 10 * 14 == res.calls_total  # not 10 * 8 * 3 = 240
    assert max_in_flight <= 3  # bounded concurrency
    assert any("calls 140/140" in m for m in msgs)
    ds = load_dataset(out, space)
    assert ds.meta["source"] == "labelled" and ds.num_inputs == 10
    assert set(np.unique(ds.scores)) <= {0.0, 1.0}
    assert np.load(out / "labelled.npy").all()
    assert ds.tokens.shape == (10, 3, 2) and (ds.tokens[:, :, 1] == 8).all()
    # The score is the scorer on the last stage's output, rendered the way serving renders it.
    fake = FakeEngine("big-served")
    gen = fake.text_for("Answer: question number 0")
    crit = fake.text_for(f"Critique {gen} for question number 0")
    final = fake.text_for(f"Refine {gen} with {crit} for question number 0")
    assert ds.scores[ds.ids.index("q0"), space.c_max] == _parity_scorer({}, final)
    assert num2 == 0 and res2.calls_made == 0 and res2.calls_cached == 140
    assert (out / "scores.npy").read_bytes() == before


def test_failures_are_recorded_per_input_and_configuration_then_retried(tiny, tmp_path):
    """failures.jsonl is the latest run's: empty once a rerun filled every failure (it kept
    the first run's 12 rows before)."""
    cat, _ = tiny
    wf, space = _space(cat, CHAIN3)
    inputs = load_inputs(_write_rows(tmp_path / "d.jsonl", 4), seed=0)
    out = tmp_path / "out"

    async def go(fakes, targets):
        def run():
            return Labeller(wf, space, targets, inputs, _parity_scorer, out, LabelSettings(concurrency=4), family="t").run()

        res = await run()
        failures = (out / "failures.jsonl").read_text().splitlines()
        fakes["small"].mode = "ok"  # the engine heals
        n0 = _requests(fakes)
        res2 = await run()
        return res, failures, res2, _requests(fakes) - n0

    res, failures, res2, num = asyncio.run(_with_fakes(go, small_mode="fail"))
    # Only c_max (big everywhere) survives; 7 configurations x 4 inputs fail, none is dropped.
    assert len(res.config_failures) == 7 * 4 and not res.dropped_inputs
    # Per input, small fails where its upstream succeeded: generate, critique after a big
    # generate, refine after big-big (3); what hangs below a failure is never sent.
    assert res.calls_failed == 4 * 3 == len(failures)
    assert num == res2.calls_made == 4 * 14 - 4 * 3  # everything but the cached big-only chain
    assert np.load(out / "labelled.npy").all() and not res2.config_failures
    assert (out / "failures.jsonl").read_text() == "" and (out / "config_failures.jsonl").read_text() == ""


def test_when_c_max_fails_everywhere_the_error_names_files_that_exist(tiny, tmp_path):
    cat, _ = tiny
    wf, space = _space(cat, CHAIN3)
    inputs = load_inputs(_write_rows(tmp_path / "d.jsonl", 2), seed=0)
    out = tmp_path / "out"

    async def go(fakes, targets):
        fakes["big"].mode = "fail"
        return await Labeller(wf, space, targets, inputs, _parity_scorer, out, LabelSettings(), family="t").run()

    with pytest.raises(AragogError, match="no input could be labelled") as err:
        asyncio.run(_with_fakes(go))
    named = re.findall(r"see (\S+) and (\S+)$", str(err.value))[0]
    assert [Path(p).name for p in named] == ["failures.jsonl", "config_failures.jsonl"]
    assert all(Path(p).is_file() and Path(p).read_text() for p in named)


def test_sampled_labelling_marks_only_the_sample(tiny, tmp_path):
    cat, _ = tiny
    wf, space = _space(cat, CHAIN3)
    inputs = load_inputs(_write_rows(tmp_path / "d.jsonl", 3), seed=0)

    async def go(fakes, targets):
        return await Labeller(wf, space, targets, inputs, _parity_scorer, tmp_path / "o", LabelSettings(sample=2, seed=1),
                              family="t").run()  # fmt: skip

    res = asyncio.run(_with_fakes(go))
    lab = np.load(tmp_path / "o" / "labelled.npy")
    assert (lab.sum(axis=1) == 2).all() and lab[:, space.c_max].all()
    assert res.dataset.meta["generator"]["labelled_configs"] == [int(c) for c in res.plan.config_ids]


PROFILE = """
model = "x"
hardware = "H"
tensor_parallel = 1
kind = "derived"
saturation_batch = 8
kv_capacity_tokens = 100000
prefill_tokens_per_s = 1000000.0
decode_base_s = 0.002
decode_per_seq_s = 0.0
decode_per_ctx_token_s = 0.0
curve = [[1, 500.0], [8, 4000.0]]
"""


def test_cli_on_emulated_fleet_and_resume(tiny, tmp_path, capsys):
    cat, d = tiny
    (d / "profile.toml").write_text(PROFILE)
    (d / "fleet.toml").write_text(textwrap.dedent("""
        family = "t"
        models = "models.toml"
        workflows = ["refine3.toml"]

        [[engine]]
        name = "s"
        model = "small"
        kind = "emulated"
        profile = "profile.toml"

        [[engine]]
        name = "b"
        model = "big"
        kind = "emulated"
        profile = "profile.toml"

        [server]
        time_scale = 20.0
    """))
    data = _write_rows(tmp_path / "d.jsonl", 6)
    argv = ["--workflow", str(d / "refine3.toml"), "--fleet", str(d / "fleet.toml"), "--dataset", str(data),
            "--scorer", "aragog_jax.data.scorers:contains_answer", "--out", str(tmp_path / "ds"), "--quiet"]  # fmt: skip
    assert label_main(argv) == 0
    out = capsys.readouterr().out
    assert "engine calls: 84 (per input 14); distinct prefixes 84 (per input 14); naive configurations x stages 144" in out
    rep = json.loads((tmp_path / "ds" / "label_report.json").read_text())
    assert rep["git_sha"] and rep["this_run"]["calls_made"] == 84
    assert label_main(argv) == 0
    assert "0 calls made, 84 cached" in capsys.readouterr().out
    # A different seed against the same directory is refused, as one line naming it ...
    code = run_cli(label_main, argv + ["--seed", "9"])
    err = capsys.readouterr().err
    assert code == 2 and "seed 0 -> 9" in err and "--update" in err and err.count("\n") == 1
    # ... and so is an edited dataset (it was not: 0 calls, old outputs kept).
    rows = data.read_text().splitlines()
    data.write_text("\n".join([rows[0].replace("number 0", "number zero"), *rows[1:]]) + "\n")
    code = run_cli(label_main, argv)
    err = capsys.readouterr().err
    assert code == 2 and "dataset (6 rows, sha256" in err and err.count("\n") == 1
    assert label_main(argv + ["--update"]) == 0  # only the edited row's calls
    assert "14 calls made, 70 cached" in capsys.readouterr().out
    assert label_main(argv + ["--restart"]) == 0  # everything
    assert "84 calls made, 0 cached" in capsys.readouterr().out
    assert json.loads((tmp_path / "ds" / "label_state.json").read_text())["options"]["seed"] == 0


def test_stage_functions_are_labelled_the_way_they_are_served(tiny, tmp_path):
    """A stage with ``function`` runs through the same runner as the server: one labelled
    call per distinct prefix, however many engine calls the function makes."""
    cat, _ = tiny
    (tmp_path / "stages.py").write_text(
        "async def critique_twice(stage, model, lm, state):\n"
        "    first = await lm(state.prompt)\n"
        "    return await lm('again ' + first)\n"
    )
    text = CHAIN3.replace(
        'prompt = "Critique {generate} for {input}"',
        f'prompt = "Critique {{generate}} for {{input}}"\nfunction = "{tmp_path / "stages.py"}:critique_twice"',
    )
    wf, space = _space(cat, text)
    inputs = load_inputs(_write_rows(tmp_path / "d.jsonl", 10), seed=0)

    async def go(fakes, targets):
        res = await Labeller(wf, space, targets, inputs, _parity_scorer, tmp_path / "out", LabelSettings(), family="t").run()
        return res, sum(f.num_requests for f in fakes.values())

    res, num_requests = asyncio.run(_with_fakes(go))
    assert res.calls_made == 10 * 14  # stage executions: the distinct prefixes
    assert num_requests == 10 * (2 + 4 * 2 + 8)  # the 4 critique executions per input call the engine twice
    ds = load_dataset(tmp_path / "out", space)
    fake = FakeEngine("big-served")
    gen = fake.text_for("Answer: question number 0")
    crit = fake.text_for("again " + fake.text_for(f"Critique {gen} for question number 0"))
    final = fake.text_for(f"Refine {gen} with {crit} for question number 0")
    assert ds.scores[ds.ids.index("q0"), space.c_max] == _parity_scorer({}, final)


def test_stage_function_cache_pin_follows_the_code_not_the_path(tiny, tmp_path):
    """A moved checkout keeps its call cache; an edited stage function starts a new one."""
    cat, _ = tiny
    inputs = load_inputs(_write_rows(tmp_path / "d.jsonl", 2), seed=0)
    out = tmp_path / "out"
    fn_src = "async def crit(stage, model, lm, state):\n    return await lm(state.prompt)\n"

    def labeller(where):
        where.mkdir(exist_ok=True)
        (where / "stages.py").write_text(fn_src)
        text = CHAIN3.replace('prompt = "Critique {generate} for {input}"',
                              f'prompt = "Critique {{generate}} for {{input}}"\nfunction = "{where / "stages.py"}:crit"')  # fmt: skip
        wf, space = _space(cat, text)
        return lambda targets: Labeller(wf, space, targets, inputs, _parity_scorer, out, LabelSettings(), family="t")

    async def go(fakes, targets):
        first = await labeller(tmp_path / "a")(targets).run()
        moved = await labeller(tmp_path / "b")(targets).run()  # same code, another directory
        nonlocal fn_src
        fn_src = fn_src.replace("state.prompt", "state.prompt + '!'")
        with pytest.raises(AragogError, match=r"stage 'critique' \(function\); rerun with --update") as err:
            await labeller(tmp_path / "c")(targets).run()
        return first, moved, str(err.value)

    first, moved, err = asyncio.run(_with_fakes(go))
    assert first.calls_made == 2 * 14 and moved.calls_made == 0 and moved.calls_cached == 2 * 14
    assert "\n" not in err
