"""Scale-out benchmark: the batch routing job on Ray Data (1 and 2 actors) vs the local job,
and serving on Ray Serve (1, 2 and 4 ingress replicas) vs the single-process server.

    python bench/scale_out.py [--rows 300000] [--out bench/results/scale_out.json]
    python bench/scale_out.py --part serve [--replicas 1,2,4] [--duration-s 10]

Serving half (``--part serve``, or ``all``): instant fake engines (one per Qwen model, in
their own process) behind the single-process server (``python -m aragog_jax.serve``, its
own process), then behind ``serve --ray`` with 1, 2 and 4 ingress replicas and one
scheduler deployment on a local Ray cluster started here (``ray.init(num_cpus=2)``).
Each gets a warm-up, then ``--concurrency`` closed-loop clients for ``--duration-s``
(bench/serve_load.py's client, the 3-stage chain workflow): stage dispatches per second
and the overhead per dispatch (a receipt's total time minus its engine time, per stage:
HTTP, relay, routing, scheduling round trips and bookkeeping). A part run alone keeps
the other part's figures in the JSON.

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
import contextlib
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
    ap.add_argument("--part", choices=["all", "route", "serve"], default="all")
    ap.add_argument("--replicas", default="1,2,4")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--duration-s", type=float, default=10.0)
    ap.add_argument(
        "--profile",
        action="store_true",
        help="instead: where one request's time goes on serve --ray (1 client, 1 replica), "
        "hop by hop, with bare Serve and transport floors; writes --profile-out",
    )
    ap.add_argument(
        "--profile-out", default=str(ROOT / "bench" / "results" / "scale_out_profile.json")
    )
    args = ap.parse_args()
    if args.profile:
        profile = bench_profile(args)
        out = Path(args.profile_out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(profile, indent=2) + "\n")
        md = "\n".join(markdown_profile(profile))
        out.with_suffix(".md").write_text(md)
        print(md)
        return
    out = Path(args.out)
    result = json.loads(out.read_text()) if out.exists() else {}
    if "route" in result:  # written before the serving half existed
        result.setdefault("git_sha_route", result.get("git_sha"))
    if args.part in ("all", "route"):
        result.update(bench_route(args))
    if args.part in ("all", "serve"):
        result.update(bench_serve(args))
    from aragog_jax._provenance import git_sha

    result["git_sha"] = git_sha(ROOT)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    md = "\n".join(markdown_route(result) + markdown_serve(result))
    out.with_suffix(".md").write_text(md)
    print(md)


def bench_route(args) -> dict:

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
    return {
        "git_sha_route": git_sha(ROOT),
        "machine": _machine(load_before),
        "router": str(ckpt.relative_to(ROOT)),
        "input_rows": args.rows,
        "shard_rows": args.shard_rows,
        "route": rows,
        "ray_2_vs_1_actor": two / one,
        "ray_1_actor_vs_local": one / rows[0]["rows_per_s"],
    }


def _machine(load_before) -> dict:
    return {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_avg_before": load_before,
        "load_avg_after": os.getloadavg(),
        "shared": True,
    }


def markdown_route(result: dict) -> list[str]:
    if "route" not in result:
        return []
    rows, m = result["route"], result["machine"]
    one, two = rows[1]["rows_per_s"], rows[2]["rows_per_s"]
    return [
        "# Scale-out: batch routing on Ray Data",
        "",
        f"`python bench/scale_out.py --part route --rows {result['input_rows']}` at "
        f"`{result.get('git_sha_route', result['git_sha'])}`; "
        f"{m['cpus']} CPUs, shared with other jobs (load average "
        f"{m['load_avg_before'][0]:.1f} before, {m['load_avg_after'][0]:.1f} after): "
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
        f"{m['cpus']} cores, shared, so scaling is capped by them). 1 actor vs the local "
        f"job: x{one / rows[0]['rows_per_s']:.2f} (Ray's start-up and per-shard writes).",
        "",
    ]


# -- serving on Ray Serve -------------------------------------------------------------------


def _serve_load():
    sys.path.insert(0, str(ROOT / "bench"))
    import serve_load

    return serve_load


def _closed(sl, url: str, args) -> dict:
    """Warm-up, then the measured closed loop; dispatches/s and overhead per dispatch."""
    import asyncio

    import numpy as np

    asyncio.run(sl.closed_loop(url, args.concurrency, 3.0, 10**6, 1, 60.0))  # not reported
    tally, wall = asyncio.run(
        sl.closed_loop(url, args.concurrency, args.duration_s, 10**6, 7, 60.0)
    )
    over = tally.overhead_after_herd or tally.overhead
    return {
        "outcomes": tally.outcomes,
        "requests": tally.sent,
        "stage_dispatches": tally.stages,
        "seconds": wall,
        "dispatches_per_s": tally.stages / wall,
        "overhead_per_dispatch_ms_p50": float(np.median(over)) * 1e3 if over else None,
        "overhead_per_dispatch_ms_mean": float(np.mean(over)) * 1e3 if over else None,
    }


@contextlib.contextmanager
def _fake_fleet(sl):
    """Instant fake engines (one per Qwen model, in their own process) and a fleet file
    of them with bench/serve_load.py's chain workflow; yields the fleet's path."""
    models = sl._family_models("qwen")
    profile_of = sl._profiles_by_model()
    fakes, lines = sl._spawn(
        [
            sys.executable,
            str(ROOT / "bench" / "serve_load.py"),
            "--_fake-engines",
            ",".join(models),
        ],
        r"^ready",
    )
    try:
        with tempfile.TemporaryDirectory() as tmp:
            engines = [
                (f"fake-{i}", ln.split()[1], ln.split()[0], profile_of[ln.split()[1]])
                for i, ln in enumerate(lines[:-1])
            ]
            yield sl._write_fleet(
                Path(tmp), engines, max_queue=1024, deadline_s=60.0, time_scale=1.0
            )
    finally:
        sl._stop(fakes)


def bench_serve(args) -> dict:
    import ray
    from ray import serve

    from aragog_jax._provenance import git_sha
    from aragog_jax.serve_ray import APP_NAME, RayServeConfig, deploy, free_port

    sl = _serve_load()
    load_before = os.getloadavg()
    rows = []
    with _fake_fleet(sl) as fleet:
        server, url = sl._start_server(fleet)
        try:
            rows.append({"mode": "single process", "replicas": 0, **_closed(sl, url, args)})
        finally:
            sl._stop(server)
        print(f"single process: {rows[-1]['dispatches_per_s']:,.0f} dispatches/s", file=sys.stderr)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        port = free_port()
        try:
            for n in [int(x) for x in args.replicas.split(",")]:
                cfg = RayServeConfig(fleet=str(fleet), replicas=n, replica_cpus=0, scheduler_cpus=0)
                url = deploy(cfg, host="127.0.0.1", port=port)
                rows.append({"mode": "Ray Serve", "replicas": n, **_closed(sl, url, args)})
                print(
                    f"ray x{n}: {rows[-1]['dispatches_per_s']:,.0f} dispatches/s",
                    file=sys.stderr,
                )
                serve.delete(APP_NAME)
        finally:
            serve.shutdown()
            ray.shutdown()
    return {
        "git_sha_serve": git_sha(ROOT),
        "machine_serve": _machine(load_before),
        "serve": rows,
        "serve_concurrency": args.concurrency,
        "serve_duration_s": args.duration_s,
    }


# -- where the time goes (--profile) ---------------------------------------------------------


async def _sequential(url: str, duration_s: float, path: str = "") -> list[dict]:
    """One client, one request after the other for ``duration_s``: the client's time per
    request and, for workflow runs, the receipt's total and engine time."""
    import aiohttp

    sl = _serve_load()
    out = []
    async with aiohttp.ClientSession() as http:
        stop_at = time.perf_counter() + duration_s
        i = 0
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            if path:
                async with http.post(f"{url}{path}", data=b"x") as r:
                    await r.read()
                    assert r.status == 200, r.status
                out.append({"client_s": time.perf_counter() - t0})
                continue
            body = {"input": sl.INPUTS[i % len(sl.INPUTS)]}
            i += 1
            async with http.post(f"{url}/v1/workflows/{sl.WORKFLOW}/runs", json=body) as r:
                rec = (await r.json())["receipt"]
                assert r.status == 200, rec
            dt = time.perf_counter() - t0
            out.append(
                {
                    "client_s": dt,
                    "total_s": rec["total_s"],
                    "engine_s": sum(st["run_s"] for st in rec["stages"]),
                    "routing_s": rec["routing_s"],
                    "stages": len(rec["stages"]),
                }
            )
    return out


