"""The scheduler's row tables: compaction after requests leave, and several workflows.

Compaction: the scheduler hands every request the next row of its tables and compacts
them (live rows to the front, in order) when a request arrives and the tables are full;
``MIN_ROWS`` (256) is the smallest capacity. The tests drive requests through add /
schedule / finish / fail / cancel and check after every step that the scheduler behaves
exactly like a *fresh* scheduler that holds only the live requests: the fresh one is
rebuilt by replaying the live requests' own history (their rounds forced through a
scripted policy), so it never saw a request that left and never compacted. Compared:
FIFO order, ready items in round order, viable masks, stage status, committed models,
and the plan of the same load. Viable masks are also checked against an independent
oracle (admitted mask, narrowed by committed models, minus failed (stage, model)).

Several workflows: requests of two or three spaces (toy spaces and the shipped
workflows over two model families) share the FIFO queue; a space attached later widens
the tables (more stages, a larger configuration bucket). Plans are checked against the
NumPy twin of the round, the round's replay document and the replay CLI.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Hashable, Sequence

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings, target
from hypothesis import strategies as st

from aragog_jax.errors import NoViableConfigurationError
from aragog_jax.kernels import BeamResult
from aragog_jax.schedule import main as schedule_main
from aragog_jax.scheduler import LoadVector, Plan, Scheduler, make_policy
from aragog_jax.scheduler import _tables as tables_module
from aragog_jax.scheduler._replay import replay_round
from aragog_jax.space import ConfigSpace, load_space

from ._kit import TwinPolicy, engines, expected_order, mask_where, ready_items, space

FLEET = engines(
    {
        "e7": ("7B", 100.0, 3),
        "e7b": ("7B", 80.0, 2),
        "e14": ("14B", 60.0, 2),
        "e32": ("32B", 30.0, 2),
    }
)
ENGINE_INDEX = {e.name: i for i, e in enumerate(FLEET)}
# Three toy spaces with different stage counts and configuration buckets (3, 9, 81
# configurations; 1, 2, 4 stages), so that lazily attaching them widens the tables.
ONE = space([("answer", ())], name="one")
CHAIN = space([("draft", ()), ("polish", ("draft",))], name="chain")
FANOUT = space(
    [("plan", ()), ("s1", ("plan",)), ("s2", ("plan",)), ("agg", ("s1", "s2"))], name="fanout"
)
TOY_SPACES = (ONE, CHAIN, FANOUT)
SMALL_ROWS = 2  # MIN_ROWS while the subject scheduler runs: the 3rd arrival compacts


def _random_mask(sp: ConfigSpace, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mask = rng.random(sp.num_configs) < 0.5
    mask[rng.integers(sp.num_configs)] = True
    return mask


def _load(running: Sequence[int]) -> LoadVector:
    return LoadVector.observe(
        FLEET, {e.name: {"running": int(r)} for e, r in zip(FLEET, running, strict=True)}
    )


def _plan_key(plan: Plan) -> tuple:
    return (plan.assignments, plan.skipped, plan.utilization, plan.flexibility)


def _placed_key(plan: Plan) -> tuple:
    """``_plan_key`` without ``skipped`` (built on first access)."""
    return (plan.assignments, plan.utilization, plan.flexibility)


class ScriptedPolicy:
    """Delegates to ``inner``, except that while ``script`` is set it answers with those
    engines (one per item of the round): used to force a replayed round's commits."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.name = inner.name
        self.script: np.ndarray | None = None

    def admit(self, sp, mask):
        return self.inner.admit(sp, mask)

    def assign(self, arrays):
        if self.script is None:
            return self.inner.assign(arrays)
        assert arrays.num_items == self.script.size  # the forced round's items are all placeable
        engine = np.full(arrays.item_valid.shape[0], -1, dtype=np.int32)
        engine[: self.script.size] = self.script
        return BeamResult(
            engine=engine,
            utility=np.int32(0),
            flex=np.int32(0),
            num_steps=np.int32(self.script.size),
        )


