"""Serve agentic workflows: ``python -m aragog_jax.serve [--fleet FLEET.toml]``.

With ``--ray [--replicas N] [--ray-address ADDR]`` it serves on Ray Serve: N ingress
replicas and one scheduler deployment (:mod:`aragog_jax.serve_ray`).

Without ``--fleet`` it runs the embedded default: one emulated engine per model of the
Qwen family on loopback (profiles/fleets/qwen_4gpu.toml, time-scaled so a demo request
returns in about a second), every shipped workflow and its shipped router.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from aragog_jax._cli import run_cli, tune_xla
from aragog_jax.errors import SpecError

log = logging.getLogger("aragog_jax.serving")


def build_parser() -> argparse.ArgumentParser:
    from aragog_jax.scheduler import DEFAULT_BEAM_WIDTH  # the scheduler's; loads JAX

    ap = argparse.ArgumentParser(
        prog="python -m aragog_jax.serve",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "routes: POST /v1/workflows/{name}/runs, GET /v1/workflows, POST /v1/chat/completions "
            "(model 'workflow:<name>'), GET /v1/models, /health, /ready, /metrics, GET /v1/rounds/{id}"
        ),
    )
    ap.add_argument(
        "--fleet",
        metavar="FLEET.toml",
        help="fleet file (engines, workflows, routers, [server]); default: embedded demo",
    )
    ap.add_argument(
        "--host", help="bind address (default from the fleet file: 127.0.0.1, loopback only)"
    )
    ap.add_argument(
        "--port", type=int, help="port (default from the fleet file: 8000; 0 picks a free one)"
    )
    ap.add_argument(
        "--time-scale",
        type=float,
        help="emulated engines run this many times faster than their profiles",
    )
    ap.add_argument(
        "--drain-s",
        type=float,
        default=30.0,
        help="on SIGINT/SIGTERM, let in-flight requests finish this long (default 30)",
    )
    ap.add_argument(
        "--policy",
        default="aragog",
        choices=["aragog", "aragog-paper", "aragog-scarce", "greedy", "per_input"],
        help="scheduling policy (default aragog: beam search over the live load)",
    )
    ap.add_argument(
        "--beam-width",
        type=int,
        default=DEFAULT_BEAM_WIDTH,
        help="beam width of the aragog policy (default %(default)s)",
    )
    ap.add_argument(
        "--routing-budget-ms",
        type=float,
        default=50.0,
        help=(
            "a router off the event loop (an embeddings endpoint) routes while its request "
            "waits in the meta-queue: the request's stages wait for it at most this long, then "
            "run with the configurations admitted so far (c_max at least) once they reach the "
            "head of the queue; receipts say how far routing got (default %(default)g; 0: "
            "never wait). Routers on the loop (hashed n-grams) always finish first"
        ),
    )
    ap.add_argument(
        "--keep-rounds",
        type=int,
        default=256,
        help="scheduling rounds kept for GET /v1/rounds/{id} (default 256)",
    )
    ap.add_argument(
        "--no-fast-lane",
        dest="fast_lane",
        action="store_false",
        help=(
            "answer every request through aiohttp's server; by default non-streaming runs and "
            "chat completions whose whole body has arrived are answered by a lighter HTTP/1.1 "
            "path with less CPU per request (bench/peers.py), under the same limits"
        ),
    )
    ap.add_argument(
        "--loop",
        default="auto",
        choices=["auto", "asyncio", "uvloop"],
        help="event loop: uvloop when installed (auto, the default), or the standard asyncio loop",
    )
    ray = ap.add_argument_group(
        "Ray Serve",
        "serve on a Ray cluster: N ingress replicas and one scheduler (pip install 'aragog_jax[ray]')",
    )
    ray.add_argument(
        "--ray",
        action="store_true",
        help="serve with Ray Serve (aragog_jax.serve_ray) instead of one process",
    )
    ray.add_argument(
        "--replicas",
        type=int,
        default=2,
        help="ingress replicas (HTTP, routing, engine calls) with --ray (default %(default)s)",
    )
    ray.add_argument(
        "--ray-address",
        metavar="ADDR",
        help="Ray cluster to join (e.g. 127.0.0.1:6379 after `ray start --head`); default: a local one",
    )
    ray.add_argument(
        "--replica-cpus",
        type=float,
        default=1.0,
        help="Ray CPUs reserved per ingress replica with --ray (default %(default)s; 0 for none)",
    )
    ap.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="default INFO",
    )
    return ap


async def _serve(args: argparse.Namespace) -> int:
    from aragog_jax.serving import ServeOptions, Server, load_runtime

    fleet = load_runtime(args.fleet, host=args.host, port=args.port, time_scale=args.time_scale)
    options = ServeOptions(
        drain_s=args.drain_s,
        keep_rounds=args.keep_rounds,
        policy=args.policy,
        beam_width=args.beam_width,
        routing_budget_s=args.routing_budget_ms / 1000.0,
        fast_lane=args.fast_lane,
    )
    server = Server(fleet, options)
    try:
        url = await server.start()
    except OSError as exc:
        await server.stop(drain_s=0)
        raise SpecError(
            f"cannot listen on {fleet.settings.host}:{fleet.settings.port}: {exc.strerror or exc}"
        ) from exc
    routed = [n for n, w in fleet.workflows.items() if w.router is not None]
    first = (
        "self_refine_humaneval"
        if "self_refine_humaneval" in fleet.workflows
        else (routed or list(fleet.workflows))[0]
    )
    log.info(
        "fleet: %s; %d engines (%s)",
        fleet.source,
        len(fleet.engines),
        ", ".join(f"{e.name}={e.model}" for e in fleet.engines),
    )
    log.info(
        "workflows: %s",
        ", ".join(
            f"{n} ({'router' if w.router is not None else 'admit-all'})"
            for n, w in fleet.workflows.items()
        ),
    )
    if fleet.api_keys:
        log.info("API keys required (%d configured)", len(fleet.api_keys))
    log.info("listening on %s", url)
    log.info(
        "try: curl -s %s/v1/workflows/%s/runs -H 'Content-Type: application/json' "
        '-d \'{"input": "Write a function that reverses a string."}\'',
        url,
        first,
    )
    print(f"aragog_jax serving on {url}", flush=True)
    await serve_until_signalled(server, args.drain_s)
    return 0


async def serve_until_signalled(
    server, drain_s: float, signals=(signal.SIGINT, signal.SIGTERM)
) -> dict[str, int]:
    """Serve until the first of ``signals``, then drain for up to ``drain_s``; a second
    signal during the drain stops at once (in-flight requests end with 503)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if not stop.is_set():
            stop.set()
        else:
            log.warning("second signal: stopping now; in-flight requests end with 503")
            server.cut_drain()

    for sig in signals:
        loop.add_signal_handler(sig, on_signal)
    try:
        await stop.wait()
        log.info(
            "shutting down: draining in-flight requests (up to %.0f s; signal again to stop at once)",
            drain_s,
        )
        summary = await server.stop()
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
    log.info("stopped (%s)", summary)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.time_scale is not None and args.time_scale <= 0:
        raise SpecError(f"--time-scale must be > 0, got {args.time_scale}")
    if args.replicas < 1:
        raise SpecError(f"--replicas must be >= 1, got {args.replicas}")
    if args.replica_cpus < 0:
        raise SpecError(f"--replica-cpus must be >= 0, got {args.replica_cpus}")
    if args.beam_width < 1:
        raise SpecError(f"--beam-width must be >= 1, got {args.beam_width}")
    if not 0 <= args.routing_budget_ms < float("inf"):
        raise SpecError(
            f"--routing-budget-ms must be a finite number >= 0, got {args.routing_budget_ms}"
        )
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr
    )
    # JAX reports at INFO that it found no TPU/GPU backend; on a CPU box that is expected noise.
    logging.getLogger("jax._src.xla_bridge").setLevel(
        max(logging.WARNING, logging.getLogger().level)
    )
    if args.ray:
        from aragog_jax.serve_ray import main_ray

        return main_ray(args)
    return _run(_serve(args), args.loop)


def _run(coro, loop: str) -> int:
    if loop != "asyncio":
        try:
            import uvloop
        except ImportError:
            if loop == "uvloop":
                coro.close()
                raise SpecError(
                    "--loop uvloop: uvloop is not installed (pip install uvloop)"
                ) from None
        else:
            return uvloop.run(coro)
    return asyncio.run(coro)


if __name__ == "__main__":
    tune_xla()
    sys.exit(run_cli(main))
