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

**Call cache.** Every finished stage execution is appended to ``DIR/calls.jsonl``
(flushed at once), keyed by the digest of everything that determines its output: the
input text, the upstream stages' output texts, the stage (name, prompt template,
``output_tokens``, and its function's name and source digest), the catalog model, the
engine (URL, or ``emulated``) and the request's sampling fields (served model name,
temperature, max tokens, seed). A rerun reuses exactly the calls whose digest matches:
an edited input redoes that input's calls, a moved engine URL the calls on that engine,
an edited stage function that stage's calls and those downstream whose input changed.
Nothing is keyed by input id or line number. A torn last line (a run killed mid-write)
is cut off on open and that call redone.

**Manifest.** ``DIR/label_state.json`` records what the directory was labelled with
(workflow and its stages, dataset digest, fleet engines, scorer, seed and sample). A
rerun that differs is refused with one line naming the difference, unless
``on_change="update"`` (reuse what still matches) or ``"restart"`` (clear the directory
first). ``DIR/label.lock`` (``flock``, pid/host/start time) keeps a second run out.

**Files.** Every state and output file is written atomically (temp file, fsync,
rename); the dataset's ``meta.json`` lands last, so a killed run leaves the old dataset
or an incomplete one that ``load_dataset`` reports in one line, never a torn file.
``failures.jsonl`` lists the calls that failed in the latest run, ``config_failures.jsonl``
the (input, configuration) pairs left unlabelled, ``input_errors.jsonl`` the dataset
lines that could not be used (``{"line", "reason"}``).

**Determinism.** Each call uses temperature 0 and a seed derived from (seed, input text,
call key), so a call's result does not depend on scheduling or on which run made it.
Splits and the configuration sample are seeded too.

**Output.** An accuracy dataset (:mod:`aragog_jax.data._dataset` format, ``source =
"labelled"``) in ``DIR``: the score of configuration c on input n is the scorer applied
to the output of the workflow's last sink stage. Configurations outside the sample, or
whose calls or scorer failed, have score 0 and ``labelled.npy[n, c] = False``: training
learns from the labelled pairs only and calibration counts only them (a configuration
never labelled is never admitted). Inputs whose ``c_max`` could not be
scored are left out (no reference to label against) and listed in the report.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from aragog_jax._files import DirLock
from aragog_jax.data._inputs import InputFile, InputRow, Scorer, check_scorer
from aragog_jax.data._label_output import LabelResult, assemble
from aragog_jax.data._label_state import (
    ON_CHANGE,
    STATE_FORMAT,
    EngineTarget,
    call_seed,
    function_pin,
    json_digest,
    key_str,
    open_state,
)
from aragog_jax.data._plan import make_plan, sample_configs
from aragog_jax.engines.client import ClientLimits, EngineClient
from aragog_jax.engines.stages import load_stage_functions, run_stage, stage_state
from aragog_jax.errors import (
    AragogError,
    DatasetError,
    SpecError,
    StageFunctionError,
    UpstreamError,
)
from aragog_jax.space import ConfigSpace

# -- the labeller -------------------------------------------------------------------------


@dataclass
class LabelSettings:
    """How a labelling run goes.

    ``on_change``: what a rerun does when the directory was labelled with something else
      (another dataset, workflow, fleet, scorer, seed or sample): ``refuse`` (default; one
      line naming the difference), ``update`` (reuse the cached calls that still match,
      redo the rest) or ``restart`` (clear the directory, then label from scratch).
    """

    concurrency: int = 8
    seed: int = 0
    sample: int | None = None
    request_timeout_s: float = 120.0
    progress_every_s: float = 2.0
    on_change: str = "refuse"


