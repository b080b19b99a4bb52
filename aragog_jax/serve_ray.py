"""Serving on Ray Serve: ``python -m aragog_jax.serve --ray [--replicas N] [--ray-address ADDR]``.

One Serve application, two deployments:

* ``ingress`` (N replicas, the application's HTTP ingress): each replica is a whole
  :class:`~aragog_jax.serving.Server` (HTTP, validation, API keys, routing, receipts,
  SSE streaming, engine calls), the same code as the single-process server, whose
  executor reaches the scheduler through a :class:`~aragog_jax.serving.RemotePort`.
* ``scheduler`` (one replica): a :class:`~aragog_jax.serving.SchedulerHost`, which owns
  the meta-queue (:class:`aragog_jax.scheduler.Scheduler`), the load monitor and the
  rounds: one batched call per round over the ready stages of every replica. It also
  runs the fleet's emulated engines (so every replica dispatches to the same ones).

The scheduler is a Serve deployment rather than a bare actor so that one
``serve.run`` deploys, health-checks and restarts both parts, and so that replicas
find it through a ``DeploymentHandle`` that follows it across restarts. Replicas talk
to the scheduler with one call per event-loop turn (routed runs added, stages finished
or failed, runs ended, in order) that returns their assignments, plus one long poll
each for assignments made on another replica's call; never a call per stage (see
:mod:`aragog_jax.serving._remote`). Those calls go over keep-alive HTTP to the
scheduler replica's :class:`~aragog_jax.serving.ExchangeServer` (on its node's IP; the
handle hands out its URL and token, and again after a failed call, so a restarted
scheduler is found): a Serve handle call costs several times a plain HTTP call on the
same path (Serve's router, a streaming actor call, the replica's thread hop), and one is
on the way of every stage (``bench/scale_out.py --profile``).

Why the ingress relays to an in-replica aiohttp server: Serve's HTTP proxy hands a
deployment either a Starlette request (``__call__``) or an ASGI scope (``serve.ingress``),
and the server's HTTP layer (the guard, connection limits, error shapes, the SSE
writer) is aiohttp, which is not ASGI. Rewriting it on Starlette would be a second
implementation of the HTTP handling; so each replica starts the unchanged server on a
loopback port and ``__call__`` relays the request to it and streams the reply back
(Starlette ``StreamingResponse``, chunk by chunk, so SSE streams through Serve's
proxy). The cost is one loopback hop inside the replica. A client that disconnects
makes Serve cancel the call, which closes the relayed connection, which cancels the run
as in one process.

Consistency (what happens when a part dies): see :mod:`aragog_jax.serving._remote`. In
short: a dead replica's clients get their connection closed or an error from Serve's
proxy, and the scheduler drops its runs when its lease runs out (``lease_s``), giving
their engine slots back; while the scheduler is unreachable replicas answer 503 to new
requests and fail in-flight ones with 503 (``scheduler unavailable``), and Serve
restarts it (its health check); the new one starts empty, and the replicas fail what the
old one held, then serve again. No request is lost silently.
"""

from __future__ import annotations

import logging
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from aragog_jax.errors import SpecError
from aragog_jax.scheduler import DEFAULT_BEAM_WIDTH
from aragog_jax.serving import (
    LEASE_S,
    ExchangeServer,
    HttpLink,
    Latencies,
    SchedulerHost,
    ServeOptions,
    Server,
    load_runtime,
)

log = logging.getLogger("aragog_jax.serving")

APP_NAME = "aragog"
#: Headers that belong to one hop, not to the request (RFC 9110 §7.6.1), plus the length
#: the relay recomputes.
_HOP = frozenset(
    (
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "host",
    )
)


