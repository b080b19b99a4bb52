"""Where a request's time goes in the live server: timestamps along one request's path at
1 client, and a sampled CPU profile by part at 1/32/128 clients.

    bash scripts/install_peers.sh py-spy        # the profiler, in .venv-peers/py-spy (once)
    python bench/request_profile.py             # writes bench/results/request_profile.{json,md}
    python bench/request_profile.py --trace-only --duration-s 4   # the timestamps only, printed

First the timestamps: the server runs under ``bench/_trace.py`` (wrappers that stamp
``time.perf_counter()`` at each step of a request's path: HTTP in, handler, admit, the
round, dispatch, the engine call's send / response head / body, completion, handler
wake-up, response written; nothing in the package knows of it, so an untraced server pays
nothing), one closed-loop client sends ``--duration-s`` of requests, and each gap's p50 is
reported; the backend is called directly, before and after in the same run, as the floor
of the engine call. Then, on an untraced server:

The setup of ``bench/peers.py`` (one instant OpenAI-compatible backend, ``python -m
aragog_jax.serve`` with a one-stage workflow on one ``kind = "vllm"`` engine, a closed-loop
client on ``/v1/chat/completions``). For each concurrency, py-spy samples the server
process (``--rate`` per second, active samples only, so idle waits in the event loop do
not count) while the client runs; each sample is charged to the part of the request path
its stack is in:

* ``http server``: the fast lane (``serving/_lane``: head parse, response bytes) and
  aiohttp's protocol, parser and response writing (``aiohttp/web_*``, ``http_*``, ``streams``);
* ``handler``: the OpenAI front's handler, validation and the receipt (``serving/_server``, ``_api``,
  ``_wire``, ``_openai``, msgspec; the floor's one handler in ``peers.py``);
* ``routing``: the router and its worker (``router/``, ``serving/_routing``);
* ``round: host``: the scheduler outside JAX (``scheduler/``: packing the ready stages,
  unpacking the decision);
* ``round: kernel``: JAX dispatch under the scheduler (``jax/``, ``jaxlib``);
* ``executor``: the executor and the scheduler port (run state, dispatch, completion);
* ``engine client``: the engine call (``engines/client``, ``engines/_h1``, ``engines/http``,
  httptools, aiohttp's client);
* ``monitor``: the load monitor;
* ``event loop``: asyncio's machinery (tasks, futures, handles, selectors);
* ``other``: anything else (logging, metrics, GC...).

The first part (in the order above) that any frame of a sampled stack is in decides it
(JAX frames under the scheduler count as the kernel). CPU per request = active samples / rate / requests.

The same is done, in the same run and at the same concurrencies, for ``bench/peers.py``'s
``aiohttp-proxy``: the floor of an aiohttp front (one aiohttp server, one pooled aiohttp
client, nothing else), so each part's cost can be read against what the transport alone
pays for it (its ``http server``, ``engine client`` and loop are the same aiohttp and
uvloop code as the server's).

Last, *our code without HTTP*: a child process starts the same server in process with the
same fleet and replaces its engine client's chat call by one that returns at once, then
admits runs straight into the executor and awaits them (``--inprocess-requests`` of them,
at 1 and 64 at a time). Its CPU per request is what aragog_jax's own Python costs a
request (admission, routing, the round, dispatch, the stage wrapper, completion and the
receipt) with no socket, no aiohttp and no backend: with the floor's CPU, the two parts
a request pays.
The wall-clock side comes from the receipts the client reads: ``routing_s`` and the
stage's ``queue_s`` (ready → dispatched, i.e. waiting for and running the round) and
``run_s`` (engine call); the rest of the measured latency is HTTP in and out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import aiohttp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import PEERS, SERVED, _stop, _tree_cpu_s, _write_aragog_fleet  # noqa: E402
from serve_load import _cpu_model, _spawn, _start_server  # noqa: E402

from aragog_jax._provenance import git_sha  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TEXT = "Write a function that reverses a string."

#: (part, pattern on a frame's file path as py-spy prints it: relative to its package root,
#: e.g. ``serving/_sched.py``, ``jax/_src/stages.py``), in priority order: a sample belongs to
#: the first part any frame of its stack matches (an engine call runs under the executor, a
#: round under the executor's round; aiohttp's writer serves both the server and the client).
PARTS = (
    ("round", r"^(scheduler/|kernels/)"),
    ("routing", r"^(router/|serving/_routing)"),
    (
        "engine client",
        r"^(engines/(client|_h1|http|_wire|stages)|httptools/|aiohttp/(client|connector))",
    ),
    ("monitor", r"^(serving/_monitor|engines/gauges)"),
    ("executor", r"^serving/(_executor|_intake|_dispatch|_runs|_sched)"),
    ("handler", r"^(serving/(?!_lane)|msgspec|peers\.py)"),
    ("metrics", r"^prometheus_client/"),
    ("http server", r"^(aiohttp/|serving/_lane)"),
)
PART_RX = tuple((part, re.compile(pat)) for part, pat in PARTS)
JAX = re.compile(r"^(jax|jaxlib)/")
LOOP = re.compile(r"^(asyncio/|selectors\.py|uvloop/)")
FRAME = re.compile(r"^(.*) \((.*?)(?::\d+)?\)$")


def classify(stack: list[str]) -> str:
    """The part of the request path one sampled stack (root first) belongs to."""
    files = [(m.group(2) if (m := FRAME.match(f)) else f) for f in stack]
    for part, rx in PART_RX:
        for depth, path in enumerate(files):
            if rx.search(path):
                if part == "round":
                    below = files[depth + 1 :]
                    return "round: kernel" if any(JAX.search(p) for p in below) else "round: host"
                return part
    if files and LOOP.search(files[-1]):
        # The loop's own C code (uvloop): running callbacks, and also its epoll wait, which
        # py-spy cannot tell from work without native stacks: not charged to the request.
        return "loop (uvloop C code, incl. idle wait)"
    return "other"


def parse_raw(text: str) -> Counter:
    """py-spy's ``--format raw`` (collapsed stacks: ``a;b;c count``) into samples per part."""
    parts: Counter = Counter()
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        parts[classify(stack.split(";"))] += int(count)
    return parts