class Labeller:
    """Label ``inputs`` over ``space`` (built for ``workflow``) on ``engines``, into ``out``."""

    def __init__(
        self,
        workflow,
        space: ConfigSpace,
        engines: list[EngineTarget],
        inputs: InputFile | list[InputRow],
        scorer: Scorer,
        out: str | Path,
        settings: LabelSettings = LabelSettings(),
        *,
        family: str = "",
        progress: Callable[[str], None] | None = None,
        scorer_name: str = "",
        provenance: dict | None = None,
    ):
        if settings.concurrency < 1:
            raise AragogError(f"concurrency must be >= 1, got {settings.concurrency}")
        if settings.on_change not in ON_CHANGE:
            raise AragogError(
                f"unknown on_change {settings.on_change!r} (known: {', '.join(ON_CHANGE)})"
            )
        self.wf = workflow
        self.stage_fns = load_stage_functions(workflow)  # imports the user's stage functions now
        self.space = space
        if not isinstance(inputs, InputFile):
            inputs = InputFile(Path(), list(inputs), [])
        if not inputs.rows:
            raise DatasetError(f"{inputs.path}: no inputs to label")
        self.input_file = inputs
        self.inputs = inputs.rows
        self.scorer = scorer
        self.scorer_name = (
            scorer_name
            or f"{getattr(scorer, '__module__', '?')}:{getattr(scorer, '__qualname__', '?')}"
        )
        self.out = Path(out)
        self.settings = settings
        self.family = family
        self.progress = progress or (lambda msg: None)
        self.provenance = provenance or {}
        by_model: dict[str, list[EngineTarget]] = {}
        for e in engines:
            by_model.setdefault(e.model, []).append(e)
        sampled = sample_configs(space, settings.sample, settings.seed)
        self.plan = make_plan(space, sampled)
        needed = {space.model_names[m] for _, models in self.plan.call_keys for _, m in models}
        missing = sorted(needed - set(by_model))
        if missing:
            raise SpecError(
                f"no engine serves model(s) {missing} needed by workflow {space.workflow!r}"
            )
        self.engines = {
            m: by_model[m] for m in sorted(needed)
        }  # the engines of other models are never called
        limits = ClientLimits(
            request_timeout_s=settings.request_timeout_s,
            orca=False,
            max_connections=max(16, 2 * settings.concurrency),
        )
        self.clients = {
            e.name: EngineClient(e.name, e.url, e.served_model, limits)
            for t in self.engines.values()
            for e in t
        }
        # What a stage contributes to its calls' digests (and to the manifest).
        self.stage_pins = [
            [
                s.name,
                s.prompt,
                s.output_tokens,
                function_pin(s.function, self.stage_fns[i]) if s.function else "",
            ]
            for i, s in enumerate(workflow.stage)
        ]

    # -- state files --------------------------------------------------------------------

    def manifest(self) -> dict:
        """What this directory is labelled with (``label_state.json``)."""
        engines = sorted(
            (e for targets in self.engines.values() for e in targets), key=lambda e: e.name
        )
        return {
            "format": STATE_FORMAT,
            "workflow": {
                "name": self.space.workflow,
                "fingerprint": self.space.fingerprint(),
                "stages": self.stage_pins,
            },
            "dataset": {"rows": len(self.inputs), "sha256": self.input_file.digest()},
            "fleet": {
                e.name: {"model": e.model, "url": e.engine_id, "served_model": e.served_model}
                for e in engines
            },
            "scorer": function_pin(self.scorer_name, self.scorer),
            "options": {"seed": self.settings.seed, "sample": self.settings.sample},
        }

    def _call_digest(
        self,
        stage: int,
        model: str,
        target: EngineTarget,
        text: str,
        outputs: dict[str, str],
        seed: int,
    ) -> str:
        """Everything that determines a call's output (see the module docstring)."""
        request = self.clients[target.name].chat_body(
            "", max_tokens=max(1, self.wf.stage[stage].output_tokens), seed=seed
        )
        request.pop("messages")
        return json_digest(
            {
                "input": text,
                "upstream": outputs,
                "stage": self.stage_pins[stage],
                "model": model,
                "engine": target.engine_id,
                "request": request,
            }
        )

    # -- running --------------------------------------------------------------------------

    async def run(self) -> LabelResult:
        self.out.mkdir(parents=True, exist_ok=True)
        with DirLock(self.out, "label.lock", "label run"):
            check_scorer(self.scorer, self.scorer_name, self.inputs[0])
            cache = open_state(self.out, self.manifest(), self.settings.on_change, self.progress)
            try:
                for c in self.clients.values():
                    await c.open()
                return await self._run(cache)
            finally:
                for c in self.clients.values():
                    await c.close()

    async def _run(self, cache: dict[str, dict]) -> LabelResult:
        t0 = time.monotonic()
        plan, space = self.plan, self.space
        ups = plan.upstream_calls(space)
        key_strs = [key_str(k) for k in plan.call_keys]
        sem = asyncio.Semaphore(self.settings.concurrency)
        total = len(self.inputs) * plan.num_calls
        counts = {"made": 0, "failed": 0, "cached": 0}
        last_report = [0.0]
        results: dict[tuple[str, int], dict | None] = {}
        failures: list[dict] = []
        calls_f = open(self.out / "calls.jsonl", "a", encoding="utf-8")  # noqa: SIM115 - closed below
        self.progress(
            f"{len(self.inputs)} inputs x {plan.num_calls} calls = {total} calls "
            f"({len(cache)} in the cache); naive {len(self.inputs) * plan.num_naive}, "
            f"distinct prefixes {len(self.inputs) * plan.num_prefixes}"
        )

        def report(force: bool = False) -> None:
            now = time.monotonic()
            if force or now - last_report[0] >= self.settings.progress_every_s:
                last_report[0] = now
                done = counts["cached"] + counts["made"]
                rate = counts["made"] / max(now - t0, 1e-9)
                self.progress(
                    f"calls {done}/{total} ({counts['cached']} cached, {counts['failed']} failed) {rate:.1f} calls/s"
                )

        async def call(row: InputRow, k: int, futs: list[asyncio.Future]) -> dict | None:
            up_recs = [await futs[u] for u in ups[k]]
            if any(r is None for r in up_recs):
                return None  # an upstream call failed: this branch cannot run
            s, models = plan.call_keys[k]
            stage = self.wf.stage[s]
            model = space.model_names[dict(models)[s]]
            outputs = {
                space.stage_names[u]: r["text"]
                for u, r in zip(space.upstream[s], up_recs, strict=True)
            }
            seed = call_seed(self.settings.seed, row.text, plan.call_keys[k])
            targets = self.engines[model]
            target = targets[seed % len(targets)]
            digest = self._call_digest(s, model, target, row.text, outputs, seed)
            if digest in cache:
                counts["cached"] += 1
                return cache[digest]
            state = stage_state(stage, row.text, outputs)
            async with sem:
                try:
                    res = await run_stage(
                        stage,
                        self.stage_fns.get(s),
                        model,
                        self.clients[target.name],
                        state,
                        seed=seed,
                    )
                except (UpstreamError, StageFunctionError) as exc:
                    counts["failed"] += 1
                    failures.append(
                        {
                            "input": row.id,
                            "key": key_strs[k],
                            "engine": target.name,
                            "error": str(exc),
                        }
                    )
                    report()
                    return None
            rec = {
                "digest": digest,
                "input": row.id,
                "key": key_strs[k],
                "engine": target.name,
                "text": res.text,
                "prompt_tokens": res.prompt_tokens,
                "completion_tokens": res.completion_tokens,
            }
            calls_f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            calls_f.flush()
            cache[digest] = rec
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
        report(force=True)
        return assemble(self, results, counts, failures, time.monotonic() - t0)


__all__ = ["LabelSettings", "Labeller"]