@dataclass(frozen=True)
class RayServeConfig:
    """What the deployments are built from (it travels to every replica)."""

    fleet: str | None = None  # fleet file (absolute; readable on every node), None: embedded
    time_scale: float | None = None
    replicas: int = 2
    policy: str = "aragog"
    beam_width: int = DEFAULT_BEAM_WIDTH
    keep_rounds: int = 256
    replica_cpus: float = 1.0  # Ray CPUs per ingress replica (0: no reservation)
    scheduler_cpus: float = 1.0
    lease_s: float = LEASE_S
    warm_up: bool = True
    max_ongoing: int = 4096  # requests one ingress replica takes at once (Serve's limit)

    def load(self, **kw):
        return load_runtime(self.fleet, time_scale=self.time_scale, **kw)


def _deployments():
    """The two deployment classes (built on first use, so importing this module does not
    import Ray)."""
    from ray import serve
    from starlette.responses import Response, StreamingResponse

    # No access log line per call (the scheduler's only calls are the replicas' look-ups
    # and stats; Serve's INFO line for each cost CPU and buried everything else).
    @serve.deployment(
        name="scheduler",
        num_replicas=1,
        health_check_period_s=2,
        logging_config={"enable_access_log": False},
    )
    class SchedulerDeployment:
        async def __init__(self, cfg: RayServeConfig):
            import ray

            _quiet_jax()
            self.host = SchedulerHost(
                cfg.load(),
                policy=cfg.policy,
                beam_width=cfg.beam_width,
                lease_s=cfg.lease_s,
                warm_up=cfg.warm_up,
            )
            await self.host.open()
            # on the node's address, so replicas on other nodes reach it
            self.server = ExchangeServer(self.host, bind=ray.util.get_node_ip_address())
            await self.server.start()

        def endpoint(self) -> tuple[str, str]:
            """Where the replicas call this scheduler: (base URL, token)."""
            return self.server.endpoint

        def stats(self) -> dict[str, int]:
            return self.host.stats()

        def timings(self, since: dict[str, int] | None = None) -> dict:
            return self.host.timings(since)

        def runs_by_replica(self) -> dict[str, int]:
            return self.host.runs_by_replica()

        async def __del__(self):  # Serve's graceful stop of this replica
            await self.server.stop()
            await self.host.close()

    @serve.deployment(name="ingress", health_check_period_s=2)
    class Ingress:
        async def __init__(self, scheduler, cfg: RayServeConfig):
            _quiet_jax()

            async def locate() -> tuple[str, str]:
                return await scheduler.endpoint.remote()

            fleet = cfg.load(host="127.0.0.1", port=0)
            # the lease id at the scheduler is this replica's Serve id (its actor's name ends
            # with it), so the scheduler's books and Ray's actors can be matched
            self.link = HttpLink(locate, name=serve.get_replica_context().replica_id.unique_id)
            options = ServeOptions(
                keep_rounds=cfg.keep_rounds,
                policy=cfg.policy,
                beam_width=cfg.beam_width,
                warm_up=cfg.warm_up,
                remote=self.link,
            )
            self.server = Server(fleet, options)
            url = await self.server.start()
            self.http = aiohttp.ClientSession(
                base_url=url,
                auto_decompress=False,
                timeout=aiohttp.ClientTimeout(total=None),
                connector=aiohttp.TCPConnector(limit=0),
            )
            self.relay_s = Latencies()  # __call__ of a plain (not streamed) reply

        async def __call__(self, request):
            """Relay the request to this replica's server; stream the reply back."""
            t0 = time.perf_counter()
            path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _HOP]
            body = await request.body()
            resp = await self.http.request(
                request.method, path, data=body, headers=headers, allow_redirects=False
            )
            out = {k: v for k, v in resp.headers.items() if k.lower() not in _HOP}
            if resp.content_type != "text/event-stream":
                try:
                    data = await resp.read()
                finally:
                    resp.release()
                self.relay_s.add(time.perf_counter() - t0)
                return Response(data, status_code=resp.status, headers=out)

            async def chunks():
                try:
                    async for piece in resp.content.iter_any():
                        yield piece
                finally:
                    resp.close()  # the client left early: the server sees the hang-up

            return StreamingResponse(chunks(), status_code=resp.status, headers=out)

        async def check_health(self) -> None:  # async: Serve warns about sync ones on its loop
            if self.server.state != "serving":
                raise RuntimeError(f"server is {self.server.state}")

        def stats(self) -> dict:
            ex = self.server.executor
            return {
                "counts": dict(ex.counts),
                "calls": ex.sched.num_calls,
                "runs": ex.num_in_flight,
            }

        def timings(self, since: dict[str, int] | None = None) -> dict:
            """Where a request's time goes in this replica (``scale_out.py --profile``):
            per step, the count and the percentiles after the counts in ``since``."""
            since = since or {}
            parts = {"relay": self.relay_s, "exchange": self.server.executor.sched.exchange_s}
            return {k: lat.summary(since.get(k, 0)) for k, lat in parts.items()}

        async def __del__(self):  # Serve's graceful stop of this replica
            await self.server.stop()
            await self.http.close()
            await self.link.close()

    return SchedulerDeployment, Ingress