class Harness:
    """Drives one scheduler (the subject) and checks it against fresh rebuilds.

    Every request incarnation has a key ``(request id, generation)``: a cancelled or
    failed id may be added again, and only the latest incarnation is live.
    """

    def __init__(self, policy: str = "aragog", small_rows: int | None = None) -> None:
        self.policy = policy
        self.small_rows = small_rows
        self.compactions = 0
        self.dropped_rows = 0
        with self._subject():
            self.sched = Scheduler(FLEET, policy)
        self.log: list[tuple] = []
        self.add_at: dict[tuple, int] = {}  # key -> position of its "add" in the log
        self.live: dict[Hashable, tuple] = {}  # request id -> key, FIFO order
        self.space_of: dict[Hashable, ConfigSpace] = {}
        self.oracle: dict[
            tuple, dict
        ] = {}  # key -> admitted mask, committed models, excluded pairs
        self.running: list[tuple[Hashable, int, str]] = []  # (request id, stage, engine)
        self.reusable: list[Hashable] = []  # cancelled / failed ids
        self.num_ids = 0
        self.fresh: Scheduler | None = None
        self.recent: list[
            tuple[Plan, dict, tuple]
        ] = []  # last plans, their replay document and skipped

    @contextlib.contextmanager
    def _subject(self):
        """Small tables (when asked) and a compaction counter while the subject runs."""
        original = tables_module.RowTables.compact
        harness = self

        def counting(tables: tables_module.RowTables, live) -> None:
            if tables is harness.sched.tables:
                harness.compactions += 1
                harness.dropped_rows += tables.num_rows - harness.sched.num_in_flight
            original(tables, live)

        with pytest.MonkeyPatch.context() as mp:
            if self.small_rows is not None:
                mp.setattr(tables_module, "MIN_ROWS", self.small_rows)
            mp.setattr(tables_module.RowTables, "compact", counting)
            yield

    # ---- operations ------------------------------------------------------------------

    def add(self, sp: ConfigSpace, mask: np.ndarray, reuse: bool = False) -> Hashable:
        if reuse and self.reusable:
            rid = self.reusable.pop(0)
        else:
            # Descending ids: sorting by id anywhere would reverse the FIFO order.
            rid = f"r{999_999 - self.num_ids}"
            self.num_ids += 1
        key = (rid, len(self.log))
        with self._subject():
            self.sched.add_request(rid, sp, mask)
        self.add_at[key] = len(self.log)
        self.log.append(("add", key, sp, mask))
        self.live[rid] = key
        self.space_of[rid] = sp
        self.oracle[key] = {
            "mask": mask.copy(),
            "committed": {},
            "excluded": set(),
            "finished": set(),
        }
        self._check()
        return rid

    def schedule(self, load: LoadVector) -> Plan:
        assert self.fresh is not None
        fresh_plan = self.fresh.schedule(load)  # a scheduler that only ever held the live requests
        with self._subject():
            plan = self.sched.schedule(load)
        assert _placed_key(plan) == _placed_key(fresh_plan)
        commits: dict[tuple, list] = {}
        for a in plan.assignments:
            key = self.live[a.request_id]
            commits.setdefault(key, []).append((a.stage, a.engine))
            self.oracle[key]["committed"][a.stage] = a.model
            self.running.append((a.request_id, a.stage, a.engine))
        self.log.append(("round", commits))
        # The plan's skipped list is first read at the next step's check, after that
        # step's compaction if any: the round record must not depend on the tables.
        self.recent = [*self.recent[-2:], (plan, plan.to_replay(), fresh_plan.skipped)]
        self._check()
        return plan

    def finish(self, pick: int) -> None:
        if not self.running:
            return
        rid, stage, engine = self.running.pop(pick % len(self.running))
        key = self.live[rid]
        with self._subject():
            done = self.sched.on_stage_finished(rid, stage)
        self.log.append(("finish", key, stage))
        self.oracle[key]["finished"].add(stage)
        assert done == (len(self.oracle[key]["finished"]) == self.space_of[rid].num_stages)
        if done:
            del self.live[rid]
            assert self.sched.is_done(rid)
        self._check()

    def fail(self, pick: int) -> None:
        if not self.running:
            return
        rid, stage, engine = self.running.pop(pick % len(self.running))
        key = self.live[rid]
        o = self.oracle[key]
        model = FLEET[ENGINE_INDEX[engine]].model
        del o["committed"][stage]
        o["excluded"].add((stage, model))
        self.log.append(("fail", key, stage, engine))
        try:
            with self._subject():
                self.sched.on_stage_failed(rid, stage, engine)
        except NoViableConfigurationError:
            assert not self._oracle_viable(key).any()
            self._leave(rid)
        else:
            assert self._oracle_viable(key).any()
        self._check()

    def cancel(self, pick: int) -> None:
        if not self.live:
            return
        rid = list(self.live)[pick % len(self.live)]
        with self._subject():
            self.sched.cancel(rid)
        self.log.append(("cancel", self.live[rid]))
        self._leave(rid)
        self._check()

    def _leave(self, rid: Hashable) -> None:
        del self.live[rid]
        self.running = [r for r in self.running if r[0] != rid]
        self.reusable.append(rid)

    # ---- the independent oracle --------------------------------------------------------

    def _oracle_viable(self, key: tuple) -> np.ndarray:
        o = self.oracle[key]
        sp = self.space_of[key[0]]
        viable = o["mask"].copy()
        for s, m in o["committed"].items():
            viable &= sp.configs[:, s] == sp.model_names.index(m)
        for s, m in o["excluded"]:
            viable &= sp.configs[:, s] != sp.model_names.index(m)
        return viable

    # ---- the fresh scheduler -----------------------------------------------------------

    def rebuild(self) -> Scheduler:
        """A scheduler that holds only the live requests, in the same state: replays
        their adds, finishes and failures, and forces their commits of every round."""
        keys = set(self.live.values())
        fresh = Scheduler(FLEET, ScriptedPolicy(make_policy(self.policy)))
        if not keys:
            return fresh
        for ev in self.log[min(self.add_at[k] for k in keys) :]:
            kind = ev[0]
            if kind == "add" and ev[1] in keys:
                fresh.add_request(ev[1][0], ev[2], ev[3])
            elif kind == "round":
                commits = {
                    (k[0], s): e for k, pairs in ev[1].items() if k in keys for s, e in pairs
                }
                if commits:
                    _force(fresh, commits)
            elif kind == "finish" and ev[1] in keys:
                fresh.on_stage_finished(ev[1][0], ev[2])
            elif kind == "fail" and ev[1] in keys:
                fresh.on_stage_failed(ev[1][0], ev[2], ev[3])
        return fresh

    def _check(self) -> None:
        """The subject is indistinguishable from a fresh scheduler of the live requests."""
        sched = self.sched
        fresh = self.fresh = self.rebuild()
        assert list(sched.request_ids()) == list(self.live) == list(fresh.request_ids())
        assert sched.num_in_flight == fresh.num_in_flight == len(self.live)
        assert sched.num_ready == fresh.num_ready
        for rid, key in self.live.items():
            viable = sched.viable_mask(rid)
            assert viable.shape == (self.space_of[rid].num_configs,)
            np.testing.assert_array_equal(viable, fresh.viable_mask(rid))
            np.testing.assert_array_equal(viable, self._oracle_viable(key))
            assert sched.stage_status(rid) == fresh.stage_status(rid)
            assert sched.realised_config(rid) == fresh.realised_config(rid)
        with self._subject():
            items = ready_items(sched, FLEET)
        assert items == ready_items(fresh, FLEET) == expected_order(sched, self.space_of)
        assert len(items) == sched.num_ready
        # A plan renders its round the same way however the tables moved since.
        for k, (plan, doc, skipped) in enumerate(self.recent):
            assert plan.to_replay() == doc
            if k < len(self.recent) - 1:
                assert plan.skipped == skipped


