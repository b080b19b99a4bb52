"""Label a workflow on real engines: every configuration (or a seeded sample) over a dataset.

**Configuration tree.** A stage's output depends only on the input and on the models of
the stage and of its ancestors. Walking the stages in topological order, the calls of
all configurations form a tree: configurations sharing a model prefix share the calls of
that prefix. The labeller runs one engine call per distinct *call key* (stage, models of
the stage and its ancestors). For a chain of S stages over M models that is the number
of distinct topological prefixes, Σ_{k=1..S} M^k, instead of S · M^S (39 vs 81 for
S = M = 3); for DAGs with parallel branches (voting, decomposition) it is fewer still,
because a branch does not depend on its siblings' models. The plan reports all three
counts (naive, distinct prefixes, calls).

**Resumable.** Every finished call is appended to ``DIR/calls.jsonl`` (flushed at once);
a rerun loads it and recomputes nothing. Failed calls go to ``DIR/failures.jsonl`` and
are retried on the next run. ``DIR/label_state.json`` pins what the cached calls were
made for (workflow, stage prompts, models, seed); a rerun against something else
refuses to mix them.

**Determinism.** Each call uses temperature 0 and a seed derived from (seed, input id,
call key), so a call's result does not depend on scheduling or on which run made it.
Splits and the configuration sample are seeded too.

**Output.** An accuracy dataset (:mod:`aragog_jax.data._dataset` format, ``source =
"labelled"``) in ``DIR``: the score of configuration c on input n is the scorer applied
to the output of the workflow's last sink stage. Configurations outside the sample, or
whose calls or scorer failed, have score 0 and ``labelled.npy[n, c] = False`` (so the
router never learns to admit them: conservative). Inputs whose ``c_max`` could not be
scored are left out (no reference to label against) and listed in the report.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from aragog_jax._imports import load_callable
from aragog_jax.data._dataset import SPLITS, AccuracyDataset, save_dataset
from aragog_jax.errors import AragogError, DatasetError, SpecError, UpstreamError
from aragog_jax.serving._client import ClientLimits, EngineClient
from aragog_jax.serving._stagefn import StageFunctionError, StageState, load_stage_functions, render_prompt, run_stage
from aragog_jax.space import ConfigSpace

Scorer = Callable[[dict, str], float]

STATE_FORMAT = "aragog-label-state/1"


# -- the plan: configuration tree ------------------------------------------------------


def _ancestors(space: ConfigSpace) -> list[tuple[int, ...]]:
    """Per stage, its ancestors and itself, ascending stage ids."""
    out: list[set[int]] = [set() for _ in range(space.num_stages)]
    for s in (int(x) for x in space.topo_order):
        out[s] = {s}.union(*(out[u] for u in space.upstream[s]))
    return [tuple(sorted(a)) for a in out]


@dataclass(frozen=True)
class LabelPlan:
    """Which calls label which configurations (the same for every input).

    Attributes:
      config_ids: int[K] labelled configurations (ascending; always includes c_max).
      call_keys: distinct call keys ``(stage, ((stage', model), ...))`` in topological order.
      config_calls: int[K, S] per configuration and stage, the index into ``call_keys``.
      num_prefixes: distinct topological-order model prefixes over the labelled configurations.
      output_stage: the stage whose output is scored (the last sink, as in serving).
    """

    config_ids: np.ndarray
    call_keys: list[tuple[int, tuple[tuple[int, int], ...]]]
    config_calls: np.ndarray
    num_prefixes: int
    output_stage: int
    ancestors: list[tuple[int, ...]]

    @property
    def num_calls(self) -> int:
        return len(self.call_keys)

    @property
    def num_naive(self) -> int:
        return int(self.config_calls.size)

    def upstream_calls(self, space: ConfigSpace) -> list[tuple[int, ...]]:
        """Per call, the calls of its upstream stages (same configuration branch)."""
        index = {k: i for i, k in enumerate(self.call_keys)}
        out: list[tuple[int, ...]] = [()] * len(self.call_keys)
        for k, (s, models) in enumerate(self.call_keys):
            m = dict(models)
            ups = []
            for u in space.upstream[s]:
                anc = self.ancestors[u]
                ups.append(index[(u, tuple((a, m[a]) for a in anc))])
            out[k] = tuple(ups)
        return out


def make_plan(space: ConfigSpace, config_ids: np.ndarray | None = None) -> LabelPlan:
    """The configuration tree of ``config_ids`` (default: every configuration)."""
    ids = np.arange(space.num_configs) if config_ids is None else np.unique(np.asarray(config_ids, np.int64))
    anc = _ancestors(space)
    topo = [int(x) for x in space.topo_order]
    keys: dict[tuple, int] = {}
    prefixes: set[tuple[int, ...]] = set()
    calls = np.zeros((ids.size, space.num_stages), np.int64)
    for pos in range(len(topo)):
        s = topo[pos]
        for r, c in enumerate(ids):
            row = space.configs[c]
            prefixes.add(tuple(int(row[t]) for t in topo[: pos + 1]))
            key = (s, tuple((a, int(row[a])) for a in anc[s]))
            calls[r, s] = keys.setdefault(key, len(keys))
    sinks = [i for i in range(space.num_stages) if int(space.stage_depth[i]) == 0]
    return LabelPlan(ids, list(keys), calls, len(prefixes), sinks[-1], anc)


def sample_configs(space: ConfigSpace, k: int | None, seed: int) -> np.ndarray:
    """A seeded sample of ``k`` configurations that always includes ``c_max`` (all when k is None)."""
    c = space.num_configs
    if k is None or k >= c:
        return np.arange(c)
    if k < 1:
        raise AragogError(f"--sample must be >= 1, got {k}")
    rng = np.random.default_rng(seed)
    others = rng.choice(c - 1, size=k - 1, replace=False) if k > 1 else np.zeros(0, np.int64)
    others = np.where(others >= space.c_max, others + 1, others)  # skip c_max, then add it
    return np.unique(np.concatenate([others, [space.c_max]]).astype(np.int64))


# -- inputs, scorers --------------------------------------------------------------------


@dataclass
class InputRow:
    id: str
    text: str
    split: str
    row: dict


def load_inputs(path: str | Path, *, text_field: str = "", split_fractions=(0.6, 0.2, 0.2), seed: int = 0,
                limit: int | None = None) -> list[InputRow]:  # fmt: skip
    """Read a JSONL dataset: text from ``text_field`` (default ``input``, else ``text``,
    ``question``), id from ``id`` (default: line number), split from ``split`` when it
    names one of train/calibration/test, else a seeded assignment by ``split_fractions``.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: dataset file not found")
    rows: list[InputRow] = []
    seen: set[str] = set()
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{path}:{lineno}: not valid JSON: {exc}") from exc
            if not isinstance(row, dict):
                raise DatasetError(f"{path}:{lineno}: expected a JSON object per line")
            fields = [text_field] if text_field else ["input", "text", "question"]
            name = next((k for k in fields if k in row), None)
            if name is None:
                raise DatasetError(f"{path}:{lineno}: no {' / '.join(repr(k) for k in fields)} field with the input text")
            rid = str(row.get("id", lineno))
            if rid in seen:
                raise DatasetError(f"{path}:{lineno}: id: duplicate id {rid!r}")
            seen.add(rid)
            split = row.get("split", "")
            rows.append(InputRow(rid, str(row[name]), split if split in SPLITS else "", row))
            if limit is not None and len(rows) >= limit:
                break
    if not rows:
        raise DatasetError(f"{path}: no inputs")
    fr = np.asarray(split_fractions, dtype=np.float64)
    if fr.shape != (3,) or (fr < 0).any() or fr.sum() <= 0:
        raise AragogError(f"split fractions must be three non-negative numbers, got {list(split_fractions)}")
    todo = [r for r in rows if not r.split]
    if todo:
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(todo))
        bounds = np.round(np.cumsum(fr / fr.sum()) * len(todo)).astype(int)
        for rank, i in enumerate(order):
            todo[i].split = SPLITS[min(int(np.searchsorted(bounds, rank, side="right")), len(SPLITS) - 1)]
    return rows


def load_scorer(spec: str) -> Scorer:
    """``module:function`` or ``path/to/file.py:function`` -> the function (AragogError naming what is wrong)."""
    return load_callable(spec, f"scorer {spec!r}", "aragog_jax.data.scorers:exact_match")


# -- engines ------------------------------------------------------------------------------


@dataclass(frozen=True)
class EngineTarget:
    name: str
    model: str  # catalog model name
    url: str
    served_model: str


def _function_pin(ref: str, fn: Callable) -> str:
    """What the call cache pins for a stage function: its name (a file by its base name, so
    a moved checkout keeps its cache) and a digest of the source file it is defined in
    (so editing the function, or a helper next to it, starts a new cache)."""
    mod, _, name = ref.rpartition(":")
    try:
        source = Path(fn.__code__.co_filename).read_bytes()
    except (AttributeError, OSError):  # not a plain Python function: its name only
        source = b""
    return f"{Path(mod).name if mod.endswith('.py') else mod}:{name}#{hashlib.sha256(source).hexdigest()[:16]}"


def _call_seed(seed: int, input_id: str, key: tuple) -> int:
    h = hashlib.blake2b(f"{seed}\x00{input_id}\x00{key!r}".encode(), digest_size=4).digest()
    return int.from_bytes(h, "little") % 2**31


def _key_str(key: tuple) -> str:
    s, models = key
    return f"{s}:" + ",".join(f"{a}={m}" for a, m in models)


# -- the labeller -------------------------------------------------------------------------


@dataclass
class LabelSettings:
    concurrency: int = 8
    seed: int = 0
    sample: int | None = None
    request_timeout_s: float = 120.0
    progress_every_s: float = 2.0


@dataclass
class LabelResult:
    out: Path
    dataset: AccuracyDataset
    plan: LabelPlan
    num_inputs: int
    calls_total: int  # calls the full job needs (inputs x distinct calls)
    calls_made: int  # engine calls this run made (cached ones excluded)
    calls_cached: int
    calls_failed: int
    config_failures: list[dict] = field(default_factory=list)
    dropped_inputs: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def report(self) -> dict:
        n, p = self.num_inputs, self.plan
        return {
            "num_inputs": n,
            "num_labelled_configs": int(p.config_ids.size),
            "per_input": {"naive_calls": p.num_naive, "distinct_prefixes": p.num_prefixes, "calls": p.num_calls},
            "total": {"naive_calls": n * p.num_naive, "distinct_prefixes": n * p.num_prefixes, "calls": self.calls_total},
            "this_run": {"calls_made": self.calls_made, "calls_cached": self.calls_cached, "calls_failed": self.calls_failed},
            "config_failures": len(self.config_failures),
            "dropped_inputs": self.dropped_inputs,
            "seconds": round(self.seconds, 3),
        }


class Labeller:
    """Label ``inputs`` over ``space`` (built for ``workflow``) on ``engines``, into ``out``."""

    def __init__(self, workflow, space: ConfigSpace, engines: list[EngineTarget], inputs: list[InputRow], scorer: Scorer,
                 out: str | Path, settings: LabelSettings = LabelSettings(), *, family: str = "",
                 progress: Callable[[str], None] | None = None, scorer_name: str = ""):  # fmt: skip
        if settings.concurrency < 1:
            raise AragogError(f"concurrency must be >= 1, got {settings.concurrency}")
        self.wf = workflow
        self.stage_fns = load_stage_functions(workflow)  # imports the user's stage functions now
        self.space = space
        self.inputs = inputs
        self.scorer = scorer
        self.scorer_name = scorer_name
        self.out = Path(out)
        self.settings = settings
        self.family = family
        self.progress = progress or (lambda msg: None)
        by_model: dict[str, list[EngineTarget]] = {}
        for e in engines:
            by_model.setdefault(e.model, []).append(e)
        sampled = sample_configs(space, settings.sample, settings.seed)
        self.plan = make_plan(space, sampled)
        needed = {space.model_names[m] for _, models in self.plan.call_keys for _, m in models}
        missing = sorted(needed - set(by_model))
        if missing:
            raise SpecError(f"no engine serves model(s) {missing} needed by workflow {space.workflow!r}")
        self.engines = by_model
        self.clients: dict[str, EngineClient] = {}

    # -- state files --------------------------------------------------------------------

    def _state(self) -> dict:
        return {
            "format": STATE_FORMAT,
            "workflow": self.space.workflow,
            "fingerprint": self.space.fingerprint(),
            "stages": [[s.name, s.prompt, s.output_tokens] + ([_function_pin(s.function, self.stage_fns[i])] if s.function else [])
                       for i, s in enumerate(self.wf.stage)],
            "seed": self.settings.seed,
        }

    def _load_cache(self) -> dict[tuple[str, str], dict]:
        self.out.mkdir(parents=True, exist_ok=True)
        state_path = self.out / "label_state.json"
        state = self._state()
        if state_path.is_file():
            old = json.loads(state_path.read_text())
            if old != state:
                diff = sorted(k for k in state if old.get(k) != state[k])
                raise AragogError(
                    f"{self.out}: holds calls made for a different job (differs in {', '.join(diff)}); "
                    "use a new --out directory"
                )
        else:
            state_path.write_text(json.dumps(state, indent=2) + "\n")
        cache: dict[tuple[str, str], dict] = {}
        calls_path = self.out / "calls.jsonl"
        if calls_path.is_file():
            with open(calls_path) as f:
                for line in f:
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError:
                        continue  # a torn last line from an interrupted run: redo that call
                    cache[(rec["input"], rec["key"])] = rec
        return cache

    # -- running --------------------------------------------------------------------------

    async def run(self) -> LabelResult:
        t0 = time.monotonic()
        cache = self._load_cache()
        plan, space = self.plan, self.space
        ups = plan.upstream_calls(space)
        key_strs = [_key_str(k) for k in plan.call_keys]
        limits = ClientLimits(request_timeout_s=self.settings.request_timeout_s, orca=False,
                              max_connections=max(16, 2 * self.settings.concurrency))  # fmt: skip
        for targets in self.engines.values():
            for e in targets:
                self.clients[e.name] = EngineClient(e.name, e.url, e.served_model, limits)
                await self.clients[e.name].open()
        sem = asyncio.Semaphore(self.settings.concurrency)
        total = len(self.inputs) * plan.num_calls
        cached = sum(1 for r in self.inputs for k in key_strs if (r.id, k) in cache)
        counts = {"made": 0, "failed": 0}
        last_report = [0.0]
        results: dict[tuple[str, int], dict | None] = {}
        calls_f = open(self.out / "calls.jsonl", "a")
        fail_f = open(self.out / "failures.jsonl", "a")
        self.progress(f"{len(self.inputs)} inputs x {plan.num_calls} calls = {total} calls "
                      f"({cached} cached); naive {len(self.inputs) * plan.num_naive}, "
                      f"distinct prefixes {len(self.inputs) * plan.num_prefixes}")  # fmt: skip

        def report(force: bool = False) -> None:
            now = time.monotonic()
            if force or now - last_report[0] >= self.settings.progress_every_s:
                last_report[0] = now
                done = cached + counts["made"]
                rate = counts["made"] / max(now - t0, 1e-9)
                self.progress(f"calls {done}/{total} ({counts['failed']} failed) {rate:.1f} calls/s")

        async def call(row: InputRow, k: int, futs: list[asyncio.Future]) -> dict | None:
            key_s = key_strs[k]
            if (row.id, key_s) in cache:
                return cache[(row.id, key_s)]
            up_recs = [await futs[u] for u in ups[k]]
            s, models = plan.call_keys[k]
            if any(r is None for r in up_recs):
                return None  # an upstream call failed: this branch cannot run
            stage = self.wf.stage[s]
            model = space.model_names[dict(models)[s]]
            outputs = {space.stage_names[u]: r["text"] for u, r in zip(space.upstream[s], up_recs, strict=True)}
            state = StageState(row.text, outputs, render_prompt(stage.prompt, row.text, outputs))
            seed = _call_seed(self.settings.seed, row.id, plan.call_keys[k])
            targets = self.engines[model]
            target = targets[seed % len(targets)]
            async with sem:
                try:
                    res = await run_stage(stage, self.stage_fns.get(s), model, self.clients[target.name], state, seed=seed)
                except (UpstreamError, StageFunctionError) as exc:
                    counts["failed"] += 1
                    fail_f.write(json.dumps({"input": row.id, "key": key_s, "engine": target.name, "error": str(exc)}) + "\n")
                    fail_f.flush()
                    report()
                    return None
            rec = {"input": row.id, "key": key_s, "text": res.text, "prompt_tokens": res.prompt_tokens,
                   "completion_tokens": res.completion_tokens, "engine": target.name}  # fmt: skip
            calls_f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            calls_f.flush()
            counts["made"] += 1
            report()
            return rec

        async def label_input(row: InputRow) -> None:
            loop = asyncio.get_running_loop()
            futs: list[asyncio.Future] = [loop.create_future() for _ in range(plan.num_calls)]

            async def one(k: int) -> None:
                try:
                    futs[k].set_result(await call(row, k, futs))
                except BaseException as exc:  # noqa: BLE001 - propagate to dependants, then re-raise
                    futs[k].set_exception(exc)
                    raise

            await asyncio.gather(*(one(k) for k in range(plan.num_calls)))
            for k in range(plan.num_calls):
                results[(row.id, k)] = futs[k].result()

        try:
            # Inputs run a few at a time (the semaphore bounds engine calls; this bounds memory).
            window = max(1, 2 * self.settings.concurrency)
            for i in range(0, len(self.inputs), window):
                await asyncio.gather(*(label_input(r) for r in self.inputs[i : i + window]))
        finally:
            calls_f.close()
            fail_f.close()
            for c in self.clients.values():
                await c.close()
        report(force=True)
        return self._assemble(results, cached, counts, time.monotonic() - t0)

    def _assemble(self, results, cached: int, counts: dict, seconds: float) -> LabelResult:
        plan, space = self.plan, self.space
        num_c, num_s = space.num_configs, space.num_stages
        rows_kept: list[InputRow] = []
        score_rows, label_rows, token_rows = [], [], []
        failures: list[dict] = []
        dropped: list[str] = []
        cmax_pos = int(np.flatnonzero(plan.config_ids == space.c_max)[0])
        for row in self.inputs:
            scores = np.zeros(num_c, np.float32)
            labelled = np.zeros(num_c, bool)
            for r, c in enumerate(plan.config_ids):
                rec = results.get((row.id, int(plan.config_calls[r, plan.output_stage])))
                if rec is None:
                    failures.append({"input": row.id, "config": int(c), "error": "an engine call of this configuration failed"})
                    continue
                try:
                    val = float(self.scorer(row.row, rec["text"]))
                except Exception as exc:  # noqa: BLE001 - a user scorer: record and go on
                    failures.append({"input": row.id, "config": int(c), "error": f"scorer: {type(exc).__name__}: {exc}"})
                    continue
                if not 0.0 <= val <= 1.0 or val != val:
                    failures.append({"input": row.id, "config": int(c), "error": f"scorer returned {val!r}, not in [0, 1]"})
                    continue
                scores[c], labelled[c] = val, True
            if not labelled[space.c_max]:
                dropped.append(row.id)
                continue
            # Per-stage tokens: the c_max branch's measured counts.
            toks = np.zeros((num_s, 2), np.int32)
            for s in range(num_s):
                rec = results.get((row.id, int(plan.config_calls[cmax_pos, s])))
                if rec is not None:
                    toks[s] = (rec["prompt_tokens"], rec["completion_tokens"])
            rows_kept.append(row)
            score_rows.append(scores)
            label_rows.append(labelled)
            token_rows.append(toks)
        if not rows_kept:
            first = next((f["error"] for f in failures if f["config"] == space.c_max), "?")
            raise AragogError(f"no input could be labelled: c_max failed on all {len(self.inputs)} inputs (first error: "
                              f"{first}); see {self.out / 'failures.jsonl'} and config_failures.jsonl")  # fmt: skip
        meta = {
            "workflow": space.workflow,
            "family": self.family,
            "fingerprint": space.fingerprint(),
            "stage_names": list(space.stage_names),
            "model_names": list(space.model_names),
            "source": "labelled",
            "seed": self.settings.seed,
            "generator": {
                "labeller": "python -m aragog_jax.label",
                "scorer": self.scorer_name,
                "sample": self.settings.sample,
                "labelled_configs": [int(c) for c in plan.config_ids],
                "unlabelled_score": 0.0,
            },
        }
        ds = AccuracyDataset(
            ids=[r.id for r in rows_kept], texts=[r.text for r in rows_kept], splits=[r.split for r in rows_kept],
            tokens=np.stack(token_rows), scores=np.stack(score_rows), meta=meta,
        )  # fmt: skip
        save_dataset(ds, self.out)
        np.save(self.out / "labelled.npy", np.stack(label_rows))
        with open(self.out / "config_failures.jsonl", "w") as f:
            for rec in failures:
                f.write(json.dumps(rec) + "\n")
        res = LabelResult(
            out=self.out, dataset=ds, plan=plan, num_inputs=len(self.inputs),
            calls_total=len(self.inputs) * plan.num_calls, calls_made=counts["made"], calls_cached=cached,
            calls_failed=counts["failed"], config_failures=failures, dropped_inputs=dropped, seconds=seconds,
        )  # fmt: skip
        return res


__all__ = [
    "EngineTarget",
    "InputRow",
    "LabelPlan",
    "LabelResult",
    "LabelSettings",
    "Labeller",
    "load_inputs",
    "load_scorer",
    "make_plan",
    "render_prompt",
    "sample_configs",
]
