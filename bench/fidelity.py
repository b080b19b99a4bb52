"""Simulator fidelity: a real vLLM CPU engine against the simulator fed its measured profile.

    python bench/fidelity.py                 # starts its own engine; writes bench/results/fidelity.{md,json,png}
    python bench/fidelity.py --engine URL --model NAME   # an engine that is already running

Steps:

1. Start one real vLLM CPU engine (``.venv-vllm``, the tiny offline Llama, one core,
   ``--max-num-seqs 16``) unless ``--engine`` names a running one.
2. Profile it with ``aragog_jax.perf`` (the same code as ``python -m aragog_jax.profile``).
3. For each rate (fractions of the profile's request capacity, peak tokens/s over the
   mean output length): a seeded Poisson workload of requests with seeded prompt lengths
   and exact output lengths (``ignore_eos``), sent open loop at their arrival times.
4. Simulate the same requests (same arrival times, the prompt token counts the engine
   reported, the same output lengths) on :class:`aragog_jax.engines.BatchingEngine` built from the
   measured profile: once with the engine's real batch limit (``max_batch`` = its
   ``--max-num-seqs``) and once with the simulator's default (``max_batch`` = the
   profile's saturation batch, what ``python -m aragog_jax.simulate`` does).
5. Table and plot of measured vs simulated throughput (generated tokens/s over the span
   from the first arrival to the last completion) and P50 / P95 latency per rate.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aragog_jax._provenance import git_sha  # noqa: E402
from aragog_jax.engines import BatchingEngine, run_standalone  # noqa: E402
from aragog_jax.engines.client import ClientLimits, EngineClient  # noqa: E402
from aragog_jax.errors import UpstreamError  # noqa: E402
from aragog_jax.perf._measure import (  # noqa: E402
    Profiler,
    ProfileSettings,
    measured_profile_to_toml,
    synthetic_prompt,
    timed_chat,
)

RESULTS = ROOT / "bench" / "results"
VLLM_PY = ROOT / ".venv-vllm" / "bin" / "python"
TINY = ROOT / ".venv-vllm" / "tiny-llama"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_engine(max_num_seqs: int, core: int, log: Path) -> tuple[subprocess.Popen, str]:
    if not VLLM_PY.is_file() or not (TINY / "config.json").is_file():
        sys.exit("error: the vLLM CPU engine is not prepared; run: bash scripts/prepare_vllm.sh")
    port = _free_port()
    env = dict(
        os.environ,
        VLLM_TARGET_DEVICE="cpu",
        HF_HUB_OFFLINE="1",
        VLLM_NO_USAGE_STATS="1",
        VLLM_CPU_OMP_THREADS_BIND=str(core),
    )
    cmd = [
        str(VLLM_PY),
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(TINY),
        "--served-model-name",
        "tiny",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--max-model-len",
        "1024",
        "--enforce-eager",
        "--kv-cache-memory-bytes",
        str(64 << 20),
        "--max-num-seqs",
        str(max_num_seqs),
    ]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"error: vLLM exited with {proc.returncode}; see {log}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            pass
        time.sleep(0.5)
    stop_engine(proc)
    sys.exit(f"error: vLLM not healthy after 180 s; see {log}")


def stop_engine(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


def make_workload(
    rate: float,
    duration_s: float,
    seed: int,
    prompt_words: tuple[int, int],
    output_tokens: tuple[int, int],
):
    rng = np.random.default_rng(seed)
    num = max(1, int(rate * duration_s))
    arrivals = np.cumsum(rng.exponential(1.0 / rate, size=num))
    words = rng.integers(prompt_words[0], prompt_words[1] + 1, size=num)
    outs = rng.integers(output_tokens[0], output_tokens[1] + 1, size=num)
    prompts = [synthetic_prompt(int(w), rng) for w in words]
    return arrivals, prompts, outs


async def drive(
    url: str, model: str, arrivals, prompts, outs, seed: int
) -> list[tuple[float, float, int, int]]:
    """Send each request at its arrival time; (arrival, end, prompt_tokens, completion_tokens), relative times."""
    client = EngineClient(
        "fidelity",
        url,
        model,
        ClientLimits(request_timeout_s=300, orca=False, max_connections=1024),
    )
    await client.open()
    try:
        t0 = time.monotonic() + 0.2

        async def one(i: int):
            await asyncio.sleep(max(0.0, t0 + arrivals[i] - time.monotonic()))
            try:
                r = await timed_chat(client, prompts[i], int(outs[i]), seed + i, stream=False)
            except (
                UpstreamError
            ) as exc:  # counted, not fatal: an overloaded engine drops connections
                print(f"[fidelity] request {i} failed: {exc}", file=sys.stderr)
                return None
            return float(arrivals[i]), r.end - t0, r.prompt_tokens, r.completion_tokens

        return list(await asyncio.gather(*(one(i) for i in range(len(arrivals)))))
    finally:
        await client.close()


def summarize(arrivals: np.ndarray, ends: np.ndarray, tokens: np.ndarray) -> dict:
    lat = ends - arrivals
    span = float(ends.max() - arrivals.min())
    return {
        "throughput_tokens_s": float(tokens.sum() / span),
        "throughput_req_s": float(len(arrivals) / span),
        "p50_s": float(np.percentile(lat, 50)),
        "p95_s": float(np.percentile(lat, 95)),
    }


def simulate(profile, reqs, max_batch: int | None, overhead_s: float = 0.0) -> dict:
    """The same requests on BatchingEngine; ``overhead_s`` (outside the engine loop) is added to each completion."""
    eng = BatchingEngine("sim", profile.model, profile, max_batch=max_batch)
    jobs = [(a, max(1, p), max(1, c)) for a, _, p, c in reqs]
    done = np.asarray(run_standalone(eng, jobs)) + overhead_s
    arr = np.asarray([a for a, *_ in reqs])
    toks = np.asarray([c for *_, c in reqs], dtype=np.float64)
    return summarize(arr, done, toks)


def add_simulations(row: dict, profile, max_num_seqs: int, overhead_s: float) -> None:
    """Simulate the row's recorded requests under each variant of the engine model."""
    import msgspec

    reqs = [tuple(r) for r in row["requests"]]
    p_mean = float(np.mean([r[2] for r in reqs]))
    # Variant: the per-request overhead charged inside the engine loop, like prefill (the
    # API server's CPU time competes with the engine's on a machine short of cores).
    serial = msgspec.structs.replace(
        profile, prefill_tokens_per_s=p_mean / (p_mean / profile.prefill_tokens_per_s + overhead_s)
    )
    row["simulated"] = simulate(profile, reqs, max_num_seqs, overhead_s)
    row["simulated_engine_only"] = simulate(profile, reqs, max_num_seqs)
    row["simulated_overhead_in_loop"] = simulate(serial, reqs, max_num_seqs)
    row["simulated_saturation_batch"] = simulate(profile, reqs, None, overhead_s)


