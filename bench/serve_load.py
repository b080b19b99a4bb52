"""Load benchmark of the server: Poisson arrivals and a closed loop, bounded in time and count.

    python bench/serve_load.py                      # writes bench/results/serve_load.json
    python bench/serve_load.py --quick              # a few seconds per phase

Phases (each against a fresh server process started with ``python -m aragog_jax.serve``):

* ``fake``: instant fake engines (one per model of the family, in a separate process),
  Poisson arrivals at each of ``--rates``; the server's own cost dominates.
* ``closed``: the same engines, ``--concurrency`` clients each sending the next request
  as soon as the previous one ends; gives stage dispatches/s sustained and the
  overhead per stage dispatch at that concurrency.
* ``emulated``: the emulated engines of the embedded default fleet (profiles, time
  scale 10), Poisson arrivals at ``--emulated-rate`` and at ``--overload`` times it.
* ``disconnect``: fake engines answering after ``--disconnect-delay-s``; ``--max-queue``
  clients fill the meta-queue and hang up mid-request. Reports how long the server took
  to count them all cancelled (``freed_ms``) and how many scheduling rounds ran
  meanwhile (``rounds_while_freeing``, at most 1 passes), then sends as many new
  requests, which must all be admitted (no 429) and complete.

Per phase the JSON has completed / rejected (429) / unavailable (503) / failed (other
5xx) / expired (504) / lost (connection errors) / hung (no answer within the deadline
plus a margin) counts, latency percentiles of completed runs, and the overhead per stage
dispatch: for the benchmark's chain workflow (every stage waits for the previous one),
``(total_s - sum of stage run_s) / num_stages`` from each receipt: time the server spent
routing, scheduling, queueing and bookkeeping, not waiting for an engine. Closed-loop
phases also report it without the first ``--concurrency`` requests, which all arrive in
one burst on new connections (``overhead_per_dispatch_ms_after_first_wave``).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import platform
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import numpy as np

from aragog_jax._provenance import git_sha

ROOT = Path(__file__).resolve().parents[1]
PROFILES = ROOT / "profiles"
WORKFLOW = "self_refine_humaneval"  # a chain: generate -> critique -> refine
INPUTS = [
    "def add(a, b): return the sum of two integers",
    "Write a function that reverses a string.",
    "def is_palindrome(s): check whether s reads the same backwards",
    "Return the n-th Fibonacci number iteratively.",
]


# -- processes ----------------------------------------------------------------------------


def _fake_engines_main(models: list[str], delay_s: float) -> None:
    """Child process: one fake engine per model answering after ``delay_s``; prints 'URL model' lines."""
    from aragog_jax.serving import FakeEngine, LoopbackServer

    async def go():
        servers = []
        for m in models:
            srv = LoopbackServer(FakeEngine(m, delay_s=delay_s).app)
            print(await srv.start(), m, flush=True)
            servers.append(srv)
        print("ready", flush=True)
        await asyncio.Event().wait()

    asyncio.run(go())


def _spawn(
    cmd: list[str], pattern: str, timeout_s: float = 120.0
) -> tuple[subprocess.Popen, list[str]]:
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True
    )
    lines = []
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{cmd[:4]} exited with {proc.poll()} before '{pattern}'")
        lines.append(line.strip())
        if re.search(pattern, line):
            return proc, lines
    proc.kill()
    raise RuntimeError(f"{cmd[:4]} did not print '{pattern}' within {timeout_s} s")


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc), 0.0 where unavailable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def _measured(fn, pid: int):
    """Run ``fn()`` (returns (tally, wall)) and also return the server's CPU seconds."""
    c0 = _cpu_s(pid)
    tally, wall = fn()
    return tally, wall, _cpu_s(pid) - c0


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            proc.kill()


def _profiles_by_model() -> dict[str, str]:
    from aragog_jax.spec import load_fleet

    fleet_file = PROFILES / "fleets" / "qwen_4gpu.toml"
    return {
        e.model: str((fleet_file.parent / e.profile).resolve())
        for e in load_fleet(fleet_file).engine
    }


def _family_models(family: str) -> list[str]:
    from aragog_jax.spec import load_models

    return list(load_models().families[family])


