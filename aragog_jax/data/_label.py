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
import hashlib
import inspect
import json
import numbers
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from aragog_jax._files import DirLock, atomic_write, remove_durably
from aragog_jax._imports import load_callable
from aragog_jax._provenance import git_sha
from aragog_jax.data._dataset import SPLITS, AccuracyDataset, save_dataset
from aragog_jax.engines.client import ClientLimits, EngineClient
from aragog_jax.engines.stages import load_stage_functions, render_prompt, run_stage, stage_state
from aragog_jax.errors import (
    AragogError,
    DatasetError,
    SpecError,
    StageFunctionError,
    UpstreamError,
)
from aragog_jax.space import ConfigSpace

Scorer = Callable[[dict, str], float]

STATE_FORMAT = "aragog-label-state/2"
ON_CHANGE = ("refuse", "update", "restart")

#: Files a labelling directory holds (removed by ``on_change="restart"``).
OUTPUT_FILES = (
    "meta.json",
    "inputs.jsonl",
    "scores.npy",
    "labelled.npy",
    "label_report.json",
    "calls.jsonl",
    "failures.jsonl",
    "config_failures.jsonl",
    "input_errors.jsonl",
    "label_state.json",
)


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
    ids = (
        np.arange(space.num_configs)
        if config_ids is None
        else np.unique(np.asarray(config_ids, np.int64))
    )
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
    return LabelPlan(ids, list(keys), calls, len(prefixes), space.output_stage, anc)


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
    line: int = 0  # 1-based line in the dataset file


@dataclass
class InputFile:
    """The usable rows of a dataset file and the lines that were not (``{"line", "reason"}``)."""

    path: Path
    rows: list[InputRow]
    bad: list[dict]

    def digest(self) -> str:
        """sha256 of the rows as labelled (id, text, the whole row), in order."""
        h = hashlib.sha256()
        for r in self.rows:
            h.update(
                json.dumps(
                    [r.id, r.text, r.row], sort_keys=True, ensure_ascii=False, default=repr
                ).encode()
                + b"\n"
            )
        return h.hexdigest()


def _type_name(value) -> str:
    return "null" if value is None else type(value).__name__


def _parse_row(line: str, lineno: int, fields: list[str], seen: dict[str, int]) -> InputRow | str:
    """One dataset line -> an InputRow, or the reason it cannot be used."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        return f"bad JSON: {exc}"
    if not isinstance(row, dict):
        return f"expected a JSON object, got {_type_name(row)}"
    name = next((k for k in fields if k in row), None)
    if name is None:
        return f"no {' / '.join(repr(k) for k in fields)} field with the input text"
    text = row[name]
    if not isinstance(text, str):
        return f"{name}: expected a string, got {_type_name(text)}"
    rid = row.get("id", lineno)
    if isinstance(rid, bool) or not isinstance(rid, (str, int)):
        return f"id: expected a string or an integer, got {_type_name(rid)}"
    rid = str(rid)
    if rid in seen:
        return f"id: duplicate id {rid!r} (first on line {seen[rid]})"
    seen[rid] = lineno
    split = row.get("split", "")
    return InputRow(rid, text, split if split in SPLITS else "", row, lineno)


def load_inputs(
    path: str | Path,
    *,
    text_field: str = "",
    split_fractions=(0.6, 0.2, 0.2),
    seed: int = 0,
    limit: int | None = None,
) -> InputFile:
    """Read a JSONL dataset: text from ``text_field`` (default ``input``, else ``text``,
    ``question``; it must be a string), id from ``id`` (a string or an integer; default:
    the line number), split from ``split`` when it names one of train/calibration/test,
    else a seeded assignment by ``split_fractions``. ``limit`` counts usable rows.

    A line that cannot be used (bad JSON, not an object, no text or a non-string one, a
    bad or duplicate id) goes to ``bad`` with its line number; the others are kept.

    Raises:
      DatasetError: no such file, or no usable row in it.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: dataset file not found")
    fr = np.asarray(split_fractions, dtype=np.float64)
    if fr.shape != (3,) or (fr < 0).any() or fr.sum() <= 0:
        raise AragogError(
            f"split fractions must be three non-negative numbers, got {list(split_fractions)}"
        )
    fields = [text_field] if text_field else ["input", "text", "question"]
    rows: list[InputRow] = []
    bad: list[dict] = []
    seen: dict[str, int] = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            parsed = _parse_row(line, lineno, fields, seen)
            if isinstance(parsed, str):
                bad.append({"line": lineno, "reason": parsed})
                continue
            rows.append(parsed)
            if limit is not None and len(rows) >= limit:
                break
    if not rows:
        first = f" (line {bad[0]['line']}: {bad[0]['reason']})" if bad else ""
        raise DatasetError(f"{path}: no usable inputs: {len(bad)} bad lines{first}")
    todo = [r for r in rows if not r.split]
    if todo:
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(todo))
        bounds = np.round(np.cumsum(fr / fr.sum()) * len(todo)).astype(int)
        for rank, i in enumerate(order):
            todo[i].split = SPLITS[
                min(int(np.searchsorted(bounds, rank, side="right")), len(SPLITS) - 1)
            ]
    return InputFile(path, rows, bad)


