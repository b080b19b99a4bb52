"""Labeller: configuration tree counts, calls on fake engines, resume, failures, sampling, CLI."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from aragog_jax._cli import run_cli
from aragog_jax.data import load_dataset
from aragog_jax.data._inputs import load_inputs, load_scorer
from aragog_jax.data._label import Labeller, LabelSettings
from aragog_jax.data._label_state import EngineTarget
from aragog_jax.data._plan import make_plan, sample_configs
from aragog_jax.data.scorers import contains_answer, exact_match, normalize
from aragog_jax.errors import AragogError, DatasetError
from aragog_jax.label import main as label_main
from aragog_jax.serving import FakeEngine, LoopbackServer
from aragog_jax.space import build_space
from aragog_jax.spec import WorkflowSpec, family_pool, load_workflow, shipped_workflows
from aragog_jax.spec._load import check_workflow

from ..serving._fleetkit import (
    CATALOG,
    FAN,
)  # the shared two-model test catalog and fan-in workflow

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
    print(
        f"S=3 M=3: calls {plan.num_calls}, distinct prefixes {plan.num_prefixes}, naive {plan.num_naive}"
    )
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
    for bad in (
        "nocolon",
        "/no/such/file.py:f",
        "no_such_module_xyz:f",
        "aragog_jax.data.scorers:nope",
    ):
        with pytest.raises(AragogError, match="scorer"):
            load_scorer(bad)


def test_scorer_from_a_file(tmp_path):
    (tmp_path / "my_scorer.py").write_text(
        "def score(row, out):\n    return 1.0 if row['answer'] in out else 0.0\n"
    )
    fn = load_scorer(f"{tmp_path / 'my_scorer.py'}:score")
    assert fn({"answer": "a"}, "cat") == 1.0


def _write_rows(path, n, extra=None):
    with open(path, "w") as f:
        for i in range(n):
            f.write(
                json.dumps(
                    {"id": f"q{i}", "input": f"question number {i}", "answer": "x", **(extra or {})}
                )
                + "\n"
            )
    return path


def test_load_inputs_splits_are_seeded_and_errors_name_the_line(tmp_path):
    p = _write_rows(tmp_path / "d.jsonl", 20)
    a = load_inputs(p, seed=3).rows
    b = load_inputs(p, seed=3).rows
    assert [r.split for r in a] == [r.split for r in b]
    assert {s: [r.split for r in a].count(s) for s in ("train", "calibration", "test")} == {
        "train": 12,
        "calibration": 4,
        "test": 4,
    }
    given = _write_rows(tmp_path / "g.jsonl", 3, {"split": "test"})
    assert {r.split for r in load_inputs(given).rows} == {"test"}


def test_load_inputs_keeps_every_good_row_and_lists_the_bad_lines(tmp_path):
    """One malformed line refused the whole file; null and list texts were stringified."""
    lines = [
        '{"input": "a"}',
        '{"nope": 1}',
        "not json",
        "[1, 2]",
        '{"input": null}',
        '{"input": ["a", "b"]}',
        '{"input": 3}',
        '{"id": 7, "input": "b"}',
        '{"id": "7", "input": "c"}',
        '{"id": null, "input": "d"}',
        "",
        '{"text": "e"}',
    ]
    (tmp_path / "bad.jsonl").write_text("\n".join(lines) + "\n")
    got = load_inputs(tmp_path / "bad.jsonl")
    assert [(r.id, r.text, r.line) for r in got.rows] == [
        ("1", "a", 1),
        ("7", "b", 8),
        ("12", "e", 12),
    ]
    assert [b["line"] for b in got.bad] == [2, 3, 4, 5, 6, 7, 9, 10]
    reasons = {b["line"]: b["reason"] for b in got.bad}
    assert "no 'input' / 'text' / 'question' field" in reasons[2] and reasons[3].startswith(
        "bad JSON"
    )
    assert reasons[4] == "expected a JSON object, got list"
    assert (
        reasons[5] == "input: expected a string, got null"
        and reasons[6] == "input: expected a string, got list"
    )
    assert reasons[7] == "input: expected a string, got int"
    assert (
        reasons[9] == "id: duplicate id '7' (first on line 8)"
        and reasons[10] == "id: expected a string or an integer, got null"
    )
    with pytest.raises(
        DatasetError,
        match=r"no usable inputs: 2 bad lines \(line 1: input: expected a string, got null\)",
    ):
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
        lab = Labeller(
            wf,
            space,
            targets,
            inputs,
            _parity_scorer,
            out,
            LabelSettings(concurrency=3, progress_every_s=0.0),
            family="t",
            progress=msgs.append,
        )
        res = await lab.run()
        first = (
            res,
            _requests(fakes),
            max(f.max_in_flight for f in fakes.values()),
            (out / "scores.npy").read_bytes(),
        )
        # Rerun on the same engines: nothing recomputed, identical dataset.
        res2 = await Labeller(
            wf, space, targets, inputs, _parity_scorer, out, LabelSettings(), family="t"
        ).run()
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
            return Labeller(
                wf,
                space,
                targets,
                inputs,
                _parity_scorer,
                out,
                LabelSettings(concurrency=4),
                family="t",
            ).run()

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
    assert (out / "failures.jsonl").read_text() == "" and (
        out / "config_failures.jsonl"
    ).read_text() == ""


def test_when_c_max_fails_everywhere_the_error_names_files_that_exist(tiny, tmp_path):
    cat, _ = tiny
    wf, space = _space(cat, CHAIN3)
    inputs = load_inputs(_write_rows(tmp_path / "d.jsonl", 2), seed=0)
    out = tmp_path / "out"

    async def go(fakes, targets):
        fakes["big"].mode = "fail"
        return await Labeller(
            wf, space, targets, inputs, _parity_scorer, out, LabelSettings(), family="t"
        ).run()

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
        return await Labeller(
            wf,
            space,
            targets,
            inputs,
            _parity_scorer,
            tmp_path / "o",
            LabelSettings(sample=2, seed=1),
            family="t",
        ).run()

    res = asyncio.run(_with_fakes(go))
    lab = np.load(tmp_path / "o" / "labelled.npy")
    assert (lab.sum(axis=1) == 2).all() and lab[:, space.c_max].all()
    assert res.dataset.meta["generator"]["labelled_configs"] == [
        int(c) for c in res.plan.config_ids
    ]


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


def _emulated_cli(d, tmp_path, num_rows: int = 6, out: str = "ds") -> tuple[list[str], Path]:
    """A label command line over a two-engine emulated fleet (refine3, ``num_rows`` inputs)."""
    (d / "profile.toml").write_text(PROFILE)
    (d / "fleet.toml").write_text(
        textwrap.dedent("""
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
    """)
    )
    data = _write_rows(tmp_path / "d.jsonl", num_rows)
    argv = [
        "--workflow",
        str(d / "refine3.toml"),
        "--fleet",
        str(d / "fleet.toml"),
        "--dataset",
        str(data),
        "--scorer",
        "aragog_jax.data.scorers:contains_answer",
        "--out",
        str(tmp_path / out),
        "--quiet",
    ]
    return argv, data


def test_cli_on_emulated_fleet_and_resume(tiny, tmp_path, capsys):
    _, d = tiny
    argv, data = _emulated_cli(d, tmp_path)
    assert label_main(argv) == 0
    out = capsys.readouterr().out
    assert (
        "engine calls: 84 (per input 14); distinct prefixes 84 (per input 14); naive configurations x stages 144"
        in out
    )
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
        res = await Labeller(
            wf,
            space,
            targets,
            inputs,
            _parity_scorer,
            tmp_path / "out",
            LabelSettings(),
            family="t",
        ).run()
        return res, sum(f.num_requests for f in fakes.values())

    res, num_requests = asyncio.run(_with_fakes(go))
    assert res.calls_made == 10 * 14  # stage executions: the distinct prefixes
    assert num_requests == 10 * (
        2 + 4 * 2 + 8
    )  # the 4 critique executions per input call the engine twice
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
        text = CHAIN3.replace(
            'prompt = "Critique {generate} for {input}"',
            f'prompt = "Critique {{generate}} for {{input}}"\nfunction = "{where / "stages.py"}:crit"',
        )
        wf, space = _space(cat, text)
        return lambda targets: Labeller(
            wf, space, targets, inputs, _parity_scorer, out, LabelSettings(), family="t"
        )

    async def go(fakes, targets):
        first = await labeller(tmp_path / "a")(targets).run()
        moved = await labeller(tmp_path / "b")(targets).run()  # same code, another directory
        nonlocal fn_src
        fn_src = fn_src.replace("state.prompt", "state.prompt + '!'")
        with pytest.raises(
            AragogError, match=r"stage 'critique' \(function\); rerun with --update"
        ) as err:
            await labeller(tmp_path / "c")(targets).run()
        return first, moved, str(err.value)

    first, moved, err = asyncio.run(_with_fakes(go))
    assert first.calls_made == 2 * 14 and moved.calls_made == 0 and moved.calls_cached == 2 * 14
    assert "\n" not in err


# -- a cache that never reuses a wrong answer -------------------------------------------------


async def _serve(fakes: dict[str, FakeEngine]) -> tuple[dict[str, str], list[LoopbackServer]]:
    servers = [LoopbackServer(f.app) for f in fakes.values()]
    urls = [await s.start() for s in servers]
    return dict(zip(fakes, urls, strict=True)), servers


def _dataset_files(out) -> dict[str, bytes]:
    return {
        n: (out / n).read_bytes()
        for n in ("meta.json", "inputs.jsonl", "scores.npy", "labelled.npy")
    }


def test_a_rerun_redoes_exactly_the_calls_an_edited_input_a_moved_engine_or_an_edited_stage_function_affect(
    tiny, tmp_path
):
    """One --out, four runs: each change redoes exactly the calls whose output it can
    change, counted at the fake engines, and the result equals a fresh labelling (the old
    cache, keyed by input id and call key, made 0 calls for the first two changes and
    refused the third)."""
    cat, _ = tiny
    stages = tmp_path / "stages.py"
    stages.write_text(
        "async def crit(stage, model, lm, state):\n    return await lm(state.prompt)\n"
    )
    wf_text = CHAIN3.replace(
        'prompt = "Critique {generate} for {input}"',
        f'prompt = "Critique {{generate}} for {{input}}"\nfunction = "{stages}:crit"',
    )
    data = _write_rows(tmp_path / "d.jsonl", 10)
    fakes = {
        "small-a": FakeEngine("small-served"),
        "small-b": FakeEngine("small-served"),
        "big": FakeEngine("big-served"),
    }
    out = tmp_path / "out"

    async def go():
        urls, servers = await _serve(fakes)
        try:

            async def run(small: str, where=out, on_change: str = "update") -> tuple:
                wf, space = _space(cat, wf_text)  # re-imports stages.py
                targets = [
                    EngineTarget("e-small", "small", urls[small], "small-served"),
                    EngineTarget("e-big", "big", urls["big"], "big-served"),
                ]
                before = [f.num_requests for f in fakes.values()]
                res = await Labeller(
                    wf,
                    space,
                    targets,
                    load_inputs(data),
                    _parity_scorer,
                    where,
                    LabelSettings(on_change=on_change),
                    family="t",
                ).run()
                return (
                    res.calls_made,
                    res.calls_cached,
                    tuple(f.num_requests - b for f, b in zip(fakes.values(), before, strict=True)),
                )

            steps = [await run("small-a")]
            rows = data.read_text().splitlines()  # 1. edit one input's text
            data.write_text(
                "\n".join([*rows[:3], rows[3].replace("number 3", "number three"), *rows[4:]])
                + "\n"
            )
            steps.append(await run("small-a"))
            with pytest.raises(
                AragogError,
                match=re.escape(f"engine 'e-small' url {urls['small-a']} -> {urls['small-b']};"),
            ):
                await run(
                    "small-b", on_change="refuse"
                )  # 2. the small model's engine moves: refused by default
            steps.append(await run("small-b"))
            stages.write_text(
                stages.read_text().replace("state.prompt", "state.prompt + '!'")
            )  # 3. edit the function
            steps.append(await run("small-b"))
            steps.append(await run("small-b"))  # nothing changed
            await run("small-b", tmp_path / "fresh")
            return steps
        finally:
            for s in servers:
                await s.stop()

    steps = asyncio.run(go())
    # Per input 14 calls: generate 1 small + 1 big, critique 2 + 2, refine 4 + 4.
    assert steps[0] == (140, 0, (70, 0, 70))
    assert steps[1] == (14, 126, (7, 0, 7))  # the edited input's calls only
    # The small engine's calls only; big calls after them get the same text, so they are kept.
    assert steps[2] == (70, 70, (0, 70, 0))
    # critique (4 per input) and refine (8, its input changed) are redone; generate (2) is kept.
    assert steps[3] == (120, 20, (0, 60, 60))
    assert steps[4] == (0, 140, (0, 0, 0))
    assert _dataset_files(out) == _dataset_files(tmp_path / "fresh")


def _answer_scorer(row: dict, output: str) -> float:
    return float(output == row["answer"])


def test_removing_the_first_line_keeps_every_answer_with_its_own_input(tiny, tmp_path):
    """Ids default to line numbers: removing line 1 shifted every id, and the old cache
    (keyed by id) gave each input its neighbour's outputs (c_max accuracy 100% -> 0% with
    0 calls). Keyed by content, the rerun makes no call and labels like a fresh directory."""
    cat, _ = tiny
    wf, space = _space(cat, CHAIN3)
    big = FakeEngine("big-served")
    with open(tmp_path / "d.jsonl", "w") as f:
        for i in range(8):
            q = f"question number {i}"
            gen = big.text_for(f"Answer: {q}")
            final = big.text_for(
                f"Refine {gen} with {big.text_for(f'Critique {gen} for {q}')} for {q}"
            )
            f.write(
                json.dumps({"input": q, "answer": final}) + "\n"
            )  # c_max is right on every input

    async def go(fakes, targets):
        def run(where, on_change="refuse"):
            return Labeller(
                wf,
                space,
                targets,
                load_inputs(tmp_path / "d.jsonl"),
                _answer_scorer,
                where,
                LabelSettings(on_change=on_change),
                family="t",
            ).run()

        first = await run(tmp_path / "out")
        lines = (tmp_path / "d.jsonl").read_text().splitlines(keepends=True)
        (tmp_path / "d.jsonl").write_text("".join(lines[1:]))
        with pytest.raises(AragogError, match=r"dataset \(8 rows, sha256 \w+ -> 7 rows"):
            await run(tmp_path / "out")
        return first, await run(tmp_path / "out", "update"), await run(tmp_path / "fresh")

    first, second, fresh = asyncio.run(_with_fakes(go))
    assert first.dataset.scores[:, space.c_max].mean() == 1.0
    assert second.calls_made == 0 and second.calls_cached == 7 * 14
    assert second.dataset.ids == [str(i) for i in range(1, 8)]  # line numbers of the new file
    assert second.dataset.scores[:, space.c_max].mean() == 1.0
    assert _dataset_files(tmp_path / "out") == _dataset_files(tmp_path / "fresh")


# -- kills, locks, torn logs --------------------------------------------------------------------

# Runs the label CLI and SIGKILLs itself just before its first write into a file whose
# name contains argv[1] (the file is open, maybe truncated, nothing written): the instant
# a kill does the most damage, hit deterministically instead of by timing.
KILL_AT_FIRST_WRITE = """
import os, signal, sys, threading
import aragog_jax.data._label, aragog_jax.serving, aragog_jax.space, aragog_jax.spec  # not profiled
from aragog_jax.label import main
target = sys.argv[1]