def _write_fleet(
    tmp: Path,
    engines: list[tuple[str, str, str, str]],
    *,
    max_queue: int,
    deadline_s: float,
    time_scale: float,
) -> Path:
    """engines: (name, model, url, profile path or '')."""
    wf = PROFILES / "workflows" / f"{WORKFLOW}.toml"
    lines = ['family = "qwen"', f'models = "{PROFILES / "models.toml"}"', f'workflows = ["{wf}"]']
    router = PROFILES / "routers" / WORKFLOW / "qwen.npz"
    if router.exists():
        lines += ["[routers]", f'{WORKFLOW} = "{router}"']
    for name, model, url, profile in engines:
        lines += ["[[engine]]", f'name = "{name}"', f'model = "{model}"']
        lines += [f'url = "{url}"', 'kind = "vllm"'] if url else ['kind = "emulated"']
        if profile:
            lines.append(f'profile = "{profile}"')
    lines += [
        "[server]",
        "port = 0",
        f"max_queue = {max_queue}",
        f"request_deadline_s = {deadline_s}",
        "metrics_poll_s = 0.5",
        "engine_timeout_s = 30.0",
        f"time_scale = {time_scale}",
    ]
    path = tmp / f"fleet-{len(list(tmp.iterdir()))}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


LOOP = "auto"  # --loop of the server processes


def _start_server(
    fleet: Path,
    ready_timeout_s: float = 180.0,
    *,
    tree: Path | None = None,
    traced: bool = False,
) -> tuple[subprocess.Popen, str]:
    """``python -m aragog_jax.serve`` on ``fleet`` (from the checkout ``tree`` when given:
    another version of the package, measured side by side; ``traced``: with the
    timestamps of ``bench/_trace.py``)."""
    run = ["-m", "aragog_jax.serve"]
    if traced:
        run = [str(Path(__file__).with_name("_trace.py")), str(tree or ROOT)]
    elif tree is not None:
        run = [
            "-c",
            f"import runpy, sys; sys.path.insert(0, {str(tree)!r}); "
            "runpy.run_module('aragog_jax.serve', run_name='__main__', alter_sys=True)",
        ]
    cmd = [
        sys.executable,
        *run,
        "--fleet",
        str(fleet),
        "--log-level",
        "WARNING",
        "--loop",
        LOOP,
    ]
    proc, lines = _spawn(cmd, r"serving on http://")
    url = re.search(r"(http://\S+)", lines[-1]).group(1)

    async def wait_ready():
        async with aiohttp.ClientSession() as http:
            t0 = time.monotonic()
            while time.monotonic() - t0 < ready_timeout_s:
                async with http.get(url + "/ready") as r:
                    if r.status == 200:
                        return
                await asyncio.sleep(0.5)
        raise RuntimeError(f"server at {url} not ready after {ready_timeout_s} s")

    asyncio.run(wait_ready())  # scheduler buckets compiled
    return proc, url


# -- load ---------------------------------------------------------------------------------


class Tally:
    def __init__(self) -> None:
        self.outcomes: dict[str, int] = {}
        self.latency: list[float] = []
        self.overhead: list[float] = []  # per stage dispatch
        # The same, only for requests sent after the first ``herd`` (closed loop: the
        # concurrency, whose first requests all arrive at once on new connections).
        self.herd = 0
        self.overhead_after_herd: list[float] = []
        self.queue: list[float] = []
        self.routing: list[float] = []
        self.run: list[float] = []
        self.stages = 0
        self.sent = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self._area = 0.0  # time integral of in_flight
        self._t_last = time.perf_counter()
        self._t0 = self._t_last

    def _tick(self, delta: int) -> None:
        now = time.perf_counter()
        self._area += self.in_flight * (now - self._t_last)
        self._t_last = now
        self.in_flight += delta
        self.max_in_flight = max(self.max_in_flight, self.in_flight)

    @property
    def mean_in_flight(self) -> float:
        span = self._t_last - self._t0
        return self._area / span if span > 0 else 0.0

    def add(self, kind: str) -> None:
        self.outcomes[kind] = self.outcomes.get(kind, 0) + 1


