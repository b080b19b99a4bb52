"""What a labelling run leaves: the accuracy dataset, the failure lists and the report."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from aragog_jax._files import atomic_write
from aragog_jax._provenance import git_sha
from aragog_jax.data._dataset import SPLITS, AccuracyDataset, save_dataset
from aragog_jax.data._inputs import InputRow, score_value
from aragog_jax.data._plan import LabelPlan
from aragog_jax.errors import AragogError

if TYPE_CHECKING:
    from aragog_jax.data._label import Labeller


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


def write_jsonl(out: Path, name: str, records: Sequence[dict]) -> None:
    atomic_write(out / name, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def assemble(
    lab: Labeller, results, counts: dict, call_failures: list[dict], seconds: float
) -> LabelResult:
    """Score the outputs of ``lab``'s run, write its dataset, failure lists and report."""
    plan, space = lab.plan, lab.space
    num_c, num_s = space.num_configs, space.num_stages
    rows_kept: list[InputRow] = []
    score_rows, label_rows, token_rows = [], [], []
    failures: list[dict] = []
    dropped: list[str] = []
    cmax_pos = int(np.flatnonzero(plan.config_ids == space.c_max)[0])
    for row in lab.inputs:
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
                val = score_value(lab.scorer(row.row, rec["text"]))
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
    write_jsonl(lab.out, "failures.jsonl", call_failures)
    write_jsonl(lab.out, "config_failures.jsonl", failures)
    write_jsonl(lab.out, "input_errors.jsonl", lab.input_file.bad)
    if not rows_kept:
        first = next((f["error"] for f in failures if f["config"] == space.c_max), "?")
        raise AragogError(
            f"no input could be labelled: c_max failed on all {len(lab.inputs)} inputs (first error: "
            f"{first}); see {lab.out / 'failures.jsonl'} and {lab.out / 'config_failures.jsonl'}"
        )
    meta = {
        "workflow": space.workflow,
        "family": lab.family,
        "fingerprint": space.fingerprint(),
        "stage_names": list(space.stage_names),
        "model_names": list(space.model_names),
        "source": "labelled",
        "seed": lab.settings.seed,
        "generator": {
            "labeller": "python -m aragog_jax.label",
            "scorer": lab.scorer_name,
            "sample": lab.settings.sample,
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
    save_dataset(ds, lab.out)
    res = LabelResult(
        out=lab.out,
        dataset=ds,
        plan=plan,
        num_inputs=len(lab.inputs),
        calls_total=len(lab.inputs) * plan.num_calls,
        calls_made=counts["made"],
        calls_cached=counts["cached"],
        calls_failed=counts["failed"],
        c_max=space.c_max,
        config_failures=failures,
        dropped_inputs=dropped,
        input_errors=list(lab.input_file.bad),
        seconds=seconds,
    )
    report = {
        "git_sha": git_sha(),
        "workflow": space.workflow,
        "family": lab.family,
        "scorer": lab.scorer_name,
        "seed": lab.settings.seed,
        **lab.provenance,
        **res.report(),
    }
    atomic_write(lab.out / "label_report.json", json.dumps(report, indent=2) + "\n")
    return res


__all__ = ["LabelResult", "assemble", "write_jsonl"]