def _p50_ms(rows: list[dict], key: str) -> float:
    import numpy as np

    return float(np.median([r[key] for r in rows])) * 1e3


def _floors(n: int):
    """A bare Serve application (no aragog code): an echo behind Serve's proxy, and one
    replica timing calls to another deployment through a Serve handle and over plain
    keep-alive HTTP to an aiohttp server in that deployment (the two transports a
    replica can reach the scheduler by)."""
    import aiohttp
    from aiohttp import web
    from ray import serve

    @serve.deployment(name="echo_target", logging_config={"enable_access_log": False})
    class Target:
        def __init__(self):
            self.url = ""

        async def ping(self, x):
            return x

        async def http_url(self) -> str:
            if not self.url:
                app = web.Application()

                async def echo(request):
                    return web.Response(body=await request.read())

                app.router.add_post("/x", echo)
                runner = web.AppRunner(app, access_log=None)
                await runner.setup()
                site = web.TCPSite(runner, "127.0.0.1", 0)
                await site.start()
                self.url = f"http://127.0.0.1:{runner.addresses[0][1]}/x"
            return self.url

    @serve.deployment(name="echo", logging_config={"enable_access_log": False})
    class Echo:
        def __init__(self, target):
            self.target = target

        async def __call__(self, request):
            return await request.body()

        async def transports(self, n: int) -> dict[str, list[float]]:
            out = {"serve_handle": [], "http": []}
            url = await self.target.http_url.remote()
            async with aiohttp.ClientSession() as http:
                for _ in range(n):
                    t0 = time.perf_counter()
                    await self.target.ping.remote(b"x" * 200)
                    out["serve_handle"].append(time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    async with http.post(url, data=b"x" * 200) as r:
                        await r.read()
                    out["http"].append(time.perf_counter() - t0)
            return out

    return Echo.options(ray_actor_options={"num_cpus": 0}).bind(
        Target.options(ray_actor_options={"num_cpus": 0}).bind()
    )


def bench_profile(args) -> dict:
    """Where one request's time goes on ``serve --ray`` (1 replica, 1 client, instant fake
    engines), against the single-process server and a bare Serve echo in the same run."""
    import asyncio

    import numpy as np
    import ray
    from ray import serve

    from aragog_jax._provenance import git_sha
    from aragog_jax.serve_ray import APP_NAME, RayServeConfig, deploy, free_port

    sl = _serve_load()
    load_before = os.getloadavg()
    dur = args.duration_s
    result: dict = {}
    with _fake_fleet(sl) as fleet:
        server, url = sl._start_server(fleet)
        try:
            asyncio.run(_sequential(url, 2.0))  # warm-up
            single = asyncio.run(_sequential(url, dur))
        finally:
            sl._stop(server)
        print(f"single process: {len(single)} requests", file=sys.stderr)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            port = free_port()
            cfg = RayServeConfig(fleet=str(fleet), replicas=1, replica_cpus=0, scheduler_cpus=0)
            url = deploy(cfg, host="127.0.0.1", port=port)
            asyncio.run(_sequential(url, 3.0))  # warm-up (not in the timings below)
            ingress = serve.get_deployment_handle("ingress", APP_NAME)
            sched = serve.get_deployment_handle("scheduler", APP_NAME)
            t_before = ingress.timings.remote().result()
            h_before = sched.timings.remote().result()
            on_ray = asyncio.run(_sequential(url, dur))
            counts = {k: v["count"] for k, v in t_before.items()}
            t_after = ingress.timings.remote(counts).result()
            counts = {k: v["count"] for k, v in h_before.items()}
            h_after = sched.timings.remote(counts).result()
            print(f"ray: {len(on_ray)} requests", file=sys.stderr)
            serve.delete(APP_NAME)
            echo = serve.run(_floors(200), name="floor", route_prefix="/echo")
            asyncio.run(_sequential(url, 1.0, "/echo"))
            bare = asyncio.run(_sequential(url, dur, "/echo"))
            transports = echo.transports.remote(300).result()
            serve.delete("floor")
        finally:
            serve.shutdown()
            ray.shutdown()
    calls = t_after["exchange"]["count"] - t_before["exchange"]["count"]
    services = h_after["service"]["count"] - h_before["service"]["count"]
    per_req = calls / len(on_ray)
    stages = on_ray[0]["stages"]
    client = _p50_ms(on_ray, "client_s")
    total = _p50_ms(on_ray, "total_s")
    engine = _p50_ms(on_ray, "engine_s")
    relay = t_after["relay"]["p50_ms"]
    exchange = t_after["exchange"]["p50_ms"]
    service = h_after["service"]["p50_ms"]
    # on the critical path: one call per stage (its add, or the previous stage's end,
    # returning the stage's assignment); the last stage's end is sent after the reply
    on_path = stages * exchange
    routing = _p50_ms(on_ray, "routing_s")
    s_client, s_total = _p50_ms(single, "client_s"), _p50_ms(single, "total_s")
    s_engine, s_routing = _p50_ms(single, "engine_s"), _p50_ms(single, "routing_s")
    # (hop, ms on Ray, ms in one process or None where one process has no such hop)
    hops = [
        ("client -> Serve proxy -> replica __call__ and back", client - relay, None),
        (
            "__call__ relay to the replica's server on loopback and back (one process: "
            "client to server and back)",
            relay - total,
            s_client - s_total,
        ),
        ("routing (the router, in the replica)", routing, s_routing),
        (
            f"scheduler calls on the path ({stages} per request): transport (HTTP)",
            stages * (exchange - service),
            None,
        ),
        (
            f"scheduler calls on the path ({stages} per request): in the host",
            stages * service,
            None,
        ),
        ("engine calls (instant fake engines)", engine, s_engine),
        (
            "the rest in the server (bookkeeping, dispatch; one process: and its rounds)",
            total - engine - on_path - routing,
            s_total - s_engine - s_routing,
        ),
    ]
    result = {
        "git_sha": git_sha(ROOT),
        "machine": _machine(load_before),
        "command": f"python bench/scale_out.py --profile --duration-s {dur:g}",
        "duration_s": dur,
        "workflow": sl.WORKFLOW,
        "stages_per_request": stages,
        "single_process": {
            "requests": len(single),
            "client_ms_p50": s_client,
            "receipt_total_ms_p50": s_total,
            "engine_ms_p50": s_engine,
            "overhead_per_dispatch_ms_p50": float(
                np.median([(r["total_s"] - r["engine_s"]) / r["stages"] for r in single])
            )
            * 1e3,
        },
        "ray_serve_1_replica": {
            "requests": len(on_ray),
            "client_ms_p50": client,
            "receipt_total_ms_p50": total,
            "engine_ms_p50": engine,
            "overhead_per_dispatch_ms_p50": float(
                np.median([(r["total_s"] - r["engine_s"]) / r["stages"] for r in on_ray])
            )
            * 1e3,
            "relay_ms_p50": relay,
            "scheduler_call_ms_p50": exchange,
            "scheduler_call_ms_p90": t_after["exchange"]["p90_ms"],
            "host_service_ms_p50": service,
            "round_ms_p50": h_after["round"]["p50_ms"],
            "scheduler_calls_with_events_per_request": per_req,
            "host_calls_with_events_per_request": services / len(on_ray),
        },
        "breakdown_ms_per_request": [
            {"hop": h, "ms": ms, "single_process_ms": one} for h, ms, one in hops
        ],
        "floors": {
            "bare_serve_echo_client_ms_p50": _p50_ms(bare, "client_s"),
            "serve_handle_call_ms_p50": float(np.median(transports["serve_handle"])) * 1e3,
            "http_call_ms_p50": float(np.median(transports["http"])) * 1e3,
        },
    }
    return result


def markdown_profile(p: dict) -> list[str]:
    m, r, f = p["machine"], p["ray_serve_1_replica"], p["floors"]
    s = p["single_process"]
    return [
        "# Where a request's time goes on serve --ray",
        "",
        f"`{p['command']}` at `{p['git_sha']}`: one client, one request after the other, "
        f"instant fake engines, the {p['stages_per_request']}-stage chain workflow; "
        f"`serve --ray` with 1 ingress replica. {m['cpus']} CPUs shared with other jobs "
        f"(load average {m['load_avg_before'][0]:.1f} before, {m['load_avg_after'][0]:.1f} "
        "after): compare within this page only. Medians (p50) of "
        f"{r['requests']} requests on Ray and {s['requests']} in one process.",
        "",
        "| hop (per request, p50) | Ray Serve, 1 replica (ms) | single process (ms) |",
        "|---|---:|---:|",
        *(
            f"| {b['hop']} | {b['ms']:.2f} | "
            + ("-" if b["single_process_ms"] is None else f"{b['single_process_ms']:.2f}")
            + " |"
            for b in p["breakdown_ms_per_request"]
        ),
        f"| **client's time per request** | **{r['client_ms_p50']:.2f}** | "
        f"**{s['client_ms_p50']:.2f}** |",
        "",
        "Each row is a median of its own, so the rows need not add up to the total exactly.",
        "",
        f"Single process, same run: {s['client_ms_p50']:.2f} ms per request, overhead "
        f"{s['overhead_per_dispatch_ms_p50']:.2f} ms per dispatch; on Ray "
        f"{r['overhead_per_dispatch_ms_p50']:.2f} ms per dispatch. A scheduler call takes "
        f"{r['scheduler_call_ms_p50']:.2f} ms (p90 {r['scheduler_call_ms_p90']:.2f}) as "
        f"the replica waits for it, of which {r['host_service_ms_p50']:.2f} ms in the host "
        f"(a round's decision {r['round_ms_p50']:.2f} ms); "
        f"{r['scheduler_calls_with_events_per_request']:.1f} calls with events per "
        "request (one per stage on the path, the last stage's end after the reply).",
        "",
        "Floors measured in the same run with no aragog code: a bare Serve echo through "
        f"the proxy {f['bare_serve_echo_client_ms_p50']:.2f} ms per request; from inside a "
        f"replica, a Serve handle call to another deployment {f['serve_handle_call_ms_p50']:.2f} "
        f"ms, a keep-alive HTTP call to an aiohttp server in it {f['http_call_ms_p50']:.2f} ms.",
        "",
    ]


def markdown_serve(result: dict) -> list[str]:
    if "serve" not in result:
        return []
    rows, m = result["serve"], result["machine_serve"]
    single = rows[0]["dispatches_per_s"]
    ray_rows = [r for r in rows if r["replicas"]]
    out = [
        "# Scale-out: serving on Ray Serve",
        "",
        f"`python bench/scale_out.py --part serve --concurrency {result['serve_concurrency']} "
        f"--duration-s {result['serve_duration_s']:g}` at `{result['git_sha_serve']}`; instant "
        f"fake engines, the 3-stage chain workflow, closed loop; {m['cpus']} CPUs shared with "
        f"other jobs (load average {m['load_avg_before'][0]:.1f} before, "
        f"{m['load_avg_after'][0]:.1f} after): compare within this table only.",
        "",
        "| mode | ingress replicas | requests | stage dispatches/s "
        "| overhead per dispatch p50 (ms) | vs single process |",
        "|---|---:|---:|---:|---:|---:|",
        *(
            f"| {r['mode']} | {r['replicas'] or '-'} | {r['requests']:,} | "
            f"{r['dispatches_per_s']:,.0f} | {r['overhead_per_dispatch_ms_p50']:.2f} | "
            f"x{r['dispatches_per_s'] / single:.2f} |"
            for r in rows
        ),
        "",
    ]
    if len(ray_rows) > 1:
        base = ray_rows[0]
        per = [
            f"{r['replicas']} vs {base['replicas']}: x{r['dispatches_per_s'] / base['dispatches_per_s']:.2f}"
            for r in ray_rows[1:]
        ]
        out += [
            f"Replicas ({'; '.join(per)}). The machine has {m['cpus']} cores shared by every "
            "replica, the scheduler, Serve's proxy and controller, the fake engines and the "
            "load generator, so adding replicas adds no core here: the ratio per added core "
            "cannot be measured above x1 on this machine, and what the table shows is the "
            "cost of the extra processes. Outcomes other than 200 are in the JSON.",
            "",
        ]
    return out


if __name__ == "__main__":
    main()