async def _one(
    http: aiohttp.ClientSession, url: str, text: str, tally: Tally, hang_after_s: float
) -> None:
    index = tally.sent
    tally.sent += 1
    tally._tick(+1)
    try:
        await _request(http, url, text, tally, hang_after_s, index)
    finally:
        tally._tick(-1)


async def _request(
    http: aiohttp.ClientSession, url: str, text: str, tally: Tally, hang_after_s: float, index: int
) -> None:
    t0 = time.perf_counter()
    try:
        async with http.post(
            f"{url}/v1/workflows/{WORKFLOW}/runs",
            json={"input": text},
            timeout=aiohttp.ClientTimeout(total=hang_after_s),
        ) as r:
            body = await r.read()
            status = r.status
    except TimeoutError:
        tally.add("hung")
        return
    except aiohttp.ClientError:
        tally.add("lost")
        return
    if status == 200:
        rec = json.loads(body)["receipt"]
        tally.add("completed")
        tally.latency.append(time.perf_counter() - t0)
        n = len(rec["stages"])
        tally.stages += n
        tally.overhead.append((rec["total_s"] - sum(s["run_s"] for s in rec["stages"])) / n)
        if index >= tally.herd:
            tally.overhead_after_herd.append(tally.overhead[-1])
        tally.queue.extend(s["queue_s"] for s in rec["stages"])
        tally.routing.append(rec["routing_s"])
        tally.run.extend(s["run_s"] for s in rec["stages"])
    else:
        tally.add(
            {429: "rejected", 503: "unavailable", 504: "expired"}.get(status, f"failed_{status}")
        )


async def poisson(
    url: str, rate: float, duration_s: float, max_requests: int, seed: int, hang_after_s: float
) -> tuple[Tally, float]:
    rng = random.Random(seed)
    tally = Tally()
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as http:
        tasks = []
        t0 = time.perf_counter()
        next_t = 0.0
        while next_t < duration_s and len(tasks) < max_requests:
            delay = t0 + next_t - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(
                asyncio.create_task(_one(http, url, rng.choice(INPUTS), tally, hang_after_s))
            )
            next_t += rng.expovariate(rate)
        await asyncio.gather(*tasks)
        wall = time.perf_counter() - t0
    return tally, wall


async def closed_loop(
    url: str, concurrency: int, duration_s: float, max_requests: int, seed: int, hang_after_s: float
) -> tuple[Tally, float]:
    rng = random.Random(seed)
    tally = Tally()
    tally.herd = concurrency
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as http:
        t0 = time.perf_counter()
        stop_at = t0 + duration_s

        async def worker():
            while time.perf_counter() < stop_at and tally.sent < max_requests:
                await _one(http, url, rng.choice(INPUTS), tally, hang_after_s)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return tally, wall


def _metric(text: str, name: str, **labels: str) -> float:
    """Sum of a Prometheus sample's values over the label sets that carry ``labels``."""
    want = [f'{k}="{v}"' for k, v in labels.items()]
    total = 0.0
    for m in re.finditer(rf"^{re.escape(name)}(\{{[^}}]*\}})? (\S+)$", text, re.M):
        if all(w in (m.group(1) or "") for w in want):
            total += float(m.group(2))
    return total


