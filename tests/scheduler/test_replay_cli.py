"""``python -m aragog_jax.schedule``: hand-written and random rounds, malformed input."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import numpy as np
import pytest

from aragog_jax.errors import SchedulerError
from aragog_jax.schedule import main
from aragog_jax.scheduler import make_policy
from aragog_jax.scheduler._random import random_replay
from aragog_jax.scheduler._replay import replay_round

# Fig. 9 as a round: 7B has 16 free slots and gains the most per sequence, 14B is full,
# 32B has 4 free slots.
FIG9 = {
    "engines": [
        {"name": "7B", "free_slots": 16, "load": 16, "curve": [[0, 0], [32, 3200]]},
        {"name": "14B", "free_slots": 0, "load": 16, "curve": [[0, 0], [16, 960]]},
        {"name": "32B", "free_slots": 4, "load": 4, "curve": [[0, 0], [8, 240]]},
    ],
    "requests": [
        {"id": "R1", "configs": [["7B"]], "ready": [0]},
        {"id": "R2", "configs": [["7B"], ["14B"]], "ready": [0]},
        {"id": "R3", "configs": [["7B"], ["14B"], ["32B"]], "ready": [0]},
    ],
}


def _run(argv, stdin=None):
    return subprocess.run(
        [sys.executable, "-m", "aragog_jax.schedule", *argv],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_fig9_round_by_hand(tmp_path, capsys):
    path = tmp_path / "round.json"
    path.write_text(json.dumps(FIG9))
    assert main([str(path)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["assignments"] == [
        {"request": "R1", "stage": 0, "engine": "7B"},
        {"request": "R2", "stage": 0, "engine": "7B"},
        {"request": "R3", "stage": 0, "engine": "7B"},
    ]
    assert out["skipped"] == []
    assert out["utilization"] == pytest.approx(300 / 4400)
    assert out["flexibility"] == pytest.approx((1 + 1 / 2 + 1 / 3) / 3)


def test_two_stage_request_with_model_names_and_replicas():
    doc = {
        "engines": [
            {"name": "a0", "model": "A", "free_slots": 1, "load": 0, "curve": [[1, 100], [4, 300]]},
            {"name": "a1", "model": "A", "free_slots": 1, "load": 3, "curve": [[1, 100], [4, 300]]},
            {"name": "b0", "model": "B", "free_slots": 0, "load": 4, "curve": [[1, 50], [4, 150]]},
        ],
        "requests": [
            {"id": 1, "configs": [["A", "A"], ["B", "A"]], "ready": [1, 0]},
            {"id": 2, "configs": [["b0"]], "ready": [0]},
        ],
    }
    out = replay_round(doc, make_policy("aragog"))
    # Stage 1 is considered first (ready order); a0 gains 100, a1 (load 3) only 33.
    assert out["assignments"] == [
        {"request": 1, "stage": 1, "engine": "a0"},
        {"request": 1, "stage": 0, "engine": "a1"},
    ]
    assert out["skipped"] == [{"request": 2, "stage": 0}]
    assert out["flexibility"] == pytest.approx(0.5)


@pytest.mark.parametrize("seed", range(12))
def test_random_rounds_obey_the_rules(seed):
    doc = random_replay(np.random.default_rng(seed), num_requests=8, total_free=6)
    out = replay_round(doc, make_policy("aragog"))
    engines = {e["name"]: e for e in doc["engines"]}
    used = {n: 0 for n in engines}
    for a in out["assignments"]:
        used[a["engine"]] += 1
    assert all(used[n] <= engines[n]["free_slots"] for n in engines)
    by_id = {r["id"]: r for r in doc["requests"]}
    placed = {(a["request"], a["stage"]): a["engine"] for a in out["assignments"]}
    for rid, req in by_id.items():
        # Every placed stage's model, jointly, is some listed configuration.
        chosen = {s: engines[placed[(rid, s)]]["model"] for s in req["ready"] if (rid, s) in placed}
        assert any(all(cfg[s] == m for s, m in chosen.items()) for cfg in req["configs"])
    assert len(out["assignments"]) + len(out["skipped"]) == sum(
        len(r["ready"]) for r in doc["requests"]
    )
    greedy = replay_round(doc, make_policy("greedy"))
    assert out["utilization"] >= greedy["utilization"] - 1e-9
    brute = replay_round(doc, make_policy("brute_force", brute_force_max_items=20))
    assert brute["utilization"] >= out["utilization"] - 1e-9


def test_cli_example_then_replay_via_stdin():
    ex = _run(["--example", "--seed", "5"])
    assert ex.returncode == 0, ex.stderr
    doc = json.loads(ex.stdout)
    res = _run(["-", "--policy", "greedy"], stdin=ex.stdout)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out == replay_round(doc, make_policy("greedy"))


def test_example_of_a_given_size_replays_with_brute_force(capsys):
    """The default example can exceed brute_force's 10 items; --example-items sizes it, and
    the refusal says what to do."""
    assert main(["--example", "--seed", "0"]) == 0
    big = capsys.readouterr().out
    assert sum(len(r["ready"]) for r in json.loads(big)["requests"]) > 10
    with pytest.raises(
        SchedulerError,
        match=r"at most 10 ready items .* got \d+: replay this round with the aragog policy",
    ):
        replay_round(json.loads(big), make_policy("brute_force"))
    for n in (1, 7, 10):
        assert main(["--example", "--seed", "3", "--example-items", str(n)]) == 0
        doc = json.loads(capsys.readouterr().out)
        assert sum(len(r["ready"]) for r in doc["requests"]) == n
        brute = replay_round(doc, make_policy("brute_force"))
        assert (
            brute["utilization"] >= replay_round(doc, make_policy("aragog"))["utilization"] - 1e-9
        )
    with pytest.raises(SchedulerError, match="--example-items: must be >= 1"):
        main(["--example", "--example-items", "0"])


def _broken(path: str, value):
    doc = copy.deepcopy(FIG9)
    target = doc
    keys = path.split(".")
    for k in keys[:-1]:
        target = target[int(k)] if k.isdigit() else target[k]
    last = keys[-1]
    if value is KeyError:
        del target[last]
    else:
        target[int(last) if last.isdigit() else last] = value
    return doc


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("engines", [], "engines: expected a non-empty list"),
        ("engines.0.free_slots", -2, "engines[0].free_slots: expected an integer >= 0"),
        ("engines.1.load", "x", "engines[1].load: expected an integer"),
        (
            "engines.2.curve",
            [[4, 1], [2, 3]],
            "engines[2].curve: concurrency must strictly increase",
        ),
        ("engines.0.curve", "fast", "engines[0].curve: expected [[concurrency, tokens/s], ...]"),
        ("engines.1.name", "7B", "engines[1].name: duplicate engine '7B'"),
        ("engines.0.speed", 3, "engines[0].speed: unknown field"),
        ("engines.0.name", KeyError, "engines[0].name: missing"),
        ("requests.1.configs", [], "requests[1].configs: expected a non-empty list"),
        ("requests.2.configs", [["7B"], ["14B", "7B"]], "requests[2].configs[1]: has 2 stages"),
        (
            "requests.2.configs",
            [["7B"], ["70B"]],
            "requests[2].configs[1][0]: unknown engine or model '70B'",
        ),
        ("requests.0.ready", [1], "requests[0].ready[0]: stage 1 outside 0..0"),
        ("requests.0.ready", [0, 0], "requests[0].ready[1]: stage 0 listed twice"),
        ("requests.1.id", "R1", "requests[1].id: duplicate request 'R1'"),
        ("requests.0.id", KeyError, "requests[0].id: missing"),
        ("requests", {}, "requests: expected a list"),
    ],
)
def test_malformed_rounds_name_the_field(path, value, message):
    with pytest.raises(SchedulerError) as info:
        replay_round(_broken(path, value), make_policy("aragog"))
    assert message in str(info.value)


def test_cli_malformed_input_is_one_line_and_exit_2(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(_broken("engines.0.free_slots", -2)))
    res = _run([str(bad)])
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0
    assert res.stderr.startswith("error: engines[0].free_slots:")
    bad.write_text("{not json")
    res = _run([str(bad)])
    assert res.returncode == 2 and "not JSON" in res.stderr
    res = _run([str(tmp_path / "missing.json")])
    assert res.returncode == 2 and "cannot read" in res.stderr
