"""Scale-out benchmark: the batch routing job on Ray Data (1 and 2 actors) vs the local job.

    python bench/scale_out.py [--rows 300000] [--out bench/results/scale_out.json]

One run routes the same generated JSONL input with a shipped router three ways, in this
order: the local job (``python -m aragog_jax.route``, in process), then ``--ray`` with
1 and with 2 actors on a local Ray cluster started here (``ray.init(num_cpus=2)``). Each
job's time is wall time from the command's start to its last output byte, compilation
and (on Ray) actor start-up included; every output is checked to equal the local one.
Writes JSON (git SHA, machine, load average before and after) and a Markdown table.

On a 2-core machine the Ray job cannot scale past the cores: the second actor competes
with the first (and with the Ray processes and anything else running); the table gives
the ratio per added core. Figures from a shared machine are comparable within one run
only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW, FAMILY = "voting_mmlu_pro", "qwen"


def make_input(path: Path, num_rows: int) -> None:
    from aragog_jax.data import generate
    from aragog_jax.space import load_space
    from aragog_jax.space._load import resolve_workflow
    from aragog_jax.spec import load_models, load_workflow

    space = load_space(WORKFLOW, FAMILY)
    wf = load_workflow(resolve_workflow(WORKFLOW), load_models())
    ds = generate(space, wf, num_inputs=min(num_rows, 20000), seed=3, family=FAMILY)
    with open(path, "w") as f:
        for i in range(num_rows):
            f.write(json.dumps({"id": i, "text": f"{ds.texts[i % len(ds.texts)]} #{i}"}) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=300_000)
    ap.add_argument("--shard-rows", type=int, default=32_768)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "scale_out.json"))
    args = ap.parse_args()

    import ray

    from aragog_jax import route as route_cli
    from aragog_jax._provenance import git_sha
    from aragog_jax.route_ray import route_on_ray
    from aragog_jax.router import shipped_router

    ckpt = shipped_router(WORKFLOW, FAMILY)
    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        inp = tmp / "in.jsonl"
        make_input(inp, args.rows)
        local = tmp / "local.jsonl"
        t = time.perf_counter()
        code = route_cli.main(
            ["--router", str(ckpt), "--input", str(inp), "--output", str(local), "--quiet"]
        )
        dt = time.perf_counter() - t
        assert code == 0
        rows.append({"mode": "local job", "actors": 0, "seconds": dt, "rows_per_s": args.rows / dt})
        print(f"local: {args.rows / dt:,.0f} rows/s ({dt:.2f} s)", file=sys.stderr)

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            for actors in (1, 2):
                out = tmp / f"ray{actors}.jsonl"
                t = time.perf_counter()
                s = route_on_ray(
                    ckpt,
                    inp,
                    out,
                    concurrency=actors,
                    shard_rows=args.shard_rows,
                    progress_bars=False,
                )
                dt = time.perf_counter() - t
                assert s.rows == args.rows and out.read_bytes() == local.read_bytes()
                rows.append(
                    {
                        "mode": "Ray Data",
                        "actors": actors,
                        "seconds": dt,
                        "rows_per_s": args.rows / dt,
                    }
                )
                print(f"ray x{actors}: {args.rows / dt:,.0f} rows/s ({dt:.2f} s)", file=sys.stderr)
        finally:
            ray.shutdown()
    one, two = rows[1]["rows_per_s"], rows[2]["rows_per_s"]
    result = {
        "git_sha": git_sha(ROOT),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_avg_before": load_before,
            "load_avg_after": os.getloadavg(),
            "shared": True,
        },
        "router": str(ckpt.relative_to(ROOT)),
        "input_rows": args.rows,
        "shard_rows": args.shard_rows,
        "route": rows,
        "ray_2_vs_1_actor": two / one,
        "ray_1_actor_vs_local": one / rows[0]["rows_per_s"],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    md = [
        "# Scale-out: batch routing on Ray Data",
        "",
        f"`python bench/scale_out.py --rows {args.rows}` at `{result['git_sha']}`; "
        f"{os.cpu_count()} CPUs, shared with other jobs (load average "
        f"{load_before[0]:.1f} before, {result['machine']['load_avg_after'][0]:.1f} after): "
        "compare within this table only.",
        "",
        "| mode | actors | seconds (compile and start-up included) | rows/s |",
        "|---|---:|---:|---:|",
        *(
            f"| {r['mode']} | {r['actors'] or '-'} | {r['seconds']:.2f} | {r['rows_per_s']:,.0f} |"
            for r in rows
        ),
        "",
        f"2 actors vs 1: x{two / one:.2f} for one added core (ideal x2.00; this machine has "
        f"{os.cpu_count()} cores, shared, so scaling is capped by them). 1 actor vs the local "
        f"job: x{one / rows[0]['rows_per_s']:.2f} (Ray's start-up and per-shard writes).",
        "",
    ]
    out.with_suffix(".md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