def _force(fresh: Scheduler, commits: dict[tuple, str]) -> None:
    """Commit exactly ``commits`` ((request id, stage) -> engine) in one round."""
    order = ready_items(fresh, FLEET)
    fresh.policy.script = np.array(
        [ENGINE_INDEX.get(commits.get(it), -1) for it in order], dtype=np.int32
    )
    try:
        plan = fresh.schedule(LoadVector.idle(FLEET))
    finally:
        fresh.policy.script = None
    assert {(a.request_id, a.stage): a.engine for a in plan.assignments} == commits


# ---- compaction ------------------------------------------------------------------------

_ADD = st.tuples(st.just("add"), st.sampled_from(TOY_SPACES), st.integers(0, 2**16), st.booleans())
_OPS = st.lists(
    st.one_of(
        _ADD,
        _ADD,  # arrivals twice as likely: rows run out and compaction happens
        st.tuples(
            st.just("schedule"), st.tuples(*(st.integers(0, e.saturation_batch) for e in FLEET))
        ),
        st.tuples(st.just("finish"), st.integers(0, 63)),
        st.tuples(st.just("finish_all"), st.just(0)),
        st.tuples(st.just("fail"), st.integers(0, 63)),
        st.tuples(st.just("cancel"), st.integers(0, 63)),
    ),
    min_size=10,
    max_size=50,
)