def write_json(res: dict, out: Path) -> None:
    """fidelity.json (summary, readable) and fidelity_requests.json (per request: arrival, end, prompt, output)."""
    reqs = [row.pop("requests") for row in res["rates"]]
    (out / "fidelity.json").write_text(json.dumps(res, indent=2) + "\n")
    (out / "fidelity_requests.json").write_text(
        "[\n" + ",\n".join(json.dumps(r) for r in reqs) + "\n]\n"
    )
    for row, r in zip(res["rates"], reqs, strict=True):
        row["requests"] = r


def _loadavg(res: dict) -> str:
    la = res.get("load_average")
    return f"{min(la):.1f}-{max(la):.1f}" if la else "not recorded"


def _err(sim: float, real: float) -> float:
    return 100.0 * (sim - real) / real


def render(res: dict) -> str:
    prof = res["profile"]
    lines = [
        "# Simulator fidelity against a real vLLM CPU engine",
        "",
        f"Regenerate: `{res['command']}` (git {res['git_sha'][:10]}, {res['date']}, {res['machine']}).",
        "",
        f"Engine: vLLM {res['engine_version']} CPU, tiny random-weight Llama (0.85 M parameters), one core, "
        f"`--max-num-seqs {res['max_num_seqs']}`. Profiled with `aragog_jax.perf` (the profiler behind "
        f"`python -m aragog_jax.profile`): saturation batch {prof['saturation_batch']}, curve "
        f"{[tuple(p) for p in prof['curve']]} tokens/s, decode t(b) = {1e3 * prof['decode_base_s']:.3f} ms + "
        f"{1e3 * prof['decode_per_seq_s']:.3f} ms x b, prefill {prof['prefill_tokens_per_s']:,.0f} tokens/s, "
        f"fixed per-request overhead {1e3 * res['request_overhead_s']:.1f} ms.",
        "",
        f"Workload per rate: seeded Poisson arrivals for {res['duration_s']:g} s, prompts of "
        f"{res['prompt_words'][0]}-{res['prompt_words'][1]} words, {res['output_tokens'][0]}-{res['output_tokens'][1]} "
        f"output tokens (exact, `ignore_eos`). Rates are fractions of the profile's request capacity "
        f"{res['capacity_req_s']:.1f} req/s (peak tokens/s / mean output tokens). Throughput is "
        "generated tokens/s from "
        "the first arrival to the last completion; latency is per request from arrival to completion.",
        "",
        "Simulated = `BatchingEngine` (the fleet simulator's engine model) from the measured profile, fed the same "
        f"requests, with the engine's batch limit (`max_batch` = {res['max_num_seqs']}), plus the profiler's fixed "
        "per-request overhead (HTTP, tokenisation and detokenisation in vLLM's API-server process, outside the "
        "engine loop, so it delays each reply without slowing the batch). `engine only` leaves that overhead out; "
        "`overhead-in-loop` charges it inside the engine loop instead, like prefill (the other extreme: API-server "
        "CPU time taken from the engine). "
        "`fidelity.json` also has the run with the simulator's default batch limit (the saturation batch, "
        f"{prof['saturation_batch']}).",
        "",
        "| rate (req/s) | load | requests (failed) | measured tok/s | sim tok/s | err | measured "
        "P50 (s) | sim P50 (s) | err | "
        "measured P95 (s) | sim P95 (s) | err | engine-only sim P50 | overhead-in-loop sim: tok/s, P50, P95 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["rates"]:
        m, s, d, q = (
            r["measured"],
            r["simulated"],
            r["simulated_engine_only"],
            r["simulated_overhead_in_loop"],
        )
        lines.append(
            f"| {r['rate']:.2f} | {r['load']:.2f} | {r['num_requests']} ({r['num_failed']}) | "
            f"{m['throughput_tokens_s']:.0f} | "
            f"{s['throughput_tokens_s']:.0f} | {_err(s['throughput_tokens_s'], m['throughput_tokens_s']):+.1f}% | "
            f"{m['p50_s']:.3f} | {s['p50_s']:.3f} | {_err(s['p50_s'], m['p50_s']):+.1f}% | "
            f"{m['p95_s']:.3f} | {s['p95_s']:.3f} | {_err(s['p95_s'], m['p95_s']):+.1f}% | "
            f"{d['p50_s']:.3f} | {q['throughput_tokens_s']:.0f}, {q['p50_s']:.3f}, {q['p95_s']:.3f} |"
        )
    ok = [
        r
        for r in res["rates"]
        if abs(_err(r["simulated"]["p50_s"], r["measured"]["p50_s"])) <= 20
        and abs(_err(r["simulated"]["throughput_tokens_s"], r["measured"]["throughput_tokens_s"]))
        <= 20
    ]
    below = [r for r in res["rates"] if r["load"] < 1.0]
    lines += [
        "",
        "![fidelity](fidelity.png)",
        "",
        "## Reading",
        "",
        f"* Target: throughput and P50 within 20% at every rate below saturation. Met at {len(ok)} of "
        f"{len(below)} rates; the worst P50 error is "
        f"{max((_err(r['simulated']['p50_s'], r['measured']['p50_s']) for r in below), key=abs):+.1f}%. Throughput "
        "agrees within a few percent everywhere below saturation, but that is little evidence: an open-loop workload "
        "below capacity completes what arrives, so any engine model that keeps up matches it.",
        "* The simulator is optimistic on latency tails: measured P95 is far above simulated. The machine is a shared "
        f"2-core VM (1-minute load average {_loadavg(res)} while this ran: other jobs, the load generator and vLLM's "
        "API-server process "
        "share the cores with the engine loop), so the engine is descheduled for tens to hundreds of milliseconds at "
        "random; the simulator has no such noise. The same noise makes the P50 errors move by 10-20 points between "
        "runs of this script.",
        "* The fixed per-request overhead (HTTP, tokenisation, detokenisation: ~10-20 ms here, against 1-3 ms per "
        "decode iteration) matters for a model this small. It is outside the engine loop only while a core is free "
        "for the API server; `overhead-in-loop` shows the other extreme (it serialises with the batch) and is far too "
        "pessimistic, so the truth lies between, nearer the first.",
        "* What would close the gap: run the engine on dedicated cores (or a GPU, where the iteration is long against "
        "the per-request overhead), add a per-request overhead term to the profile format that the simulator charges "
        "per stage, and measure the context term `decode_per_ctx_token_s` with a second prompt length (the profiler "
        "folds it into the per-sequence term because its sweep holds context fixed).",
        "",
    ]
    return "\n".join(lines) + "\n"


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = [r["rate"] for r in res["rates"]]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for key, style, label in (
        ("measured", "o-", "measured"),
        ("simulated", "s--", "simulated"),
        ("simulated_engine_only", "^:", "simulated, engine loop only"),
    ):
        ax1.plot(rates, [r[key]["throughput_tokens_s"] for r in res["rates"]], style, label=label)
        ax2.plot(rates, [r[key]["p50_s"] for r in res["rates"]], style, label=f"{label} P50")
        ax2.plot(
            rates, [r[key]["p95_s"] for r in res["rates"]], style, alpha=0.5, label=f"{label} P95"
        )
    ax1.set_xlabel("arrival rate (requests/s)")
    ax1.set_ylabel("generated tokens/s")
    ax1.set_title("throughput")
    ax1.legend(fontsize=8)
    ax2.set_xlabel("arrival rate (requests/s)")
    ax2.set_ylabel("latency (s)")
    ax2.set_yscale("log")
    ax2.set_title("latency P50 / P95")
    ax2.legend(fontsize=7)
    fig.suptitle("vLLM CPU engine vs simulator from its measured profile")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--engine", default="", help="URL of a running engine (default: start one)")
    p.add_argument("--model", default="tiny", help="served model name of --engine (default tiny)")
    p.add_argument(
        "--max-num-seqs", type=int, default=16, help="the engine's batch limit (default 16)"
    )
    p.add_argument(
        "--core", type=int, default=1, help="CPU core the started engine is pinned to (default 1)"
    )
    p.add_argument(
        "--loads",
        default="0.2,0.4,0.6,0.8,0.95",
        help="rates as fractions of capacity (default 0.2,0.4,0.6,0.8,0.95)",
    )
    p.add_argument(
        "--duration", type=float, default=20.0, help="seconds of arrivals per rate (default 20)"
    )
    p.add_argument(
        "--prompt-words", default="40,120", help="prompt length range in words (default 40,120)"
    )
    p.add_argument("--output-tokens", default="32,96", help="output length range (default 32,96)")
    p.add_argument(
        "--profile-level-seconds",
        type=float,
        default=8.0,
        help="profiler time per concurrency level (default 8)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--out", type=Path, default=RESULTS, help="output directory (default bench/results)"
    )
    p.add_argument(
        "--resimulate",
        action="store_true",
        help="no engine: re-run the simulations on the requests recorded in OUT/fidelity.json and "
        "OUT/fidelity_profile.toml, rewrite the table and plot",
    )
    args = p.parse_args(argv)
    if args.resimulate:
        from aragog_jax.spec import load_profile

        res = json.loads((args.out / "fidelity.json").read_text())
        recorded = json.loads((args.out / "fidelity_requests.json").read_text())
        prof = load_profile(args.out / "fidelity_profile.toml")
        for row, reqs in zip(res["rates"], recorded, strict=True):
            row["requests"] = reqs
            add_simulations(row, prof, res["max_num_seqs"], res["request_overhead_s"])
        write_json(res, args.out)
        plot(res, args.out / "fidelity.png")
        (args.out / "fidelity.md").write_text(render(res))
        print(render(res))
        return 0
    pw = tuple(int(x) for x in args.prompt_words.split(","))
    ot = tuple(int(x) for x in args.output_tokens.split(","))
    loads = [float(x) for x in args.loads.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)

    proc = None
    url = args.engine
    if not url:
        print(
            f"[fidelity] starting vLLM (max-num-seqs {args.max_num_seqs}, core {args.core})",
            file=sys.stderr,
        )
        proc, url = start_engine(
            args.max_num_seqs, args.core, Path(tempfile.gettempdir()) / "aragog_fidelity_vllm.log"
        )
    try:
        levels = tuple(n for n in (1, 2, 4, 8, 16, 32) if n <= 2 * args.max_num_seqs)
        settings = ProfileSettings(
            concurrency=levels,
            prompt_tokens=int(np.mean(pw) * 2),
            output_tokens=int(np.mean(ot)),
            level_s=args.profile_level_seconds,
            level_requests=100_000,
            hardware="cpu",
            seed=args.seed,
        )
        profile, report = asyncio.run(
            Profiler(
                url,
                args.model,
                settings=settings,
                progress=lambda m: print(f"[profile] {m}", file=sys.stderr, flush=True),
            ).run()
        )
        (args.out / "fidelity_profile.toml").write_text(
            measured_profile_to_toml(profile, "python bench/fidelity.py")
        )
        peak = max(pt.tokens_per_s for pt in profile.curve)
        capacity = peak / float(np.mean(ot))
        rows = []
        load_average = [os.getloadavg()[0]]
        for i, load in enumerate(loads):
            rate = load * capacity
            arrivals, prompts, outs = make_workload(
                rate, args.duration, args.seed + 1000 * i, pw, ot
            )
            t = time.monotonic()
            got = asyncio.run(drive(url, args.model, arrivals, prompts, outs, args.seed))
            reqs = [r for r in got if r is not None]
            if not reqs:
                sys.exit(f"error: every request at rate {rate:.2f} failed")
            arr = np.asarray([a for a, *_ in reqs])
            ends = np.asarray([e for _, e, *_ in reqs])
            toks = np.asarray([c for *_, c in reqs], dtype=np.float64)
            row = {
                "load": load,
                "rate": rate,
                "num_requests": len(reqs),
                "num_failed": len(got) - len(reqs),
                "measured": summarize(arr, ends, toks),
                "mean_prompt_tokens": float(np.mean([p for *_, p, _ in reqs])),
                "wall_s": time.monotonic() - t,
                "requests": [[round(a, 6), round(e, 6), p, c] for a, e, p, c in reqs],
            }
            add_simulations(row, profile, args.max_num_seqs, report.request_overhead_s)
            m, s = row["measured"], row["simulated"]
            print(
                f"[fidelity] rate {rate:6.2f} req/s ({load:.2f}): measured {m['throughput_tokens_s']:7.0f} tok/s "
                f"P50 {m['p50_s']:.3f} P95 {m['p95_s']:.3f} | sim {s['throughput_tokens_s']:7.0f} tok/s "
                f"P50 {s['p50_s']:.3f} P95 {s['p95_s']:.3f}",
                file=sys.stderr,
                flush=True,
            )
            rows.append(row)
            load_average.append(os.getloadavg()[0])
    finally:
        if proc is not None:
            stop_engine(proc)
    res = {
        "git_sha": git_sha(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "command": "python bench/fidelity.py"
        + (" " + " ".join(argv) if argv else " ".join([""] + sys.argv[1:])).rstrip(),
        "engine_version": profile.engine_version.removeprefix("vllm "),
        "max_num_seqs": args.max_num_seqs,
        "duration_s": args.duration,
        "prompt_words": pw,
        "output_tokens": ot,
        "capacity_req_s": capacity,
        "request_overhead_s": report.request_overhead_s,
        "load_average": [round(x, 2) for x in load_average],
        "profile": {
            "saturation_batch": profile.saturation_batch,
            "curve": [[pt.concurrency, pt.tokens_per_s] for pt in profile.curve],
            "decode_base_s": profile.decode_base_s,
            "decode_per_seq_s": profile.decode_per_seq_s,
            "prefill_tokens_per_s": profile.prefill_tokens_per_s,
            "ttft_s": profile.ttft_s,
            "itl_s": profile.itl_s,
        },
        "profile_report": report.to_json(),
        "rates": rows,
    }
    write_json(res, args.out)
    plot(res, args.out / "fidelity.png")
    (args.out / "fidelity.md").write_text(render(res))
    print(render(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