async def closed_loop(
    url: str, concurrency: int, duration_s: float, model: str = "workflow:single"
) -> dict:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": TEXT}],
        "max_tokens": 16,
    }
    lat, routing, queue, run = [], [], [], []
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as http:
        stop_at = time.perf_counter() + duration_s

        async def worker():
            while time.perf_counter() < stop_at:
                t = time.perf_counter()
                async with http.post(url + "/v1/chat/completions", json=body) as r:
                    doc = await r.json()
                    if r.status != 200:
                        raise RuntimeError(f"server answered {r.status}: {doc}")
                lat.append(time.perf_counter() - t)
                rec = doc["aragog"]["receipt"] if "aragog" in doc else doc.get("receipt")
                if rec:
                    routing.append(rec["routing_s"])
                    queue.append(rec["stages"][0]["queue_s"])
                    run.append(rec["stages"][0]["run_s"])

        await asyncio.gather(*(worker() for _ in range(concurrency)))

    def ms(xs):
        return round(1e3 * float(np.median(xs)), 3) if xs else None

    return {
        "completed": len(lat),
        "p50_ms": ms(lat),
        "routing_p50_ms": ms(routing),
        "queue_p50_ms": ms(queue),
        "engine_p50_ms": ms(run),
    }


def profile_cell(
    pyspy: Path,
    pid: int,
    url: str,
    conc: int,
    duration_s: float,
    rate: int,
    model: str = "workflow:single",
) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".txt", delete=False) as f:
        out = Path(f.name)
    spy = subprocess.Popen(
        [str(pyspy), "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw"]
        + ["--duration", str(int(duration_s) + 1), "--nonblocking", "--output", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.5)  # attached before the load starts
    c0 = _tree_cpu_s(pid)
    wall = asyncio.run(closed_loop(url, conc, duration_s, model))
    cpu = _tree_cpu_s(pid) - c0
    _, err = spy.communicate(timeout=60)
    if spy.returncode != 0:
        raise RuntimeError(f"py-spy failed (exit {spy.returncode}): {err[-400:]}")
    parts = parse_raw(out.read_text())
    out.unlink()
    n = max(1, wall["completed"])
    total = sum(parts.values())
    return {
        "concurrency": conc,
        "duration_s": duration_s,
        **wall,
        "cpu_ms_per_request": round(1e3 * cpu / n, 3),
        "samples": total,
        "sampled_cpu_ms_per_request": round(1e3 * total / rate / n, 3),
        "parts_ms_per_request": {
            k: round(1e3 * v / rate / n, 4) for k, v in sorted(parts.items(), key=lambda kv: -kv[1])
        },
    }


def _inprocess_main(fleet: str, n: int, concurrency: int) -> None:
    """Child process: the server in process, its engine calls answered at once; prints one
    JSON line with the CPU and wall time per request of ``n`` runs at ``concurrency``."""
    import uvloop

    from aragog_jax.engines import client as engine_client
    from aragog_jax.serving._fleet import load_runtime
    from aragog_jax.serving._server import Server

    async def instant_chat(self, prompt, **kw):  # noqa: ANN001 - EngineClient.chat's shape
        return engine_client.ChatResult("ok", 10, 5, "stop", None)

    engine_client.EngineClient.chat = instant_chat

    async def go() -> dict:
        srv = Server(load_runtime(Path(fleet)))
        await srv.start()
        if srv._late_warm is not None:
            await srv._late_warm  # the background compile would share the CPU
        ex = srv.executor

        async def worker(k: int) -> None:
            for _ in range(k):
                await ex.wait(ex.admit("single", TEXT))

        await worker(200)  # warm
        c0, t0 = time.process_time(), time.perf_counter()
        await asyncio.gather(*(worker(n // concurrency) for _ in range(concurrency)))
        cpu, wall = time.process_time() - c0, time.perf_counter() - t0
        done = concurrency * (n // concurrency)
        await srv.stop(0)
        return {
            "concurrency": concurrency,
            "requests": done,
            "cpu_us_per_request": round(1e6 * cpu / done, 1),
            "wall_us_per_request": round(1e6 * wall / done, 1),
        }

    print(json.dumps(uvloop.run(go())), flush=True)


def inprocess_cells(fleet: Path, n: int, concurrencies: tuple[int, ...] = (1, 64)) -> list[dict]:
    """Our code without HTTP (see the module docstring), one child process per concurrency."""
    out = []
    for conc in concurrencies:
        cmd = [sys.executable, __file__, "--_inprocess", str(fleet), str(n), str(conc)]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
        if res.returncode != 0:
            raise RuntimeError(f"in-process cell failed: {res.stderr[-600:]}")
        out.append(json.loads(res.stdout.strip().splitlines()[-1]))
        print("in process", out[-1], flush=True)
    return out


#: The points ``bench/_trace.py`` stamps along a one-stage request, in path order, and what
#: the gap ending at each one is.
POINTS = (
    ("recv", None),
    ("handler", "HTTP in: bytes received -> handler starts (head parse; aiohttp: middleware)"),
    ("admitted", "handler: body decode, validation, admit (run record, deadline timer)"),
    ("round", "waiting for the round (loop turn after admit)"),
    ("routed", "routing and intake (router batch, meta-queue add)"),
    ("planned", "the round: scheduler decision (host path / kernel)"),
    ("dispatched", "plan applied: dispatch bookkeeping"),
    ("task", "stage task created -> running (loop turn)"),
    ("call", "stage setup: prompt render, LM wrapper"),
    ("sent", "engine client: body encode, pooled connection, request written"),
    ("headers", "engine: backend's time + reply parsed"),
    ("replied", "engine client: reply decoded, call returns"),
    ("completed", "stage receipt, scheduler finish, run complete"),
    ("resumed", "handler wakes up (loop turn)"),
    ("response", "handler: receipt and response body encoded"),
    ("finishing", "handler returned -> aiohttp finishes the response (middleware)"),
    ("prepared", "HTTP out: response head prepared"),
    ("written", "HTTP out: response written (fast lane: from the handler's return)"),
)


async def _direct_loop(url: str, n: int) -> list[float]:
    """``n`` sequential chat calls straight to the backend (seconds each)."""
    body = {"model": SERVED, "messages": [{"role": "user", "content": TEXT}], "max_tokens": 16}
    out = []
    async with aiohttp.ClientSession() as http:
        for _ in range(n):
            t = time.perf_counter()
            async with http.post(url + "/v1/chat/completions", json=body) as r:
                await r.read()
            out.append(time.perf_counter() - t)
    return out


def trace_cell(url: str, backend: str, duration_s: float) -> dict:
    """One client for ``duration_s`` against the traced server: per-gap p50 along the
    request's path, and the backend called directly in the same run (the floor)."""

    async def go():
        await closed_loop(url, 1, 1.0)  # warm
        async with aiohttp.ClientSession() as http, http.get(url + "/_trace") as r:
            await r.read()
        direct_a = await _direct_loop(backend, 200)
        wall = await closed_loop(url, 1, duration_s)
        direct_b = await _direct_loop(backend, 200)
        async with aiohttp.ClientSession() as http, http.get(url + "/_trace") as r:
            recs = await r.json()
        return wall, direct_a + direct_b, recs

    wall, direct, recs = asyncio.run(go())
    # The fast lane has no "finishing"/"prepared" (aiohttp's): the points most records have.
    kept = [(p, label) for p, label in POINTS if 2 * sum(p in r for r in recs) > len(recs)]
    names = [p for p, _ in kept]
    full = [r for r in recs if all(p in r for p in names)]
    gaps = {}
    for prev, (point, label) in zip(names, kept[1:], strict=False):
        gaps[point] = {
            "label": label,
            "p50_ms": round(1e3 * float(np.median([r[point] - r[prev] for r in full])), 4),
        }
    inside = [r["written"] - r["recv"] for r in full]
    engine = [r["headers"] - r["sent"] for r in full]
    return {
        "requests": wall["completed"],
        "traced": len(full),
        "latency_p50_ms": wall["p50_ms"],
        "direct_p50_ms": round(1e3 * float(np.median(direct)), 4),
        "inside_server_p50_ms": round(1e3 * float(np.median(inside)), 4),
        "engine_sent_to_headers_p50_ms": round(1e3 * float(np.median(engine)), 4),
        "gaps": gaps,
    }


def trace_markdown(traces: dict) -> list[str]:
    """The 1-client timestamps, one column per traced tree (``this`` and ``baseline``)."""
    names = list(traces)
    L = []
    for name, t in traces.items():
        L.append(
            f"- `{name}`: {t['traced']} traced requests at 1 client; client-side latency p50 "
            f"{t['latency_p50_ms']} ms, of which inside the server (bytes in -> response "
            f"written) {t['inside_server_p50_ms']} ms; the backend called directly in the same "
            f"run: {t['direct_p50_ms']} ms per call (the floor of the engine call)."
        )
    L += [
        "",
        "| step (gap ending at the point) | " + " | ".join(f"{n} p50 ms" for n in names) + " |",
        "|---|" + "---|" * len(names),
    ]
    first = traces[names[0]]
    for point, g in first["gaps"].items():
        cells = [
            f"{traces[n]['gaps'].get(point, {}).get('p50_ms', float('nan')):.3f}" for n in names
        ]
        L.append(f"| {g['label']} (`{point}`) | " + " | ".join(cells) + " |")
    L.append(
        "| sum of the steps | "
        + " | ".join(f"{sum(g['p50_ms'] for g in traces[n]['gaps'].values()):.3f}" for n in names)
        + " |"
    )
    return L


def markdown(doc: dict) -> str:
    cells = doc["cells"]
    parts = sorted({p for c in cells for p in c["parts_ms_per_request"]})
    order = sorted(parts, key=lambda p: -max(c["parts_ms_per_request"].get(p, 0) for c in cells))
    L = [
        "# Where a request's time goes in the live server",
        "",
        f"Generated by `{doc['command']}` at git `{doc['git_sha'][:12]}` on "
        f"{doc['machine']} (load average before/after {doc['load_before']} / "
        f"{doc['load_after']}); one-stage workflow on an instant backend (the `bench/peers.py` "
        "setup)." + (f" Baseline: `{doc['baseline']}`." if doc.get("baseline") else ""),
        "",
        "## One request's path at 1 client (timestamps, `bench/_trace.py`)",
        "",
        *trace_markdown(doc["trace_1_client"]),
        "",
        f"## CPU by part (py-spy at {doc['rate']} samples/s, {doc['duration_s']} s per "
        "concurrency, untraced server)",
        "",
        "| | " + " | ".join(f"{c['concurrency']} client(s)" for c in cells) + " |",
        "|---|" + "---|" * len(cells),
    ]
    for key, label in (
        ("completed", "requests"),
        ("p50_ms", "latency p50 (ms)"),
        ("routing_p50_ms", "receipt routing_s p50 (ms)"),
        ("queue_p50_ms", "receipt queue_s p50 (ms): waiting for + running the round"),
        ("engine_p50_ms", "receipt run_s p50 (ms): the engine call"),
        ("cpu_ms_per_request", "server CPU per request (ms, /proc)"),
        ("sampled_cpu_ms_per_request", "sampled CPU per request (ms, py-spy)"),
    ):
        L.append(f"| {label} | " + " | ".join(str(c[key]) for c in cells) + " |")
    for p in order:
        L.append(
            f"| CPU ms/request: {p} | "
            + " | ".join(f"{c['parts_ms_per_request'].get(p, 0.0):.3f}" for c in cells)
            + " |"
        )
    if doc.get("floor_cells"):
        L += ["", *floor_markdown(cells, doc["floor_cells"])]
    if doc.get("inprocess"):
        L += [
            "",
            "## Our code without HTTP (the server in process, engine calls answered at once)",
            "",
            "| runs at a time | runs | CPU µs per request | wall µs per request |",
            "|---|---|---|---|",
            *(
                f"| {c['concurrency']} | {c['requests']} | {c['cpu_us_per_request']} | "
                f"{c['wall_us_per_request']} |"
                for c in doc["inprocess"]
            ),
        ]
    return "\n".join(L) + "\n"


def floor_markdown(cells: list[dict], floor: list[dict]) -> list[str]:
    """Each part's CPU per request in the server and in the aiohttp floor, side by side."""
    parts = sorted(
        {p for c in cells + floor for p in c["parts_ms_per_request"]},
        key=lambda p: -max(c["parts_ms_per_request"].get(p, 0) for c in cells + floor),
    )
    L = [
        "## Against the floor: the same profile of `aiohttp-proxy` in the same run",
        "",
        "Sampled CPU ms per request; `aragog` is the server above, `floor` the aiohttp "
        "pass-through (`bench/peers.py`), `extra` their difference.",
        "",
        "| | " + " | ".join(f"{c['concurrency']} cl. aragog | floor | extra" for c in cells) + " |",
        "|---|" + "---|---|---|" * len(cells),
    ]

    def row(label: str, get) -> str:
        out = []
        for a, f in zip(cells, floor, strict=True):
            va, vf = get(a), get(f)
            out.append(f"{va:.3f} | {vf:.3f} | {va - vf:+.3f}")
        return f"| {label} | " + " | ".join(out) + " |"

    L.append(row("requests/s", lambda c: c["completed"] / c["duration_s"]))
    L.append(row("server CPU per request (ms, /proc)", lambda c: c["cpu_ms_per_request"]))
    L.append(row("sampled CPU per request (ms)", lambda c: c["sampled_cpu_ms_per_request"]))
    for p in parts:
        L.append(row(p, lambda c, p=p: c["parts_ms_per_request"].get(p, 0.0)))
    return L


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 32, 128])
    ap.add_argument("--duration-s", type=float, default=8.0, help="seconds per concurrency")
    ap.add_argument("--rate", type=int, default=997, help="py-spy samples per second")
    ap.add_argument(
        "--trace-only",
        action="store_true",
        help="only the timestamped 1-client breakdown (no py-spy; prints, writes nothing)",
    )
    ap.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="another checkout (git archive main | tar -x -C DIR): its server is traced too, "
        "right after this one's, in the same run (before/after side by side)",
    )
    ap.add_argument(
        "--inprocess-requests",
        type=int,
        default=4000,
        help="runs of the in-process part (our code without HTTP); 0 skips it",
    )
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "request_profile.json")
    ap.add_argument("--_inprocess", nargs=3, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._inprocess:
        fleet, n, conc = args._inprocess
        _inprocess_main(fleet, int(n), int(conc))
        return 0
    if args.baseline is not None and not (args.baseline / "aragog_jax" / "serve.py").exists():
        ap.error(f"--baseline {args.baseline}: no aragog_jax/serve.py there")
    pyspy = PEERS / "py-spy" / "bin" / "py-spy"
    if not args.trace_only and not pyspy.exists():
        print(f"error: {pyspy} missing; run: bash scripts/install_peers.sh py-spy", file=sys.stderr)
        return 2
    load_before = round(os.getloadavg()[0], 2)
    cells, floor_cells = [], []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        backend, lines = _spawn(
            [sys.executable, str(Path(__file__).with_name("peers.py")), "--_backend"], r"^http://"
        )
        try:
            backend_url = lines[-1].strip()
            fleet = _write_aragog_fleet(tmp, backend_url)
            trees = {"this": None} | ({"baseline": args.baseline} if args.baseline else {})
            traces = {}
            for name, tree in trees.items():
                server, url = _start_server(fleet, traced=True, tree=tree)
                try:
                    traces[name] = trace_cell(url, backend_url, args.duration_s)
                finally:
                    _stop(server)
                print(name, json.dumps(traces[name]), flush=True)

            if args.trace_only:
                print("\n".join(trace_markdown(traces)))
                return 0
            server, url = _start_server(fleet)
            proxy, lines = _spawn(
                [
                    sys.executable,
                    str(Path(__file__).with_name("peers.py")),
                    "--_proxy",
                    backend_url,
                ],
                r"^http://",
            )
            proxy_url = lines[-1].strip()
            try:
                asyncio.run(closed_loop(url, 4, 2.0))  # warm: connections, first rounds
                asyncio.run(closed_loop(proxy_url, 4, 1.0, SERVED))
                for conc in args.concurrency:
                    cell = profile_cell(pyspy, server.pid, url, conc, args.duration_s, args.rate)
                    print(json.dumps(cell), flush=True)
                    cells.append(cell)
                    cell = profile_cell(
                        pyspy, proxy.pid, proxy_url, conc, args.duration_s, args.rate, SERVED
                    )
                    print("floor", json.dumps(cell), flush=True)
                    floor_cells.append(cell)
            finally:
                _stop(server)
                _stop(proxy)
            inprocess = (
                inprocess_cells(fleet, args.inprocess_requests) if args.inprocess_requests else []
            )
        finally:
            _stop(backend)
    doc = {
        "git_sha": git_sha(),
        "command": "python " + " ".join(["bench/request_profile.py", *(argv or sys.argv[1:])]),
        "machine": f"{_cpu_model()}, {os.cpu_count()} CPUs",
        "load_before": load_before,
        "load_after": round(os.getloadavg()[0], 2),
        "rate": args.rate,
        "duration_s": args.duration_s,
        "baseline": str(args.baseline) if args.baseline else None,
        "trace_1_client": traces,
        "cells": cells,
        "floor_cells": floor_cells,
        "inprocess": inprocess,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(markdown(doc))
    print(markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