def load_scorer(spec: str) -> Scorer:
    """``module:function`` or ``path/to/file.py:function`` -> the function (AragogError naming what is wrong)."""
    return load_callable(spec, f"scorer {spec!r}", "aragog_jax.data.scorers:exact_match")


def score_value(value) -> float:
    """A scorer's return value as a float; ValueError saying why it is not a score in [0, 1]."""
    if not isinstance(value, numbers.Real):
        raise ValueError(
            f"scorer returned {_type_name(value)} {value!r:.60}, expected a number in [0, 1]"
        )
    val = float(value)
    if not 0.0 <= val <= 1.0:  # NaN fails too
        raise ValueError(f"scorer returned {val!r}, not in [0, 1]")
    return val


def check_scorer(scorer: Scorer, name: str, first: InputRow) -> None:
    """Refuse a scorer that cannot score: checked on the first input before any engine call.

    Its signature must accept ``(input_row, output_text)``; called with the first input's
    row and an empty output it must return a number in [0, 1] or raise something other
    than ``TypeError`` (a scorer may reject an empty output; that is decided per output
    later).

    Raises:
      AragogError: one line naming the scorer, the input and the problem.
    """
    what = f"scorer {name or getattr(scorer, '__qualname__', repr(scorer))}"
    try:
        inspect.signature(scorer).bind(first.row, "")
    except TypeError as exc:
        raise AragogError(
            f"{what}: cannot be called as scorer(input_row, output_text): {exc}"
        ) from exc
    except ValueError:
        pass  # no introspectable signature (some builtins): the call below tells
    try:
        val = scorer(first.row, "")
    except TypeError as exc:
        raise AragogError(
            f"{what}: calling it with (input_row, output_text) on input {first.id!r} raised TypeError: {exc}"
        ) from exc
    except Exception:  # noqa: BLE001 - may reject an empty output; real outputs decide
        return
    try:
        score_value(val)
    except ValueError as exc:
        raise AragogError(f"{what}: on input {first.id!r}: {exc}") from exc


# -- engines ------------------------------------------------------------------------------


@dataclass(frozen=True)
class EngineTarget:
    """An engine the labeller calls. ``identity`` is what the call cache keys it by
    (default: its URL; ``"emulated"`` for emulated engines, whose replies depend only on
    model, prompt and seed, not on the loopback port they happen to get)."""

    name: str
    model: str  # catalog model name
    url: str
    served_model: str
    identity: str = ""

    @property
    def engine_id(self) -> str:
        return self.identity or self.url.rstrip("/")


def _function_pin(ref: str, fn: Callable) -> str:
    """What the call cache pins for a user function (stage function or scorer): its name (a
    file by its base name, so a moved checkout keeps its cache) and a digest of the source
    file it is defined in (so editing the function, or a helper next to it, changes it)."""
    mod, _, name = ref.rpartition(":")
    try:
        source = Path(fn.__code__.co_filename).read_bytes()
    except (AttributeError, OSError):  # not a plain Python function: its name only
        source = b""
    return f"{Path(mod).name if mod.endswith('.py') else mod}:{name}#{hashlib.sha256(source).hexdigest()[:16]}"


def _call_seed(seed: int, text: str, key: tuple) -> int:
    h = hashlib.blake2b(f"{seed}\x00{text}\x00{key!r}".encode(), digest_size=4).digest()
    return int.from_bytes(h, "little") % 2**31


def _key_str(key: tuple) -> str:
    s, models = key
    return f"{s}:" + ",".join(f"{a}={m}" for a, m in models)


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[
        :32
    ]


# -- the manifest ---------------------------------------------------------------------------


def _short(x) -> str:
    s = str(x)
    return s if len(s) <= 60 else s[:57] + "..."