def hook(frame, event, arg):
    if event == "c_call" and getattr(arg, "__name__", "") == "write":
        name = getattr(getattr(arg, "__self__", None), "name", "")
        if isinstance(name, str) and target in os.path.basename(name):
            os.kill(os.getpid(), signal.SIGKILL)

sys.setprofile(hook)
threading.setprofile(hook)
sys.exit(main(sys.argv[2:]))
"""


def _label_killed_at_first_write_to(name: str, argv: list[str]) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", KILL_AT_FIRST_WRITE, name, *argv],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == -signal.SIGKILL, (
        f"not killed at {name}: rc {proc.returncode}\n{proc.stderr[-3000:]}"
    )


def test_a_kill_at_start_up_leaves_a_resumable_directory(tiny, tmp_path):
    """Killed while writing label_state.json: it was left empty and every rerun died with a
    JSONDecodeError traceback."""
    _, d = tiny
    argv, _ = _emulated_cli(d, tmp_path, num_rows=2)
    _label_killed_at_first_write_to("label_state.json", argv)
    assert run_cli(label_main, argv) == 0
    assert (
        json.loads((tmp_path / "ds" / "label_report.json").read_text())["this_run"]["calls_made"]
        == 2 * 14
    )


def test_a_kill_while_writing_the_scores_leaves_train_a_one_line_error_and_the_rerun_finishes(
    tiny, tmp_path, capsys
):
    """Killed while writing scores.npy: it was left empty next to a complete-looking
    meta.json, and train died with an EOFError traceback."""
    cat, d = tiny
    argv, _ = _emulated_cli(d, tmp_path, num_rows=2)
    _label_killed_at_first_write_to("scores.npy", argv)
    from aragog_jax.train import main as train_main

    out = tmp_path / "ds"
    code = run_cli(
        train_main,
        [
            "--workflow",
            str(d / "refine3.toml"),
            "--models",
            str(d / "models.toml"),
            "--family",
            "t",
            "--dataset",
            str(out),
            "--out",
            str(tmp_path / "r.npz"),
            "--quiet",
        ],
    )
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "incomplete accuracy dataset" in err, err
    assert run_cli(label_main, argv) == 0
    assert (
        json.loads((out / "label_report.json").read_text())["this_run"]["calls_made"] == 0
    )  # all calls were cached
    _, space = _space(cat, CHAIN3)
    assert load_dataset(out, space).num_inputs == 2


def test_a_second_run_on_one_out_is_refused_and_a_killed_holder_does_not_block(
    tiny, tmp_path, capsys
):
    """Two runs on one --out made every call twice and duplicated the cache rows."""
    _, d = tiny
    argv, _ = _emulated_cli(d, tmp_path)
    out = tmp_path / "ds"
    # The holder's emulated engines run 1000x slower than the profile: ~16 s per call.
    holder = subprocess.Popen(
        [sys.executable, "-m", "aragog_jax.label", *argv, "--time-scale", "0.001"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while not (out / "label_state.json").exists():
            assert holder.poll() is None, holder.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the holder did not start labelling within 120 s"
            time.sleep(0.1)
        code = run_cli(label_main, argv)
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1, err
        assert f"another label run is using it (pid {holder.pid} on " in err and "label.lock" in err
    finally:
        holder.kill()
        holder.wait(timeout=30)
        holder.stderr.close()
    assert (
        json.loads((out / "label.lock").read_text())["pid"] == holder.pid
    )  # stale, and not in the way:
    assert run_cli(label_main, argv) == 0
    rep = json.loads((out / "label_report.json").read_text())["this_run"]
    assert rep["calls_made"] + rep["calls_cached"] == 6 * 14
    assert (out / "label.lock").read_text() == ""  # released


def test_a_torn_last_line_of_the_call_log_costs_one_call_once(tiny, tmp_path):
    """A record torn by a kill swallowed the next run's first record, so its call was redone
    on every rerun."""
    cat, _ = tiny
    wf, space = _space(cat, CHAIN3)
    inputs = load_inputs(_write_rows(tmp_path / "d.jsonl", 3), seed=0)
    log = tmp_path / "out" / "calls.jsonl"

    async def go(fakes, targets):
        made = []
        for i in range(3):
            res = await Labeller(
                wf,
                space,
                targets,
                inputs,
                _parity_scorer,
                tmp_path / "out",
                LabelSettings(concurrency=1),
                family="t",
            ).run()
            made.append(res.calls_made)
            if i == 0:
                log.write_bytes(log.read_bytes()[:-20])  # the last record, torn mid-write
        return made

    assert asyncio.run(_with_fakes(go)) == [3 * 14, 1, 0]
    lines = log.read_text().splitlines()
    assert len(lines) == 3 * 14 and all(json.loads(x)["digest"] for x in lines)


def _one_arg_scorer(row):
    return 1.0


def _str_scorer(row, output):
    return "1"


def _nan_scorer(row, output):
    return float("nan")


@pytest.mark.parametrize(
    ("scorer", "says"),
    [
        (
            _one_arg_scorer,
            "cannot be called as scorer(input_row, output_text): too many positional arguments",
        ),
        (_str_scorer, "scorer returned str '1', expected a number in [0, 1]"),
        (_nan_scorer, "scorer returned nan, not in [0, 1]"),
    ],
)
def test_a_scorer_that_cannot_score_is_refused_before_any_engine_call(tiny, tmp_path, scorer, says):
    """Found only after every engine call (or never: "1" was taken as 1.0)."""
    cat, _ = tiny
    wf, space = _space(cat, CHAIN3)
    inputs = load_inputs(_write_rows(tmp_path / "d.jsonl", 3), seed=0)

    async def go(fakes, targets):
        try:
            await Labeller(
                wf, space, targets, inputs, scorer, tmp_path / "out", LabelSettings(), family="t"
            ).run()
        finally:
            assert _requests(fakes) == 0

    with pytest.raises(AragogError, match=re.escape(says)):
        asyncio.run(_with_fakes(go))


def test_cli_labels_every_good_row_lists_the_bad_ones_and_exits_1(tiny, tmp_path, capsys):
    _, d = tiny
    argv, data = _emulated_cli(d, tmp_path, num_rows=4)
    rows = data.read_text().splitlines()
    data.write_text(
        "\n".join(
            [
                rows[0],
                '{"id": "n", "input": null}',
                rows[1],
                "{oops",
                rows[2],
                '{"input": ["a"]}',
                rows[3],
            ]
        )
        + "\n"
    )
    assert run_cli(label_main, argv) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[:3] == [
        f"{data}:2: input: expected a string, got null",
        f"{data}:4: bad JSON: Expecting property name "
        "enclosed in double quotes: line 1 column 2 (char 1)",
        f"{data}:6: input: expected a string, got list",
    ]
    assert err[3].startswith("error: 3 bad dataset lines (see ") and err[3].endswith(
        "4 valid inputs were labelled"
    )
    out = tmp_path / "ds"
    assert [
        json.loads(x)["line"] for x in (out / "input_errors.jsonl").read_text().splitlines()
    ] == [2, 4, 6]
    assert json.loads((out / "label_report.json").read_text())["this_run"]["calls_made"] == 4 * 14
    assert [json.loads(x)["id"] for x in (out / "inputs.jsonl").read_text().splitlines()] == [
        "q0",
        "q1",
        "q2",
        "q3",
    ]
