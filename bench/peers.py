"""What a request pays for a smart router: aragog_jax against peer gateways, in one run.

    bash scripts/install_peers.sh          # peers into .venv-peers/ (optional, once)
    python bench/peers.py                  # writes bench/results/peers.json and peers.md
    python bench/peers.py --quick          # 1 round of 1.5 s per cell: a smoke run

One instant OpenAI-compatible backend (the loopback fake engine, in its own process) and
one front per peer pointed at it, all started once and left running:

* ``direct``: the client talks to the backend itself (the reference);
* ``aragog_jax``: ``python -m aragog_jax.serve`` with a one-stage workflow on one
  ``kind = "vllm"`` engine (the backend, no profile), through the OpenAI front
  (``/v1/chat/completions``, ``model = "workflow:single"``): routing, a scheduling round,
  the engine call and the receipt, per request;
* ``vllm-router``: the Rust load balancer (round robin over the one backend);
* ``litellm``: the LiteLLM proxy with the backend as an ``openai/`` model;
* ``aiohttp-proxy``: the floor of aragog_jax's own transport: an aiohttp server (uvloop)
  whose one handler reads the body and posts it unchanged to the backend through one
  pooled aiohttp client session, then answers the backend's bytes: one aiohttp
  request/response pair on each side and nothing else (no parsing, no routing, no round);
* ``python-floor``: the leanest pass-through this project can write in Python: an
  ``asyncio.Protocol`` server parsing with httptools on uvloop, forwarding through
  aragog_jax's own keep-alive engine pool (``engines/_h1.py``), no framework: what any
  Python front pays before it does anything of its own.

A closed-loop client (``--concurrency`` clients, each sending the next request when the
previous one ends) measures each front for ``--duration-s`` seconds per cell; rounds
interleave the fronts (the order rotates every round) so a busy moment of this shared
machine hits every front alike. Per round and concurrency, a front's *added* latency is
its p50 (and p90) minus ``direct``'s p50 (p90) in the same round; the tables give the
median over rounds. CPU per request is the front's process-tree CPU time (Linux /proc)
over the requests it answered: the figure least sensitive to other load on the machine.

A second case, ``chain3``, is a three-stage chain (each stage waits for the one before):
aragog_jax runs it as one workflow request (three scheduling decisions); the peers,
which have no workflows, see the three calls sent one after the other by the client,
as an agent framework would. Its added latency is per stage: (front − direct) / 3.

``--baseline DIR`` adds front ``aragog_jax@base``: the same server from another checkout
(``git archive main | tar -x -C DIR``), measured in the same interleaved rounds, so a
change's before and after share the machine's conditions (``peers_fastround.md``).

Peers that are not installed are left out with the reason (run scripts/install_peers.sh).
The result JSON carries the git SHA, the load average and the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import _cpu_model, _spawn, _start_server, _stop  # noqa: E402

from aragog_jax._provenance import git_sha  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PROFILES = ROOT / "profiles"
PEERS = ROOT / ".venv-peers"
SERVED = "bench-model"  # the backend's served model name
MODEL = "Qwen2.5-7B-Instruct"  # a catalog model for aragog_jax's workflow spec
TEXT = "Write a function that reverses a string."
#: The backend's reported ``max_num_seqs``: vLLM's default for its OpenAI server on a GPU
#: under 70 GiB (``EngineArgs.get_batch_defaults`` in vllm/engine/arg_utils.py of the
#: vLLM the tests install: 256; 1024 on H100/H200-class GPUs). Without
#: it an unprofiled engine would get the 16-slot placeholder and aragog_jax would hold
#: 112 of 128 clients' calls in its queue while the peers pass them all through.
BACKEND_MAX_NUM_SEQS = 256
FRONTS = ("direct", "aragog_jax", "aiohttp-proxy", "python-floor", "vllm-router", "litellm")
BASE = "aragog_jax@base"  # --baseline: the same server from another checkout


# -- processes ----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and all its live descendants (Linux /proc)."""
    tck = os.sysconf("SC_CLK_TCK")
    stats: dict[int, tuple[int, float]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        stats[int(d.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tck)
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        total += stats.get(p, (0, 0.0))[1]
        todo += [c for c, (ppid, _) in stats.items() if ppid == p]
    return total


def _backend_main() -> None:
    """Child process: the instant backend; prints its URL."""
    from aragog_jax.serving import FakeEngine, LoopbackServer

    async def go():
        # It reports vLLM's default capacity, as a real engine does on /server_info (or
        # through /metrics' KV cache size): aragog_jax reads it and lets that many calls in,
        # the peers do not limit at all (BACKEND_MAX_NUM_SEQS).
        srv = LoopbackServer(FakeEngine(SERVED, max_num_seqs=BACKEND_MAX_NUM_SEQS).app)
        print(await srv.start(), flush=True)
        await asyncio.Event().wait()

    asyncio.run(go())


def _proxy_main(backend: str) -> None:
    """Child process: the aiohttp pass-through (front ``aiohttp-proxy``); prints its URL."""
    from aiohttp import web

    try:
        import uvloop
    except ImportError:  # pragma: no cover - the package depends on uvloop where it builds
        uvloop = None

    async def go():
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=4096, limit_per_host=4096)
        )
        target = backend + "/v1/chat/completions"
        headers = {"Content-Type": "application/json"}

        async def chat(request: web.Request) -> web.Response:
            body = await request.read()
            async with session.post(target, data=body, headers=headers) as r:
                raw = await r.read()
                return web.Response(body=raw, status=r.status, content_type="application/json")

        app = web.Application()
        app.router.add_post("/v1/chat/completions", chat)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        port = _free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        print(f"http://127.0.0.1:{port}", flush=True)
        await asyncio.Event().wait()

    if uvloop is not None:
        uvloop.run(go())
    else:
        asyncio.run(go())