def describe_changes(old: dict, new: dict) -> list[str]:
    """What differs between two manifests, one short phrase each (empty when equal)."""
    out: list[str] = []
    ow, nw = old.get("workflow", {}), new.get("workflow", {})
    if ow.get("name") != nw.get("name"):
        out.append(f"workflow {ow.get('name')!r} -> {nw.get('name')!r}")
    elif ow != nw:
        ost, nst = {s[0]: s for s in ow.get("stages", [])}, {s[0]: s for s in nw.get("stages", [])}
        fields = ("name", "prompt", "output_tokens", "function")
        for name in [*nst, *(n for n in ost if n not in nst)]:
            a, b = ost.get(name), nst.get(name)
            if a != b:
                what = (
                    "added"
                    if a is None
                    else "removed"
                    if b is None
                    else ", ".join(
                        f
                        for f, x, y in zip(fields, a + [None] * 4, b + [None] * 4, strict=False)
                        if x != y
                    )
                )
                out.append(f"stage {name!r} ({what})")
        if ow.get("fingerprint") != nw.get("fingerprint") and not out:
            out.append("workflow models or stages")
    od, nd = old.get("dataset", {}), new.get("dataset", {})
    if od != nd:
        out.append(
            f"dataset ({od.get('rows')} rows, sha256 {str(od.get('sha256'))[:12]} -> "
            f"{nd.get('rows')} rows, {str(nd.get('sha256'))[:12]})"
        )
    of, nf = old.get("fleet", {}), new.get("fleet", {})
    for name in [*nf, *(n for n in of if n not in nf)]:
        a, b = of.get(name), nf.get(name)
        if a != b:
            if a is None or b is None:
                out.append(f"engine {name!r} {'added' if a is None else 'removed'}")
            else:
                out.append(
                    f"engine {name!r} "
                    + ", ".join(
                        f"{k} {_short(a.get(k))} -> {_short(b.get(k))}"
                        for k in sorted(set(a) | set(b))
                        if a.get(k) != b.get(k)
                    )
                )
    if old.get("scorer") != new.get("scorer"):
        out.append(f"scorer {_short(old.get('scorer'))} -> {_short(new.get('scorer'))}")
    oo, no = old.get("options", {}), new.get("options", {})
    out.extend(
        f"{k} {oo.get(k)!r} -> {no.get(k)!r}"
        for k in sorted(set(oo) | set(no))
        if oo.get(k) != no.get(k)
    )
    return out or (["label_state.json"] if old != new else [])


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
    c_max: int
    config_failures: list[dict] = field(default_factory=list)
    dropped_inputs: list[str] = field(default_factory=list)
    input_errors: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    def report(self) -> dict:
        n, p, ds = self.num_inputs, self.plan, self.dataset
        return {
            "num_inputs": n,
            "num_labelled_configs": int(p.config_ids.size),
            "per_input": {
                "naive_calls": p.num_naive,
                "distinct_prefixes": p.num_prefixes,
                "calls": p.num_calls,
            },
            "total": {
                "naive_calls": n * p.num_naive,
                "distinct_prefixes": n * p.num_prefixes,
                "calls": self.calls_total,
            },
            "this_run": {
                "calls_made": self.calls_made,
                "calls_cached": self.calls_cached,
                "calls_failed": self.calls_failed,
            },
            "config_failures": len(self.config_failures),
            "dropped_inputs": self.dropped_inputs,
            "input_errors": len(self.input_errors),
            "c_max_accuracy": float(ds.scores[:, self.c_max].mean()),
            "splits": {s: ds.splits.count(s) for s in SPLITS},
            "seconds": round(self.seconds, 3),
        }