async def disconnect_wave(url: str, num: int, hang_after_s: float) -> dict:
    """``num`` clients send a run and hang up once all are in flight; then ``num`` more."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    body = json.dumps({"input": INPUTS[0]}).encode()
    raw = (
        f"POST /v1/workflows/{WORKFLOW}/runs HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:

        async def metrics() -> str:
            async with http.get(url + "/metrics") as r:
                return await r.text()

        async def until(cond, what: str) -> tuple[str, bool]:
            t0 = time.perf_counter()
            while not cond(text := await metrics()):
                if time.perf_counter() - t0 > hang_after_s:
                    print(
                        f"disconnect phase: {what} not seen within {hang_after_s} s",
                        file=sys.stderr,
                    )
                    return text, False
                await asyncio.sleep(0.002)
            return text, True

        conns = [await asyncio.open_connection(host, int(port)) for _ in range(num)]
        for _, w in conns:
            w.write(raw)
        before, _ = await until(
            lambda t: _metric(t, "aragog_requests_in_flight") >= num, f"{num} runs in flight"
        )
        cancelled0 = _metric(before, "aragog_requests_total", status="cancelled")
        t_close = time.perf_counter()
        for _, w in conns:
            w.close()
        after, freed = await until(
            lambda t: _metric(t, "aragog_requests_total", status="cancelled") - cancelled0 >= num,
            "the cancellations",
        )
        freed_ms = 1000.0 * (time.perf_counter() - t_close) if freed else None
        rounds = _metric(after, "aragog_scheduling_seconds_count") - _metric(
            before, "aragog_scheduling_seconds_count"
        )
        dispatches = _metric(after, "aragog_stage_dispatches_total", outcome="cancelled") - _metric(
            before, "aragog_stage_dispatches_total", outcome="cancelled"
        )
        tally = Tally()
        await asyncio.gather(*(_one(http, url, INPUTS[1], tally, hang_after_s) for _ in range(num)))
    completed = tally.outcomes.get("completed", 0)
    return {
        "phase": "disconnect",
        "disconnected": num,
        "load_average_1m": round(os.getloadavg()[0], 2),
        "freed_ms": round(freed_ms, 2)
        if freed_ms is not None
        else None,  # None: never counted cancelled
        "rounds_while_freeing": int(rounds),
        "cancelled_dispatches": int(dispatches),
        "sent": num,
        "outcomes": dict(sorted(tally.outcomes.items())),
        "accounted": sum(tally.outcomes.values()) == num,
        "lost": tally.outcomes.get("lost", 0),
        "hung": tally.outcomes.get("hung", 0),
        "freed_within_one_round": freed and rounds <= 1 and completed == num,
    }


def _pct(xs: list[float], ms: bool = True) -> dict[str, float]:
    if not xs:
        return {}
    a = np.asarray(xs) * (1000.0 if ms else 1.0)
    return {f"p{q}": round(float(np.percentile(a, q)), 3) for q in (50, 90, 99)} | {
        "max": round(float(a.max()), 3)
    }


def summarize(name: str, tally: Tally, wall: float, server_cpu_s: float, **extra) -> dict:
    accounted = sum(tally.outcomes.values())
    return {
        "phase": name,
        **extra,
        "load_average_1m": round(
            os.getloadavg()[0], 2
        ),  # the machine is shared: context for the figures
        "wall_s": round(wall, 2),
        "sent": tally.sent,
        "outcomes": dict(sorted(tally.outcomes.items())),
        "accounted": accounted == tally.sent,
        "lost": tally.outcomes.get("lost", 0),
        "hung": tally.outcomes.get("hung", 0),
        "mean_in_flight": round(tally.mean_in_flight, 1),
        "max_in_flight": tally.max_in_flight,
        "completed_per_s": round(tally.outcomes.get("completed", 0) / wall, 1),
        "stage_dispatches_per_s": round(tally.stages / wall, 1),
        # CPU the server process used per completed stage dispatch: independent of how
        # busy the shared machine is (wall-clock figures are not).
        "server_cpu_ms_per_dispatch": round(1000.0 * server_cpu_s / tally.stages, 3)
        if tally.stages
        else None,
        "server_cpu_share": round(server_cpu_s / wall, 2),
        "latency_ms": _pct(tally.latency),
        "overhead_per_dispatch_ms": _pct(tally.overhead),
        # Closed loop: without the first `concurrency` requests (one burst on new
        # connections at the start); Poisson phases: the same as above.
        "overhead_per_dispatch_ms_after_first_wave": _pct(tally.overhead_after_herd),
        "stage_queue_ms": _pct(tally.queue),
        "routing_ms": _pct(tally.routing),
        "stage_run_ms": _pct(tally.run),  # dispatched -> engine reply (engine time + HTTP)
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--rates",
        default="100,200,400",
        help="Poisson rates (requests/s) against instant fake engines",
    )
    ap.add_argument(
        "--concurrency", type=int, default=200, help="closed-loop clients (default 200)"
    )
    ap.add_argument(
        "--emulated-rate",
        type=float,
        default=20.0,
        help="Poisson rate against emulated engines (requests/s)",
    )
    ap.add_argument(
        "--overload",
        type=float,
        default=10.0,
        help="overload factor over --emulated-rate (default 10)",
    )
    ap.add_argument(
        "--duration-s", type=float, default=8.0, help="seconds of arrivals per phase (default 8)"
    )
    ap.add_argument(
        "--max-requests", type=int, default=6000, help="at most this many requests per phase"
    )
    ap.add_argument(
        "--deadline-s", type=float, default=10.0, help="server request deadline (default 10)"
    )
    ap.add_argument(
        "--max-queue", type=int, default=256, help="server meta-queue bound (default 256)"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--loop",
        default="auto",
        choices=["auto", "asyncio", "uvloop"],
        help="the server's event loop (default auto)",
    )
    ap.add_argument("--quick", action="store_true", help="2-second phases, one fake rate")
    ap.add_argument(
        "--phases",
        default="fake,closed_instant,closed_delayed,emulated,disconnect",
        help="which phases to run (default all)",
    )
    ap.add_argument(
        "--disconnect-delay-s",
        type=float,
        default=1.0,
        help="fake-engine reply delay of the 'disconnect' phase: long enough that the first wave is still "
        "running when it hangs up (default 1.0)",
    )
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "serve_load.json")
    ap.add_argument(
        "--engine-delay-s",
        type=float,
        default=0.2,
        help="fake-engine reply delay of the 'closed_delayed' phase, sized so that --concurrency clients "
        "give about 1,000 stage dispatches/s without saturating the CPU (default 0.2)",
    )
    ap.add_argument("--_fake-engines", dest="fake_engines", help=argparse.SUPPRESS)
    ap.add_argument("--_delay", dest="fake_delay", type=float, default=0.0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.fake_engines:
        _fake_engines_main(args.fake_engines.split(","), args.fake_delay)
        return 0
    global LOOP
    LOOP = args.loop
    if args.quick:
        args.duration_s, args.rates = 2.0, args.rates.split(",")[0]
    rates = [float(r) for r in args.rates.split(",") if r]
    phases = set(args.phases.split(","))
    unknown = phases - {"fake", "closed_instant", "closed_delayed", "emulated", "disconnect"}
    if unknown:
        ap.error(f"unknown phases {sorted(unknown)}")
    hang_after = args.deadline_s + 15.0
    models = _family_models("qwen")
    results = []
    with tempfile.TemporaryDirectory() as tmpd:
        tmp = Path(tmpd)
        # The fake engines answer without computing but carry the H100 profiles' slot
        # counts, so the scheduler sees the capacity of the real fleet.
        profile_of = _profiles_by_model()
        delays = [
            d
            for d, ph in (
                (0.0, ("fake", "closed_instant")),
                (args.engine_delay_s, ("closed_delayed",)),
            )
            if set(ph) & phases
        ]
        for delay in delays:
            fakes, lines = _spawn(
                [
                    sys.executable,
                    __file__,
                    "--_fake-engines",
                    ",".join(models),
                    "--_delay",
                    str(delay),
                ],
                r"^ready",
            )
            try:
                engines = [
                    (f"fake-{i}", ln.split()[1], ln.split()[0], profile_of[ln.split()[1]])
                    for i, ln in enumerate(lines[:-1])
                ]
                fleet = _write_fleet(
                    tmp,
                    engines,
                    max_queue=max(args.max_queue, args.concurrency),
                    deadline_s=args.deadline_s,
                    time_scale=1.0,
                )
                server, url = _start_server(fleet)
                try:
                    asyncio.run(
                        poisson(url, 20.0, 1.0, 20, args.seed, hang_after)
                    )  # warm-up, not reported
                    if delay == 0.0 and "fake" in phases:
                        for i, rate in enumerate(rates):
                            tally, wall, cpu = _measured(
                                lambda: asyncio.run(
                                    poisson(
                                        url,
                                        rate,
                                        args.duration_s,
                                        args.max_requests,
                                        args.seed + i,
                                        hang_after,
                                    )
                                ),
                                server.pid,
                            )  # noqa: B023
                            results.append(
                                summarize("fake", tally, wall, cpu, rate=rate, engine_delay_s=delay)
                            )
                            print(json.dumps(results[-1]), flush=True)
                    if delay == 0.0 and "closed_instant" not in phases:
                        continue
                    tally, wall, cpu = _measured(
                        lambda: asyncio.run(
                            closed_loop(
                                url,
                                args.concurrency,
                                args.duration_s,
                                args.max_requests,
                                args.seed,
                                hang_after,
                            )
                        ),
                        server.pid,
                    )  # noqa: B023
                    name = "closed_instant" if delay == 0.0 else "closed_delayed"
                    results.append(
                        summarize(
                            name,
                            tally,
                            wall,
                            cpu,
                            concurrency=args.concurrency,
                            engine_delay_s=delay,
                        )
                    )
                    print(json.dumps(results[-1]), flush=True)
                finally:
                    _stop(server)
            finally:
                _stop(fakes)
        if "disconnect" in phases:
            fakes, lines = _spawn(
                [
                    sys.executable,
                    __file__,
                    "--_fake-engines",
                    ",".join(models),
                    "--_delay",
                    str(args.disconnect_delay_s),
                ],
                r"^ready",
            )
            try:
                engines = [
                    (f"fake-{i}", ln.split()[1], ln.split()[0], profile_of[ln.split()[1]])
                    for i, ln in enumerate(lines[:-1])
                ]
                fleet = _write_fleet(
                    tmp,
                    engines,
                    max_queue=args.max_queue,
                    deadline_s=args.deadline_s,
                    time_scale=1.0,
                )
                server, url = _start_server(fleet)
                try:
                    asyncio.run(
                        poisson(url, 20.0, 1.0, 20, args.seed, hang_after)
                    )  # warm-up, not reported
                    results.append(
                        asyncio.run(disconnect_wave(url, args.max_queue, hang_after))
                        | {"engine_delay_s": args.disconnect_delay_s}
                    )
                    print(json.dumps(results[-1]), flush=True)
                finally:
                    _stop(server)
            finally:
                _stop(fakes)
        fleet_file = PROFILES / "fleets" / "qwen_4gpu.toml"
        from aragog_jax.spec import load_fleet

        if "emulated" not in phases:
            fleet_file = None

        emu = (
            [
                (e.name, e.model, "", str((fleet_file.parent / e.profile).resolve()))
                for e in load_fleet(fleet_file).engine
            ]
            if fleet_file
            else []
        )
        server = None
        if emu:
            fleet = _write_fleet(
                tmp, emu, max_queue=args.max_queue, deadline_s=args.deadline_s, time_scale=10.0
            )
            server, url = _start_server(fleet)
        try:
            if server is not None:
                asyncio.run(poisson(url, 5.0, 1.0, 5, args.seed, hang_after))
            for factor in (1.0, args.overload) if server is not None else ():
                rate = args.emulated_rate * factor
                tally, wall, cpu = _measured(
                    lambda: asyncio.run(
                        poisson(
                            url, rate, args.duration_s, args.max_requests, args.seed + 7, hang_after
                        )
                    ),
                    server.pid,
                )  # noqa: B023
                # The server process also runs the emulated engines: its CPU includes theirs.
                results.append(
                    summarize("emulated", tally, wall, cpu, rate=rate, load_factor=factor)
                )
                print(json.dumps(results[-1]), flush=True)
        finally:
            if server is not None:
                _stop(server)
    doc = {
        "benchmark": "serve_load",
        "git_sha": git_sha(),
        "device": f"{_cpu_model()}, {os.cpu_count()} CPUs shared with other jobs",
        "python": platform.python_version(),
        # --loop auto means uvloop when it is installed (a default dependency off Windows).
        "server_loop": LOOP
        if LOOP != "auto"
        else ("uvloop" if importlib.util.find_spec("uvloop") else "asyncio"),
        "workflow": WORKFLOW,
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "fake_engines")}
        | {"out": str(args.out)},
        "targets": {
            "overhead_p50_ms": 2.0,
            "overhead_p99_ms": 10.0,
            "dispatches_per_s": 1000,
            "concurrency": args.concurrency,
        },
        "phases": results,
        "all_accounted": all(r["accounted"] and r["lost"] == 0 and r["hung"] == 0 for r in results),
        "disconnects_freed_within_one_round": all(
            r["freed_within_one_round"] for r in results if r["phase"] == "disconnect"
        ),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