def _quiet_jax() -> None:
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)


def build_app(cfg: RayServeConfig):
    """The Serve application: ``cfg.replicas`` ingress replicas and one scheduler."""
    if cfg.replicas < 1:
        raise SpecError(f"--replicas must be >= 1, got {cfg.replicas}")
    Scheduler, Ingress = _deployments()
    scheduler = Scheduler.options(
        ray_actor_options={"num_cpus": cfg.scheduler_cpus}, max_ongoing_requests=100_000
    ).bind(cfg)
    return Ingress.options(
        num_replicas=cfg.replicas,
        ray_actor_options={"num_cpus": cfg.replica_cpus},
        max_ongoing_requests=cfg.max_ongoing,
    ).bind(scheduler, cfg)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def deploy(cfg: RayServeConfig, *, host: str | None = None, port: int | None = None) -> str:
    """Start Serve's HTTP proxy and run the application on the connected Ray cluster;
    returns the URL. ``host``/``port`` default to the fleet's [server] settings (port 0
    picks a free one)."""
    from ray import serve

    settings = cfg.load(compile_routers=False).settings
    host = settings.host if host is None else host
    port = settings.port if port is None else port
    if port == 0:
        port = free_port(host)
    serve.start(http_options={"host": host, "port": port})
    serve.run(build_app(cfg), name=APP_NAME, route_prefix="/", blocking=False)
    return f"http://{host}:{port}"


def ingress_replicas() -> dict:
    """The live ingress replicas' actor handles by Serve replica id, which is also each
    one's lease id at the scheduler (``runs_by_replica``): for fault injection."""
    import ray

    prefix = f"SERVE_REPLICA::{APP_NAME}#ingress#"
    return {
        a["name"][len(prefix) :]: ray.get_actor(a["name"], namespace=a["namespace"])
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["name"].startswith(prefix)
    }


def main_ray(args) -> int:
    """``python -m aragog_jax.serve --ray``: deploy, serve until SIGINT/SIGTERM, shut down."""
    import signal
    import threading

    try:
        import ray
        from ray import serve
    except ImportError:
        raise SpecError("--ray needs Ray Serve: pip install 'aragog_jax[ray]'") from None
    fleet = str(Path(args.fleet).resolve()) if args.fleet else None
    cfg = RayServeConfig(
        fleet=fleet,
        time_scale=args.time_scale,
        replicas=args.replicas,
        policy=args.policy,
        beam_width=args.beam_width,
        keep_rounds=args.keep_rounds,
        replica_cpus=args.replica_cpus,
    )
    if cfg.replicas < 1:
        raise SpecError(f"--replicas must be >= 1, got {cfg.replicas}")
    ray.init(address=args.ray_address, log_to_driver=True, include_dashboard=False)
    try:
        url = deploy(cfg, host=args.host, port=args.port)
        log.info("Ray Serve: %d ingress replicas, one scheduler, on %s", cfg.replicas, url)
        print(f"aragog_jax serving on {url} (Ray Serve, {cfg.replicas} replicas)", flush=True)
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        stop.wait()
        log.info("shutting down the Serve application")
        serve.delete(APP_NAME)
        serve.shutdown()
    finally:
        ray.shutdown()
    return 0