def _read_call_log(path: Path) -> tuple[dict[str, dict], int]:
    """The cached calls by digest, and how many lines could not be read.

    A last line without its newline is a record torn by a killed run: it is cut off the
    file (so the next record starts on a line of its own) and its call is redone.
    """
    cache: dict[str, dict] = {}
    if not path.is_file():
        return cache, 0
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with open(path, "r+b") as f:
            f.truncate(end)
            os.fsync(f.fileno())
    unreadable = 0
    for line in data[:end].splitlines():
        try:
            rec = json.loads(line)
            cache[rec["digest"]] = rec
        except (ValueError, KeyError, TypeError):
            unreadable += 1
    return cache, unreadable + (end < len(data))


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
                _function_pin(s.function, self.stage_fns[i]) if s.function else "",
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
            "scorer": _function_pin(self.scorer_name, self.scorer),
            "options": {"seed": self.settings.seed, "sample": self.settings.sample},
        }

    def _open_state(self) -> dict[str, dict]:
        """Check (or write) the manifest; return the call cache. Called with the lock held."""
        state_path = self.out / "label_state.json"
        new = self.manifest()
        old = None
        if state_path.is_file():
            try:
                old = json.loads(state_path.read_text())
            except (ValueError, UnicodeDecodeError) as exc:
                raise AragogError(
                    f"{state_path}: unreadable ({exc}); rerun with --restart to start over"
                ) from exc
            if not isinstance(old, dict) or old.get("format") != STATE_FORMAT:
                got = old.get("format") if isinstance(old, dict) else None
                raise AragogError(
                    f"{self.out}: labelled by another labeller version ({got!r}, this one writes "
                    f"{STATE_FORMAT!r}; its call cache is not reusable); rerun with --restart"
                )
        mode = self.settings.on_change
        if old is not None and old != new:
            if mode == "refuse":
                raise AragogError(
                    f"{self.out}: was labelled with something else: {'; '.join(describe_changes(old, new))}; "
                    "rerun with --update to reuse the calls that still match (the rest are redone) "
                    "or --restart to start over"
                )
            self.progress(
                f"labelled with something else before ({'; '.join(describe_changes(old, new))}): {mode}"
            )
        if mode == "restart":
            remove_durably(*(self.out / f for f in OUTPUT_FILES))
            old = None
        if old != new:
            remove_durably(
                self.out / "meta.json"
            )  # the dataset there no longer matches: incomplete until rewritten
            atomic_write(state_path, json.dumps(new, indent=1) + "\n")
        cache, unreadable = _read_call_log(self.out / "calls.jsonl")
        if unreadable:
            self.progress(
                f"calls.jsonl: {unreadable} unreadable line(s) (a torn record is cut off); their calls are redone"
            )
        return cache

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
        return _digest(
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
            cache = self._open_state()
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
        key_strs = [_key_str(k) for k in plan.call_keys]
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
            seed = _call_seed(self.settings.seed, row.text, plan.call_keys[k])
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
        return self._assemble(results, counts, failures, time.monotonic() - t0)

    def _write_jsonl(self, name: str, records: Sequence[dict]) -> None:
        atomic_write(
            self.out / name, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        )

    def _assemble(
        self, results, counts: dict, call_failures: list[dict], seconds: float
    ) -> LabelResult:
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
                    failures.append(
                        {
                            "input": row.id,
                            "config": int(c),
                            "error": "an engine call of this configuration failed",
                        }
                    )
                    continue
                try:
                    val = score_value(self.scorer(row.row, rec["text"]))
                except Exception as exc:  # noqa: BLE001 - a user scorer: record and go on
                    failures.append(
                        {
                            "input": row.id,
                            "config": int(c),
                            "error": f"scorer: {type(exc).__name__}: {exc}",
                        }
                    )
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
        # The latest run's state, whatever happens next (the messages below point here).
        self._write_jsonl("failures.jsonl", call_failures)
        self._write_jsonl("config_failures.jsonl", failures)
        self._write_jsonl("input_errors.jsonl", self.input_file.bad)
        if not rows_kept:
            first = next((f["error"] for f in failures if f["config"] == space.c_max), "?")
            raise AragogError(
                f"no input could be labelled: c_max failed on all {len(self.inputs)} inputs (first error: "
                f"{first}); see {self.out / 'failures.jsonl'} and {self.out / 'config_failures.jsonl'}"
            )
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
            ids=[r.id for r in rows_kept],
            texts=[r.text for r in rows_kept],
            splits=[r.split for r in rows_kept],
            tokens=np.stack(token_rows),
            scores=np.stack(score_rows),
            meta=meta,
            labelled=np.stack(label_rows),
        )
        save_dataset(ds, self.out)
        res = LabelResult(
            out=self.out,
            dataset=ds,
            plan=plan,
            num_inputs=len(self.inputs),
            calls_total=len(self.inputs) * plan.num_calls,
            calls_made=counts["made"],
            calls_cached=counts["cached"],
            calls_failed=counts["failed"],
            c_max=space.c_max,
            config_failures=failures,
            dropped_inputs=dropped,
            input_errors=list(self.input_file.bad),
            seconds=seconds,
        )
        report = {
            "git_sha": git_sha(),
            "workflow": space.workflow,
            "family": self.family,
            "scorer": self.scorer_name,
            "seed": self.settings.seed,
            **self.provenance,
            **res.report(),
        }
        atomic_write(self.out / "label_report.json", json.dumps(report, indent=2) + "\n")
        return res


__all__ = [
    "EngineTarget",
    "InputFile",
    "InputRow",
    "LabelPlan",
    "LabelResult",
    "LabelSettings",
    "Labeller",
    "check_scorer",
    "describe_changes",
    "load_inputs",
    "load_scorer",
    "make_plan",
    "render_prompt",
    "sample_configs",
    "score_value",
]