def _raw_proxy_main(backend: str) -> None:
    """Child process: the leanest Python pass-through this project can write (front
    ``python-floor``); prints its URL. No framework on either side: an ``asyncio.Protocol``
    server that parses requests with httptools (llhttp) and forwards each body unchanged
    through aragog_jax's own keep-alive engine pool (``engines/_h1.py``), on uvloop. One
    parser callback set and one task per request: what any Python front pays on this
    machine before it does anything of its own."""
    import httptools
    import uvloop

    from aragog_jax.engines._h1 import H1Pool, request_head

    host, port_s = backend.removeprefix("http://").rsplit(":", 1)
    pool = H1Pool(host, int(port_s), max_connections=4096, connect_timeout_s=10.0)
    head = request_head(
        host, int(port_s), "/v1/chat/completions", {"Content-Type": "application/json"}
    )

    class Front(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport
            self.parser = httptools.HttpRequestParser(self)
            self.body: list[bytes] = []

        def data_received(self, data):
            self.parser.feed_data(data)

        def on_body(self, body):
            self.body.append(body)

        def on_message_complete(self):
            body, self.body = b"".join(self.body), []
            asyncio.get_running_loop().create_task(self.forward(body))

        async def forward(self, body):
            res = await pool.post(head, body, 30.0)
            self.transport.write(
                b"HTTP/1.1 %d OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                % (res.status, len(res.body), res.body)
            )

    async def go():
        port = _free_port()
        await asyncio.get_running_loop().create_server(Front, "127.0.0.1", port)
        print(f"http://127.0.0.1:{port}", flush=True)
        await asyncio.Event().wait()

    uvloop.run(go())


def _write_aragog_fleet(tmp: Path, backend: str) -> Path:
    stage = f'input_tokens = 32\noutput_tokens = 16\nmodels = ["{MODEL}"]\n'
    (tmp / "single.toml").write_text(
        f'name = "single"\n[[stage]]\nname = "answer"\n{stage}prompt = "{{input}}"\n'
    )
    chain = ['name = "chain3"']
    for i, name in enumerate(("draft", "review", "final")):
        up = f'upstream = ["{("draft", "review")[i - 1]}"]\n' if i else ""
        ref = "{input}" if not i else "{" + ("draft", "review")[i - 1] + "}"
        chain.append(f'[[stage]]\nname = "{name}"\n{up}{stage}prompt = "{ref}"')
    (tmp / "chain3.toml").write_text("\n".join(chain) + "\n")
    fleet = tmp / "fleet.toml"
    fleet.write_text(
        f'family = "qwen"\nmodels = "{PROFILES / "models.toml"}"\n'
        f'workflows = ["{tmp / "single.toml"}", "{tmp / "chain3.toml"}"]\n'
        f'[[engine]]\nname = "backend"\nmodel = "{MODEL}"\nurl = "{backend}"\nkind = '
        f'"vllm"\nserved_model_name = "{SERVED}"\n'
        "[server]\nport = 0\nmax_queue = 4096\nrequest_deadline_s = 60.0\nmetrics_poll_s = 0.5\n"
    )
    return fleet


async def _wait_http(url: str, timeout_s: float = 180.0) -> None:
    t0 = time.monotonic()
    async with aiohttp.ClientSession() as http:
        while time.monotonic() - t0 < timeout_s:
            try:
                async with http.post(url + "/v1/chat/completions", json=_body(SERVED)) as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.5)
    raise RuntimeError(f"{url} did not answer a chat completion within {timeout_s} s")