def _apply(h: Harness, op: tuple) -> None:
    kind = op[0]
    if kind == "add":
        h.add(op[1], _random_mask(op[1], op[2]), reuse=op[3])
    elif kind == "schedule":
        h.schedule(_load(op[1]))
    elif kind == "finish":
        h.finish(op[1])
    elif kind == "finish_all":
        while h.running:
            h.finish(0)
    elif kind == "fail":
        h.fail(op[1])
    else:
        h.cancel(op[1])


@settings(
    max_examples=50,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(ops=_OPS)
def test_random_interleavings_match_a_fresh_scheduler_of_the_live_requests(ops):
    h = Harness(small_rows=SMALL_ROWS)
    for op in [("add", ONE, 0, False), *ops]:
        _apply(h, op)
    # Drain: everything still queued runs to completion, still matching a fresh scheduler.
    for _ in range(40):
        if not h.live:
            break
        h.schedule(LoadVector.idle(FLEET))
        while h.running:
            h.finish(0)
    assert not h.live and h.sched.num_in_flight == 0 and h.sched.num_ready == 0
    event(f"compactions: {min(h.compactions, 5)}+")
    target(float(h.dropped_rows), label="rows dropped by compaction")


def test_compaction_at_the_real_threshold_several_times():
    """Real table sizes (256 rows): 1,100 arrivals with a few live requests at a time
    cross the threshold four times; every step matches a fresh scheduler."""
    h = Harness()
    rng = np.random.default_rng(7)
    sats = [e.saturation_batch for e in FLEET]
    for step in range(1100):
        sp = TOY_SPACES[step % 3] if step % 5 else FANOUT
        h.add(sp, _random_mask(sp, step), reuse=step % 11 == 0)
        # Partly busy engines: some items wait for a later round (skipped, FIFO kept).
        h.schedule(_load([int(rng.integers(0, s + 1)) for s in sats]))
        roll = rng.random()
        if roll < 0.05 and h.live:
            h.cancel(int(rng.integers(64)))
        elif roll < 0.10 and h.running:
            h.fail(int(rng.integers(64)))
        while len(h.running) > 1:
            h.finish(int(rng.integers(64)))
    assert h.compactions >= 4
    assert h.dropped_rows >= 4 * 200  # most of each full table was dead rows


# ---- several workflows -----------------------------------------------------------------

QWEN = ("Qwen2.5-7B-Instruct", "Qwen2.5-14B-Instruct", "Qwen2.5-32B-Instruct")
LLAMA = ("Llama-3.2-3B-Instruct", "Llama-3.1-8B-Instruct", "Llama-3.1-70B-Instruct")
MIXED_FLEET = engines(
    {
        "q7": (QWEN[0], 100.0, 3),
        "q7b": (QWEN[0], 90.0, 2),
        "q14": (QWEN[1], 60.0, 2),
        "q32": (QWEN[2], 30.0, 2),
        "l3": (LLAMA[0], 120.0, 2),
        "l8": (LLAMA[1], 80.0, 3),
        "l70": (LLAMA[2], 20.0, 2),
    }
)


@pytest.fixture(scope="module")
def shipped():
    """Three shipped workflows over two families: 3 / 4 / 5 stages, 27 / 81 / 243
    configurations (configuration buckets 32 / 128 / 256)."""
    return (
        load_space("self_refine_humaneval", "qwen"),
        load_space("text_to_sql_bird", "qwen"),
        load_space("voting_mmlu_pro", "llama"),
    )


def _mixed_load(rng: np.random.Generator) -> LoadVector:
    return LoadVector.observe(
        MIXED_FLEET,
        {e.name: {"running": int(rng.integers(0, e.saturation_batch + 1))} for e in MIXED_FLEET},
    )


def _check_own_space(sched: Scheduler, plan: Plan, space_of: dict, fleet) -> None:
    """Every assignment uses a model of its request's space that its stage allows, on an
    engine serving it, and keeps a configuration of that space viable."""
    model_of = {e.name: e.model for e in fleet}
    for a in plan.assignments:
        sp = space_of[a.request_id]
        assert a.stage_name == sp.stage_names[a.stage]
        assert a.model in sp.model_names and model_of[a.engine] == a.model
        assert sp.model_names.index(a.model) in sp.candidates[a.stage]
        viable = sched.viable_mask(a.request_id)
        assert viable.shape == (sp.num_configs,) and viable.any()
        ids = [sp.model_names.index(m) for m in sched.realised_config(a.request_id).values()]
        stages = [sp.stage_names.index(n) for n in sched.realised_config(a.request_id)]
        assert (sp.configs[viable][:, stages] == ids).all()


def test_shipped_workflows_of_two_families_share_the_queue(shipped, tmp_path, capsys):
    """Requests of three workflows (two model families) interleave in one FIFO queue:
    each uses only its own space, and every round equals the NumPy twin's (on a scheduler
    that registered the spaces up front), the replay of its document and the replay CLI."""
    rng = np.random.default_rng(11)
    jitted = Scheduler(MIXED_FLEET, "aragog")  # attaches the spaces as requests arrive
    twin = Scheduler(MIXED_FLEET, TwinPolicy(4), spaces=list(shipped)[::-1])
    space_of, masks, running = {}, {}, []
    workflows_in_a_round, cli_checked = 0, False
    for step in range(60):
        if step < 12:  # interleaved arrivals: humaneval, voting (llama), sql, ...
            sp = shipped[(step * 2) % 3]
            rid = f"{sp.workflow}-{step}"
            mask = rng.random(sp.num_configs) < 0.3
            mask[sp.c_max] = True
            for sched in (jitted, twin):
                sched.add_request(rid, sp, mask)
            space_of[rid], masks[rid] = sp, mask
        assert list(jitted.request_ids()) == list(twin.request_ids())
        load = _mixed_load(rng)
        plan, twin_plan = jitted.schedule(load), twin.schedule(load)
        assert _plan_key(plan) == _plan_key(twin_plan)
        doc = plan.to_replay()
        assert replay_round(doc, make_policy("aragog")) == plan.decision()
        for r in doc["requests"]:
            sp = space_of[r["id"]]
            assert {len(c) for c in r["configs"]} == {sp.num_stages}
            admitted = {
                tuple(sp.model_names[m] for m in row) for row in sp.configs[masks[r["id"]]].tolist()
            }
            assert {
                tuple(c) for c in r["configs"]
            } <= admitted  # its own space's admitted configurations
        round_workflows = {space_of[r["id"]].workflow for r in doc["requests"]}
        if len(round_workflows) == 3 and plan.assignments and not cli_checked:
            path = tmp_path / "round.json"  # python -m aragog_jax.schedule round.json
            path.write_text(json.dumps(doc))
            assert schedule_main([str(path)]) == 0
            assert json.loads(capsys.readouterr().out) == plan.decision()
            cli_checked = True
        workflows_in_a_round = max(workflows_in_a_round, len(round_workflows))
        _check_own_space(jitted, plan, space_of, MIXED_FLEET)
        running += [(a.request_id, a.stage) for a in plan.assignments]
        rng.shuffle(running)
        for rid, stage in running[: len(running) // 2 + 1]:
            assert jitted.on_stage_finished(rid, stage) == twin.on_stage_finished(rid, stage)
        running = running[len(running) // 2 + 1 :]
        for rid in jitted.request_ids():
            np.testing.assert_array_equal(jitted.viable_mask(rid), twin.viable_mask(rid))
        if step >= 12 and not jitted.num_in_flight:
            break
    assert workflows_in_a_round == 3 and cli_checked
    assert jitted.num_in_flight == 0 and twin.num_in_flight == 0
    for rid, sp in space_of.items():
        cfg = jitted.realised_config(rid)
        assert cfg == twin.realised_config(rid) and set(cfg) == set(sp.stage_names)
        assert masks[rid][sp.index_of(cfg)]  # a configuration the request was admitted with


TRIO = space(
    [(f"v{i}", ()) for i in range(4)] + [("agg", tuple(f"v{i}" for i in range(4)))], name="trio"
)


def _snapshot(sched: Scheduler, rids) -> dict:
    return {
        rid: (sched.viable_mask(rid), sched.stage_status(rid), sched.realised_config(rid))
        for rid in rids
    }


def _assert_same(before: dict, after: dict) -> None:
    assert before.keys() == after.keys()
    for rid, (viable, status, cfg) in before.items():
        np.testing.assert_array_equal(after[rid][0], viable)
        assert after[rid][1:] == (status, cfg), rid


def test_a_space_attached_later_keeps_earlier_requests_intact():
    """ONE (1 stage, 3 configurations) first; FANOUT (4 stages, bucket 128) and TRIO
    (5 stages, bucket 256) attach later and widen the tables. Earlier requests keep their
    masks, status and place; plans equal those of a scheduler that had every space from
    the start, and earlier plans still render their rounds."""
    lazy = Scheduler(FLEET, "aragog")
    upfront = Scheduler(FLEET, "aragog", spaces=[TRIO, FANOUT, ONE])
    both = (lazy, upfront)
    plans = []

    def add(rid, sp, mask):
        for sched in both:
            sched.add_request(rid, sp, mask)

    def round_(load):
        plan = lazy.schedule(load)
        assert _plan_key(plan) == _plan_key(upfront.schedule(load))
        plans.append((plan, plan.to_replay()))
        return plan

    def finish(rid, stage):
        assert lazy.on_stage_finished(rid, stage) == upfront.on_stage_finished(rid, stage)

    add("o1", ONE, mask_where(ONE, answer=["7B", "14B"]))
    add("o2", ONE, mask_where(ONE, answer=["14B", "32B"]))
    add("o3", ONE, np.ones(3, dtype=bool))
    plan = round_(_load([3, 2, 1, 2]))  # only e14 has a slot: o1 or o2 commits 14B there
    assert [a.model for a in plan.assignments] == ["14B"]
    (failed,) = plan.assignments
    for sched in both:
        sched.on_stage_failed(failed.request_id, 0, failed.engine)  # 14B excluded for it
    for sched in both:
        assert sched.tables.viable.shape[1] == (
            32 if sched is lazy else 256
        )  # the widening is real
    before = _snapshot(lazy, ["o1", "o2", "o3"])
    items = ready_items(lazy, FLEET)
    assert items == [("o1", 0), ("o2", 0), ("o3", 0)]

    add("f1", FANOUT, np.ones(FANOUT.num_configs, dtype=bool))  # 4 stages, 81 configurations
    assert lazy.tables.viable.shape[1] == 128 and lazy.tables.ready.shape[1] == 4
    _assert_same(before, _snapshot(lazy, ["o1", "o2", "o3"]))
    assert ready_items(lazy, FLEET) == [*items, ("f1", 0)]
    plan = round_(_load([0, 2, 2, 2]))  # 3 slots, all 7B: o1, o3 and f1's plan stage
    assert [(a.request_id, a.model) for a in plan.assignments] == [
        ("o1", "7B"),
        ("o3", "7B"),
        ("f1", "7B"),
    ]
    finish("f1", "plan")  # f1's s1 and s2 are ready in parallel
    before = _snapshot(lazy, ["o1", "o2", "o3", "f1"])
    items = ready_items(lazy, FLEET)
    assert items == [("o2", 0), ("f1", 1), ("f1", 2)]

    trio_mask = mask_where(TRIO, agg=["32B"])
    add("t1", TRIO, trio_mask)  # 5 stages, 243 configurations
    assert lazy.tables.viable.shape[1] == 256 and lazy.tables.ready.shape[1] == 5
    _assert_same(before, _snapshot(lazy, ["o1", "o2", "o3", "f1"]))
    np.testing.assert_array_equal(lazy.viable_mask("t1"), trio_mask)
    assert ready_items(lazy, FLEET) == [*items, ("t1", 0), ("t1", 1), ("t1", 2), ("t1", 3)]
    for plan, doc in plans:  # rendered from references into the old, narrower tables
        assert plan.to_replay() == doc
    finish("o1", 0)  # running through both widenings
    finish("o3", 0)
    # Run everything to completion on idle engines, in lockstep.
    for _ in range(10):
        plan = round_(LoadVector.idle(FLEET))
        assert replay_round(plan.to_replay(), make_policy("aragog")) == plan.decision()
        for a in plan.assignments:
            finish(a.request_id, a.stage)
        if not lazy.num_in_flight:
            break
    assert lazy.num_in_flight == 0 and upfront.num_in_flight == 0
    assert (
        lazy.realised_config(failed.request_id)["answer"] != "14B"
    )  # still excluded after two widenings
    assert lazy.realised_config("o2")["answer"] in ("14B", "32B")
    assert lazy.realised_config("t1")["agg"] == "32B"


def test_finish_cancel_and_fail_in_one_workflow_leave_the_other_alone():
    """CHAIN and FANOUT requests interleave; every transition of a CHAIN request (finish,
    cancel, failure, completion, and the compactions its arrivals and departures cause)
    leaves the FANOUT requests' masks, status, commits and relative order unchanged."""
    h = Harness(small_rows=SMALL_ROWS)
    only_32b = mask_where(FANOUT, s1=["32B"], s2=["32B"])  # FANOUT's parallel stages need e32
    for _ in range(3):
        h.add(CHAIN, mask_where(CHAIN, draft=["7B", "14B"]))
        h.add(FANOUT, only_32b)
    chains = [rid for rid in h.live if h.space_of[rid] is CHAIN]
    fans = [rid for rid in h.live if h.space_of[rid] is FANOUT]
    plan = h.schedule(LoadVector.idle(FLEET))
    assert len(plan.assignments) == 6  # every first stage runs
    for rid in fans:
        h.finish(
            h.running.index(
                (rid, 0, next(a.engine for a in plan.assignments if a.request_id == rid))
            )
        )
    e32_busy = _load([0, 0, 0, 2])

    def fan_items():
        return [it for it in ready_items(h.sched, FLEET) if it[0] in fans]

    before, items = _snapshot(h.sched, fans), fan_items()
    assert items == [(rid, s) for rid in fans for s in (1, 2)]

    def unchanged():
        _assert_same(before, _snapshot(h.sched, fans))
        assert fan_items() == items

    h.finish(
        next(i for i, r in enumerate(h.running) if r[0] == chains[0])
    )  # chains[0]: polish ready
    unchanged()
    h.cancel(list(h.live).index(chains[1]))
    unchanged()
    h.fail(
        next(i for i, r in enumerate(h.running) if r[0] == chains[2])
    )  # draft again, one model excluded
    unchanged()
    plan = h.schedule(e32_busy)  # only CHAIN stages can go anywhere
    assert {a.request_id for a in plan.assignments} == {chains[0], chains[2]}
    assert {s.request_id for s in plan.skipped} == set(fans)
    unchanged()
    while h.running:  # chains[0] completes and leaves; chains[2]'s draft finishes
        h.finish(0)
    unchanged()
    for _ in range(24):  # more CHAIN arrivals and departures: the tables compact under FANOUT
        h.add(CHAIN, np.ones(CHAIN.num_configs, dtype=bool))
        h.schedule(e32_busy)
        while h.running:
            h.finish(0)
        unchanged()
    assert h.compactions >= 3 and h.dropped_rows >= 12
    assert all(h.sched.is_done(rid) for rid in chains if rid != chains[1])
    while h.live:  # now the FANOUT requests run to completion
        h.schedule(LoadVector.idle(FLEET))
        while h.running:
            h.finish(0)
    for rid in fans:
        cfg = h.sched.realised_config(rid)
        assert cfg["s1"] == cfg["s2"] == "32B" and cfg["plan"] == before[rid][2]["plan"]


def test_per_workflow_policy_with_two_workflows_in_one_queue():
    """``per_workflow`` fixes one configuration per workflow: interleaved requests of two
    workflows each follow their own, through compactions (256 rows crossed twice)."""
    fixed = {
        "chain": {"draft": "14B", "polish": "7B"},
        "fanout": {"plan": "32B", "s1": "7B", "s2": "7B", "agg": "14B"},
    }
    sched = Scheduler(FLEET, "per_workflow", per_workflow=fixed)
    idle = LoadVector.idle(FLEET)
    for i in range(600):
        sp = CHAIN if i % 3 else FANOUT
        sched.add_request(i, sp)
        assert sched.viable_mask(i).sum() == 1
        plan = sched.schedule(idle)
        for a in plan.assignments:
            sp = CHAIN if a.request_id % 3 else FANOUT
            assert a.model == fixed[sp.workflow][a.stage_name]
            sched.on_stage_finished(a.request_id, a.stage)
    while sched.num_in_flight:
        for a in sched.schedule(idle).assignments:
            sched.on_stage_finished(a.request_id, a.stage)
    assert (
        sched.realised_config(0) == fixed["fanout"] and sched.realised_config(599) == fixed["chain"]
    )