def _start_peer(name: str, backend: str, tmp: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(tmp / f"{name}.log", "w")  # noqa: SIM115 (kept open for the process's life)
    if name == "vllm-router":
        exe = PEERS / "vllm-router" / "bin" / "vllm-router"
        cmd = [
            str(exe),
            "--worker-urls",
            backend,
            "--policy",
            "round_robin",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--prometheus-port",
            str(_free_port()),
            "--log-level",
            "error",
        ]
        env = dict(os.environ)
    else:
        exe = PEERS / "litellm" / "bin" / "litellm"
        cfg = tmp / "litellm.yaml"
        cfg.write_text(
            "model_list:\n"
            f"  - model_name: {SERVED}\n    litellm_params:\n      model: openai/{SERVED}\n"
            f"      api_base: {backend}/v1\n      api_key: unused\n"
            "litellm_settings:\n  telemetry: false\n  set_verbose: false\n"
        )
        cmd = [
            str(exe),
            "--config",
            str(cfg),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--num_workers",
            "1",
        ]
        # Offline: the model-cost map ships with the package; no telemetry.
        env = os.environ | {
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "LITELLM_LOG": "ERROR",
            "LITELLM_TELEMETRY": "False",
        }
    proc = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    try:
        asyncio.run(_wait_http(url))
    except RuntimeError:
        _stop(proc)
        raise RuntimeError(
            f"{name} did not start: {(tmp / f'{name}.log').read_text()[-400:]}"
        ) from None
    return proc, url


# -- load ---------------------------------------------------------------------------------


def _body(model: str) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": TEXT}], "max_tokens": 16}


async def closed_loop(
    url: str, model: str, calls: int, concurrency: int, duration_s: float
) -> tuple[list[float], int, float]:
    """Closed loop of ``concurrency`` clients; each request is ``calls`` sequential chat calls.

    Returns (latencies of completed requests, failures, wall seconds).
    """
    lat: list[float] = []
    failures = 0
    body = _body(model)
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as http:
        t0 = time.perf_counter()
        stop_at = t0 + duration_s

        async def worker():
            nonlocal failures
            while time.perf_counter() < stop_at:
                t = time.perf_counter()
                try:
                    for _ in range(calls):
                        async with http.post(url + "/v1/chat/completions", json=body) as r:
                            await r.read()
                            if r.status != 200:
                                raise aiohttp.ClientResponseError(
                                    r.request_info, (), status=r.status
                                )
                except aiohttp.ClientError:
                    failures += 1
                    continue
                lat.append(time.perf_counter() - t)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return lat, failures, wall


# -- the run ------------------------------------------------------------------------------


def _cell(front: str, url: str, case: str, conc: int, duration_s: float, pid: int | None) -> dict:
    calls = 3 if case == "chain3" and not front.startswith("aragog_jax") else 1
    model = (
        f"workflow:{'single' if case == 'single' else 'chain3'}"
        if front.startswith("aragog_jax")
        else SERVED
    )
    c0 = _tree_cpu_s(pid) if pid else 0.0
    lat, failures, wall = asyncio.run(closed_loop(url, model, calls, conc, duration_s))
    cpu = (_tree_cpu_s(pid) - c0) if pid else None
    a = np.asarray(lat) * 1e3 if lat else np.zeros(1)
    return {
        "front": front,
        "case": case,
        "concurrency": conc,
        "completed": len(lat),
        "failed": failures,
        "req_per_s": round(len(lat) / wall, 1),
        "p50_ms": round(float(np.percentile(a, 50)), 3),
        "p90_ms": round(float(np.percentile(a, 90)), 3),
        "p99_ms": round(float(np.percentile(a, 99)), 3),
        "front_cpu_ms_per_request": round(1e3 * cpu / len(lat), 3)
        if cpu is not None and lat
        else None,
        "load_average_1m": round(os.getloadavg()[0], 2),
    }


def summarize(cells: list[dict], fronts: list[str]) -> list[dict]:
    """Median over rounds per (case, concurrency, front); added latency against direct in the same round."""
    rows = []
    keys = sorted(
        {(c["case"], c["concurrency"]) for c in cells}, key=lambda k: (k[0] != "single", k[1])
    )
    for case, conc in keys:
        per_round = [c for c in cells if c["case"] == case and c["concurrency"] == conc]
        direct = {c["round"]: c for c in per_round if c["front"] == "direct"}
        per_stage = 3 if case == "chain3" else 1
        for front in fronts:
            mine = [c for c in per_round if c["front"] == front]
            if not mine:
                continue
            added50 = [
                (c["p50_ms"] - direct[c["round"]]["p50_ms"]) / per_stage
                for c in mine
                if c["round"] in direct
            ]
            added90 = [
                (c["p90_ms"] - direct[c["round"]]["p90_ms"]) / per_stage
                for c in mine
                if c["round"] in direct
            ]
            cpu = [
                c["front_cpu_ms_per_request"]
                for c in mine
                if c["front_cpu_ms_per_request"] is not None
            ]
            rows.append(
                {
                    "case": case,
                    "concurrency": conc,
                    "front": front,
                    "rounds": len(mine),
                    "req_per_s": round(float(np.median([c["req_per_s"] for c in mine])), 1),
                    "p50_ms": round(float(np.median([c["p50_ms"] for c in mine])), 3),
                    "added_p50_ms": round(float(np.median(added50)), 3)
                    if front != "direct"
                    else 0.0,
                    "added_p50_ms_range": [round(min(added50), 3), round(max(added50), 3)]
                    if front != "direct"
                    else [0.0, 0.0],
                    "added_p90_ms": round(float(np.median(added90)), 3)
                    if front != "direct"
                    else 0.0,
                    "cpu_ms_per_request": round(float(np.median(cpu)) / per_stage, 3)
                    if cpu
                    else None,
                    "failed": sum(c["failed"] for c in mine),
                }
            )
    return rows


def targets(rows: list[dict]) -> dict:
    """The issue's targets as same-run ratios (None where a peer is missing)."""

    def get(front, conc, key, case="single"):
        for r in rows:
            if (r["case"], r["concurrency"], r["front"]) == (case, conc, front):
                return r[key]
        return None

    lo, hi = min(r["concurrency"] for r in rows), max(r["concurrency"] for r in rows)
    ours, vr, ll = (
        get("aragog_jax", lo, "added_p50_ms"),
        get("vllm-router", lo, "added_p50_ms"),
        None,
    )
    out = {
        "added_p50_at_1_client_ms": ours,
        "added_p50_vs_vllm_router": round(ours / vr, 2) if ours and vr and vr > 0 else None,
    }
    out["cpu_ms_per_request"] = get("aragog_jax", hi, "cpu_ms_per_request")
    rps, vr_rps, ll = (
        get("aragog_jax", hi, "req_per_s"),
        get("vllm-router", hi, "req_per_s"),
        get("litellm", hi, "req_per_s"),
    )
    out[f"req_per_s_at_{hi}"] = rps
    out["req_per_s_vs_vllm_router"] = round(rps / vr_rps, 2) if rps and vr_rps else None
    out["req_per_s_vs_litellm"] = round(rps / ll, 2) if rps and ll else None
    out["wanted"] = {
        "added_p50_at_1_client_ms": "<= 1.0",
        "added_p50_vs_vllm_router": "<= 3.0",
        "cpu_ms_per_request": "<= 0.6",
        "req_per_s_vs_vllm_router": ">= 0.6",
        "req_per_s_vs_litellm": ">= 8",
    }
    return out


def markdown(doc: dict) -> str:
    lines = [
        "# aragog_jax against peer gateways",
        "",
        "Generated by `"
        + doc.get(
            "command", "python bench/peers.py" + (" --quick" if doc["settings"]["quick"] else "")
        )
        + "` at "
        f"git `{doc['git_sha'][:12]}` on "
        f"{doc['device']}; load average before/after {doc['load_average_before']} / {doc['load_average_after']}. "
        f"{doc['settings']['rounds']} interleaved rounds of {doc['settings']['duration_s']} s per "
        "cell; medians over rounds. "
        "Added latency = front p50 − direct p50 in the same round (per stage for chain3). CPU = "
        "the front's process tree per "
        "request (per stage for chain3).",
        "",
        "Peers: " + ", ".join(f"{k} {v}" for k, v in doc["peers"].items()) + ".",
        "",
        "| case | clients | front | req/s | p50 ms | added p50 ms (range) | added p90 ms | CPU ms/request | failed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["rows"]:
        rng = r["added_p50_ms_range"]
        cpu = "" if r["cpu_ms_per_request"] is None else f"{r['cpu_ms_per_request']:.2f}"
        lines.append(
            f"| {r['case']} | {r['concurrency']} | {r['front']} | {r['req_per_s']:,} | {r['p50_ms']:.2f} | "
            f"{r['added_p50_ms']:.2f} ({rng[0]:.2f}..{rng[1]:.2f}) | {r['added_p90_ms']:.2f} | {cpu} | {r['failed']} |"
        )
    lines += ["", "Targets (issue: the price of a smart router), same-run figures:", ""]
    t = doc["targets"]
    for k, want in t["wanted"].items():
        lines.append(f"- `{k}`: {t.get(k)} (wanted {want})")
    if doc["missing"]:
        lines += ["", "Left out: " + "; ".join(f"{k}: {v}" for k, v in doc["missing"].items())]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    ap.add_argument(
        "--duration-s",
        type=float,
        default=4.0,
        help="seconds per (round, front, concurrency) cell (default 4)",
    )
    ap.add_argument(
        "--concurrency",
        default="1,32,128",
        help="closed-loop clients, comma-separated (default 1,32,128)",
    )
    ap.add_argument(
        "--chain-concurrency",
        default="1,32",
        help="clients for the 3-stage case (default 1,32; empty: skip)",
    )
    ap.add_argument(
        "--fronts", default=",".join(FRONTS), help=f"fronts to measure (default {','.join(FRONTS)})"
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 1 round of 1.5 s per cell; not a comparison",
    )
    ap.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="another checkout of this repository (e.g. `git archive main | tar -x -C DIR`): "
        "its server joins the rounds as front aragog_jax@base, so before/after share conditions",
    )
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "peers.json")
    ap.add_argument("--_backend", dest="backend", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--_proxy", dest="proxy", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_raw_proxy", dest="raw_proxy", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.backend:
        _backend_main()
        return 0
    if args.proxy:
        _proxy_main(args.proxy)
        return 0
    if args.raw_proxy:
        _raw_proxy_main(args.raw_proxy)
        return 0
    if args.quick:
        args.rounds, args.duration_s = 1, 1.5
    concs = [int(c) for c in args.concurrency.split(",") if c]
    chain_concs = [int(c) for c in args.chain_concurrency.split(",") if c]
    fronts = [f for f in args.fronts.split(",") if f]
    if unknown := set(fronts) - set(FRONTS):
        ap.error(f"unknown fronts {sorted(unknown)} (known: {', '.join(FRONTS)})")
    if "direct" not in fronts:
        ap.error(
            "--fronts must include direct (the reference every added latency is measured against)"
        )
    load_before = round(os.getloadavg()[0], 2)
    procs: list[subprocess.Popen] = []
    urls: dict[str, tuple[str, int | None]] = {}
    missing: dict[str, str] = {}
    peers: dict[str, str] = {}
    cells: list[dict] = []
    with tempfile.TemporaryDirectory() as tmpd:
        tmp = Path(tmpd)
        try:
            backend_proc, lines = _spawn([sys.executable, __file__, "--_backend"], r"^http://")
            procs.append(backend_proc)
            backend = lines[-1].strip()
            urls["direct"] = (backend, None)
            if "aragog_jax" in fronts:
                proc, url = _start_server(_write_aragog_fleet(tmp, backend))
                procs.append(proc)
                urls["aragog_jax"] = (url, proc.pid)
                peers["aragog_jax"] = git_sha()[:12]
            if args.baseline is not None:
                if not (args.baseline / "aragog_jax" / "serve.py").exists():
                    ap.error(f"--baseline {args.baseline}: no aragog_jax/serve.py there")
                proc, url = _start_server(_write_aragog_fleet(tmp, backend), tree=args.baseline)
                procs.append(proc)
                urls[BASE] = (url, proc.pid)
                peers[BASE] = str(args.baseline)
                fronts.insert(fronts.index("aragog_jax") + 1 if "aragog_jax" in fronts else 1, BASE)
            if "aiohttp-proxy" in fronts:
                proc, lines = _spawn([sys.executable, __file__, "--_proxy", backend], r"^http://")
                procs.append(proc)
                urls["aiohttp-proxy"] = (lines[-1].strip(), proc.pid)
                peers["aiohttp-proxy"] = f"aiohttp {aiohttp.__version__}"
            if "python-floor" in fronts:
                proc, lines = _spawn(
                    [sys.executable, __file__, "--_raw_proxy", backend], r"^http://"
                )
                procs.append(proc)
                urls["python-floor"] = (lines[-1].strip(), proc.pid)
                peers["python-floor"] = "asyncio.Protocol + httptools, engines/_h1.py pool"
            for name in ("vllm-router", "litellm"):
                if name not in fronts:
                    continue
                venv = PEERS / name
                if not (venv / "bin" / name).exists():
                    missing[name] = f"not installed in {venv} (bash scripts/install_peers.sh)"
                    continue
                try:
                    proc, url = _start_peer(name, backend, tmp)
                except RuntimeError as exc:
                    missing[name] = str(exc)
                    continue
                procs.append(proc)
                urls[name] = (url, proc.pid)
                ver = subprocess.run(
                    [
                        str(venv / "bin" / "python"),
                        "-c",
                        f"import importlib.metadata as m; print(m.version('{name}'))",
                    ],
                    capture_output=True,
                    text=True,
                ).stdout.strip()
                peers[name] = ver or "?"
            order = [f for f in fronts if f in urls]
            for front in order:  # warm-up, not reported
                _cell(front, urls[front][0], "single", 4, 1.0, None)
            cases = [("single", c) for c in concs] + [("chain3", c) for c in chain_concs]
            for rnd in range(args.rounds):
                rot = order[rnd % len(order) :] + order[: rnd % len(order)]
                for case, conc in cases:
                    for front in rot:
                        url, pid = urls[front]
                        cell = _cell(front, url, case, conc, args.duration_s, pid) | {"round": rnd}
                        cells.append(cell)
                        print(json.dumps(cell), flush=True)
        finally:
            for p in reversed(procs):
                _stop(p)
    rows = summarize(cells, [f for f in fronts if f in urls])
    doc = {
        "benchmark": "peers",
        "command": " ".join(["python bench/peers.py", *(sys.argv[1:] if argv is None else argv)]),
        "git_sha": git_sha(),
        "device": f"{_cpu_model()}, {os.cpu_count()} CPUs (shared)",
        "python": platform.python_version(),
        "load_average_before": load_before,
        "load_average_after": round(os.getloadavg()[0], 2),
        "settings": {
            "rounds": args.rounds,
            "duration_s": args.duration_s,
            "concurrency": concs,
            "chain_concurrency": chain_concs,
            "fronts": fronts,
            "quick": args.quick,
        },
        "peers": peers,
        "missing": missing,
        "rows": rows,
        "targets": targets(rows),
        "cells": cells,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    md = markdown(doc)
    args.out.with_suffix(".md").write_text(md)
    print(md)
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")
    if args.quick:
        print("note: --quick is a smoke run (1 short round), not a comparison")
    return 0


if __name__ == "__main__":
    sys.exit(main())
