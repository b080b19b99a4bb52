"""Measure a running OpenAI-compatible engine and fit a ``kind = "measured"`` profile.

The sweep (every phase bounded in time and request count, progress on a callback):

1. **Prefill probe.** At concurrency 1, ``max_tokens = 1`` requests with a short and a
   long prompt (``probe_repeats`` each, medians). The latency difference over the
   token difference gives ``prefill_tokens_per_s``; what is left of the short request's
   latency after one iteration and its prefill is the engine's fixed per-request
   overhead (HTTP, tokenisation, detokenisation), reported, not put in the profile.
2. **Concurrency sweep.** For each n in ``concurrency``: n closed-loop workers send
   ``prompt_tokens``-token prompts for exactly ``output_tokens`` tokens (``ignore_eos``)
   with ``stream: true`` until ``level_s`` seconds or ``level_requests`` requests have
   passed; in-flight requests then finish. Throughput at n is the generated tokens
   inside the window ``[level start, stop]`` (a request's tokens are spread evenly over
   its decode span ``[first token, last token]`` and clipped to the window: all n
   workers are busy throughout it, so the engine holds exactly n sequences).
   TTFT and inter-token latency are medians over the level's streamed requests.
3. **Fit.** The decode iteration time at batch n comes from the level's median latency
   minus the prefill probe's (see :func:`iteration_points`), which keeps the fixed
   per-request overhead out of it; a least-squares line ``decode_base_s +
   decode_per_seq_s * n`` through those points (both >= 0). Levels where the engine's
   waiting gauge rose above zero (past its batch limit: it queued) are left out. The sweep
   holds context per sequence fixed, so the context term cannot be separated from the
   per-sequence term: ``decode_per_ctx_token_s`` is 0 and the per-sequence term holds
   the cost of ``P + G / 2`` context tokens (stated in the notes).
4. **Saturation batch**: the smallest swept n whose throughput is within
   ``saturation_margin`` (default 10%, the derived profiles' margin) of the highest
   throughput measured: past it, adding sequences raises throughput by less than the
   margin while every sequence slows down. Capped by the most sequences the engine was
   seen running, so the simulator never batches more than the engine does.

KV capacity comes from vLLM's ``vllm:cache_config_info`` gauge (``num_gpu_blocks`` x
``block_size``) when the engine exports it, else from ``kv_capacity_tokens`` in the
settings, else a generous placeholder that is said so in the notes.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from aragog_jax.engines.client import ClientLimits, EngineClient
from aragog_jax.engines.gauges import (
    RUNNING_NAMES,
    WAITING_NAMES,
    first_gauge,
    kv_capacity_from_metrics,
    parse_gauges,
)
from aragog_jax.errors import AragogError, UpstreamError
from aragog_jax.perf._fit import (
    LevelResult,
    Timed,
    fit_decode,
    iteration_points,
    median,
    saturation_batch,
    sig,
    window_tokens,
)
from aragog_jax.perf._model import profile_to_toml
from aragog_jax.spec import CurvePoint, EngineProfile

#: Words for synthetic prompts; a seeded choice of them, about one token per word.
_WORDS = (
    "alpha beta gamma delta river mountain engine token batch model sequence stage "
    "router cache queue value number signal answer question passage critique refine "
    "vote table column query graph node edge light stone paper window garden"
).split()


@dataclass(frozen=True)
class ProfileSettings:
    """What the profiler sends and for how long (every phase is bounded)."""

    concurrency: tuple[int, ...] = (1, 2, 4, 8, 16)
    prompt_tokens: int = 128  # approximate: synthetic words, the engine's count is reported
    output_tokens: int = 64
    level_s: float = 15.0  # each concurrency level issues requests for at most this long
    level_requests: int = 2000  # ... and at most this many requests
    probe_repeats: int = 5
    probe_long_factor: int = 4  # long probe prompt = this many times prompt_tokens
    saturation_margin: float = 0.10
    request_timeout_s: float = 120.0
    kv_capacity_tokens: int = 0  # 0: from /metrics when exported, else a placeholder
    hardware: str = "unknown"
    tensor_parallel: int = 1
    seed: int = 0

    def check(self) -> None:
        if not self.concurrency or any(n < 1 for n in self.concurrency):
            raise AragogError(f"concurrency levels must be >= 1, got {list(self.concurrency)}")
        if list(self.concurrency) != sorted(set(self.concurrency)):
            raise AragogError(
                f"concurrency levels must be strictly increasing, got {list(self.concurrency)}"
            )
        if self.prompt_tokens < 1 or self.output_tokens < 2:
            raise AragogError("need prompt_tokens >= 1 and output_tokens >= 2")
        if self.level_s <= 0 or self.level_requests < 1 or self.probe_repeats < 1:
            raise AragogError("level_s, level_requests and probe_repeats must be positive")
        if not 0 < self.saturation_margin < 1:
            raise AragogError(f"saturation margin must be in (0, 1), got {self.saturation_margin}")
        if self.probe_long_factor < 2:
            raise AragogError("probe_long_factor must be >= 2")


@dataclass
class ProfileReport:
    """Everything measured, plus the profile fitted from it."""

    engine_url: str
    model: str
    served_model: str
    engine_version: str
    date: str
    settings: dict
    prefill_tokens_per_s: float
    request_overhead_s: float
    probe_latency_short_s: float
    probe_latency_long_s: float
    probe_prompt_tokens: tuple[int, int]
    levels: list[LevelResult]
    decode_base_s: float
    decode_per_seq_s: float
    saturation_batch: int
    kv_capacity_tokens: int
    kv_capacity_source: str
    num_requests: int
    seconds: float

    def to_json(self) -> dict:
        d = asdict(self)
        d["levels"] = [asdict(lv) for lv in self.levels]
        return d


def synthetic_prompt(num_words: int, rng: np.random.Generator) -> str:
    return " ".join(_WORDS[i] for i in rng.integers(0, len(_WORDS), size=num_words))


async def timed_chat(
    client: EngineClient, prompt: str, max_tokens: int, seed: int, *, stream: bool = True
) -> Timed:
    """One chat completion with exactly ``max_tokens`` tokens, each streamed piece timed.

    Through the engine client (its session, timeouts, stream parser and error mapping):
    failures raise :class:`~aragog_jax.errors.UpstreamError`.
    """
    chunks: list[float] = []

    def on_delta(_text: str) -> None:
        chunks.append(time.monotonic())

    start = time.monotonic()
    # ignore_eos: vLLM generates exactly max_tokens; other engines ignore the field.
    res = await client.chat(
        prompt,
        max_tokens=max_tokens,
        seed=seed,
        on_delta=on_delta if stream else None,
        extra={"ignore_eos": True},
    )
    end = time.monotonic()
    return Timed(
        start=start,
        first=chunks[0] if chunks else end,
        end=end,
        prompt_tokens=res.prompt_tokens,
        completion_tokens=res.completion_tokens or max_tokens,
        chunk_times=chunks,
    )


async def engine_version(client: EngineClient) -> str:
    """``/version`` (vLLM) or the ``/v1/models`` owner, else "unknown"."""
    for path in ("/version",):
        try:
            text = await client.get_text(path)
            ver = json.loads(text).get("version")
            if ver:
                return f"vllm {ver}"
        except (UpstreamError, ValueError, AttributeError):
            pass
    try:
        data = json.loads(await client.get_text("/v1/models"))
        owner = (data.get("data") or [{}])[0].get("owned_by")
        if owner:
            return str(owner)
    except (UpstreamError, ValueError, AttributeError, IndexError):
        pass
    return "unknown"


class Profiler:
    """Profile one engine; ``await run()`` returns (profile, report)."""

    def __init__(
        self,
        url: str,
        served_model: str,
        *,
        model: str = "",
        settings: ProfileSettings = ProfileSettings(),
        progress: Callable[[str], None] | None = None,
    ):
        settings.check()
        self.settings = settings
        self.model = model or served_model
        limits = ClientLimits(
            request_timeout_s=settings.request_timeout_s,
            orca=False,
            max_connections=max(64, 2 * max(settings.concurrency)),
        )
        self.client = EngineClient("profiled", url, served_model, limits)
        self.progress = progress or (lambda msg: None)
        self.rng = np.random.default_rng(settings.seed)
        self._seed = settings.seed * 1_000_003
        self.num_requests = 0
        self.prompt_words = settings.prompt_tokens

    def _next_seed(self) -> int:
        self._seed += 1
        return self._seed % 2**31

    async def _probe(self, words: int) -> tuple[float, int]:
        lat, ptoks = [], []
        for _ in range(self.settings.probe_repeats):
            r = await timed_chat(
                self.client, synthetic_prompt(words, self.rng), 1, self._next_seed(), stream=False
            )
            self.num_requests += 1
            lat.append(r.end - r.start)
            ptoks.append(r.prompt_tokens or words)
        return median(lat), int(median(ptoks))

    async def _level(self, n: int) -> LevelResult:
        s = self.settings
        done: list[Timed] = []
        issued = 0
        t0 = time.monotonic()
        stop_at = t0 + s.level_s

        async def worker() -> float:
            nonlocal issued
            last_end = t0
            while time.monotonic() < stop_at and issued < s.level_requests:
                issued += 1
                prompt = synthetic_prompt(self.prompt_words, self.rng)
                r = await timed_chat(self.client, prompt, s.output_tokens, self._next_seed())
                done.append(r)
                last_end = r.end
            return last_end

        gauges = {"running": -1.0, "waiting": -1.0}

        async def watch() -> None:
            while True:
                try:
                    g = parse_gauges(await self.client.metrics_text())
                except UpstreamError:
                    return
                run = first_gauge(g, RUNNING_NAMES)
                wait = first_gauge(g, WAITING_NAMES)
                if run is None:
                    return
                gauges["running"] = max(gauges["running"], run)
                gauges["waiting"] = max(gauges["waiting"], wait or 0.0)
                await asyncio.sleep(0.2)

        watcher = asyncio.get_running_loop().create_task(watch())
        try:
            ends = await asyncio.gather(*(worker() for _ in range(n)))
        finally:
            watcher.cancel()
            try:
                await watcher
            except asyncio.CancelledError:
                pass
        # Every worker is busy until its last request ends: the engine holds n sequences
        # until the first worker runs out of work. That is the window.
        t1 = min(ends)
        if t1 <= t0:  # a worker got no request (level_requests < n): whole span
            t1 = max(ends)
        self.num_requests += len(done)
        tokens = window_tokens(done, t0, t1)
        itls = [r.itl for r in done if r.incremental]
        return LevelResult(
            concurrency=n,
            num_requests=len(done),
            window_s=t1 - t0,
            tokens_per_s=tokens / (t1 - t0),
            ttft_p50_s=median([r.ttft for r in done]),
            itl_p50_s=median(itls),
            latency_p50_s=median([r.end - r.start for r in done]),
            mean_prompt_tokens=float(np.mean([r.prompt_tokens for r in done])),
            mean_completion_tokens=float(np.mean([r.completion_tokens for r in done])),
            streamed_share=len(itls) / len(done),
            max_running=gauges["running"],
            max_waiting=gauges["waiting"],
        )

    async def run(self) -> tuple[EngineProfile, ProfileReport]:
        s = self.settings
        t_start = time.monotonic()
        await self.client.open()
        try:
            try:
                await self.client.health()
            except UpstreamError as exc:
                raise AragogError(f"engine at {self.client.url} is not healthy: {exc}") from exc
            version = await engine_version(self.client)
            try:
                kv = kv_capacity_from_metrics(await self.client.metrics_text())
            except UpstreamError:
                kv = 0
            # Warm-up (first requests pay lazy initialisation), not measured; it also
            # calibrates words per token so prompts land near the asked token counts.
            warm = await timed_chat(
                self.client, synthetic_prompt(64, self.rng), 2, self._next_seed(), stream=False
            )
            self.num_requests += 1
            tokens_per_word = (warm.prompt_tokens / 64.0) if warm.prompt_tokens else 1.0
            self.prompt_words = max(1, round(s.prompt_tokens / max(tokens_per_word, 0.1)))
            self.progress(
                f"engine {self.client.url} model {self.client.served_model!r} ({version}); probing prefill"
            )
            short_lat, short_p = await self._probe(self.prompt_words)
            long_lat, long_p = await self._probe(self.prompt_words * s.probe_long_factor)
            if long_lat > short_lat and long_p > short_p:
                prefill_rate = (long_p - short_p) / (long_lat - short_lat)
            else:  # prefill too fast to see against the noise
                prefill_rate = 1e6
            self.progress(
                f"prefill: {short_p} tokens {1e3 * short_lat:.1f} ms, {long_p} tokens {1e3 * long_lat:.1f} ms "
                f"-> {prefill_rate:,.0f} tokens/s"
            )
            levels: list[LevelResult] = []
            for n in s.concurrency:
                lv = await self._level(n)
                levels.append(lv)
                self.progress(
                    f"concurrency {n:4d}: {lv.tokens_per_s:9.1f} tokens/s  ttft p50 {1e3 * lv.ttft_p50_s:7.1f} ms  "
                    f"itl p50 {1e3 * lv.itl_p50_s:6.2f} ms  latency p50 {lv.latency_p50_s:6.3f} s  "
                    f"({lv.num_requests} requests in {lv.window_s:.1f} s"
                    + (
                        f", engine ran <= {lv.max_running:.0f}, queued <= {lv.max_waiting:.0f})"
                        if lv.max_running >= 0
                        else ")"
                    )
                )
        finally:
            await self.client.close()

        p_tok = levels[0].mean_prompt_tokens or float(s.prompt_tokens)
        g_tok = levels[0].mean_completion_tokens or float(s.output_tokens)
        base, per_seq = fit_decode(iteration_points(levels, short_lat, prefill_rate))
        t1 = base + per_seq
        overhead = max(0.0, short_lat - t1 - short_p / prefill_rate)
        sat = saturation_batch(levels, s.saturation_margin)
        kv_source = "vllm:cache_config_info"
        if s.kv_capacity_tokens:
            kv, kv_source = s.kv_capacity_tokens, "settings"
        elif not kv:
            kv = max(1 << 20, 4 * max(s.concurrency) * int(p_tok * s.probe_long_factor + g_tok))
            kv_source = "placeholder (engine does not export vllm:cache_config_info)"
        date = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        # Engines that deliver a stream in one burst at the end (vLLM CPU does) give no TTFT
        # or ITL on the wire: then TTFT is the one-token probe's latency and ITL the fit's t(1).
        streamed = levels[0].concurrency == 1 and levels[0].streamed_share >= 0.5
        ttft1 = levels[0].ttft_p50_s if streamed else short_lat
        itl1 = levels[0].itl_p50_s if streamed else t1
        notes = (
            f"Measured by python -m aragog_jax.profile against {self.client.url} on {date}: concurrency "
            f"{list(s.concurrency)}, ~{p_tok:.0f} prompt + {g_tok:.0f} output tokens per request, "
            f"saturation margin {s.saturation_margin:g}. decode_per_seq_s includes the context of "
            f"{p_tok + g_tok / 2:.0f} tokens per sequence (decode_per_ctx_token_s not separated). "
            f"Fixed per-request overhead outside the engine loop {1e3 * overhead:.1f} ms (not in the iteration model). "
            f"KV capacity: {kv_source}. TTFT/ITL: "
            + (
                "streamed (median at concurrency 1)."
                if streamed
                else "stream arrived in bursts: one-token probe latency / fitted t(1)."
            )
        )
        profile = EngineProfile(
            model=self.model,
            hardware=s.hardware,
            tensor_parallel=s.tensor_parallel,
            kind="measured",
            saturation_batch=sat,
            kv_capacity_tokens=int(kv),
            prefill_tokens_per_s=sig(prefill_rate),
            decode_base_s=sig(base),
            decode_per_seq_s=sig(per_seq),
            decode_per_ctx_token_s=0.0,
            curve=[CurvePoint(lv.concurrency, sig(lv.tokens_per_s)) for lv in levels],
            num_gpus=s.tensor_parallel,
            ttft_s=sig(ttft1),
            itl_s=sig(itl1),
            engine_version=version,
            date=date,
            notes=notes,
        )
        report = ProfileReport(
            engine_url=self.client.url,
            model=self.model,
            served_model=self.client.served_model,
            engine_version=version,
            date=date,
            settings=asdict(s),
            prefill_tokens_per_s=prefill_rate,
            request_overhead_s=overhead,
            probe_latency_short_s=short_lat,
            probe_latency_long_s=long_lat,
            probe_prompt_tokens=(short_p, long_p),
            levels=levels,
            decode_base_s=base,
            decode_per_seq_s=per_seq,
            saturation_batch=sat,
            kv_capacity_tokens=int(kv),
            kv_capacity_source=kv_source,
            num_requests=self.num_requests,
            seconds=time.monotonic() - t_start,
        )
        return profile, report


def measured_profile_to_toml(p: EngineProfile, command: str = "") -> str:
    """Render a measured profile as commented TOML (loads back with ``load_profile``)."""
    header = [
        "# MEASURED engine profile. Generated by",
        f"#   {command or 'python -m aragog_jax.profile'}",
        f"# on {p.date} against {p.engine_version}.",
    ]
    return profile_to_toml(p, header)


def profile_engine(
    url: str,
    served_model: str,
    *,
    model: str = "",
    settings: ProfileSettings = ProfileSettings(),
    progress: Callable[[str], None] | None = None,
) -> tuple[EngineProfile, ProfileReport]:
    """Synchronous wrapper of :class:`Profiler` (runs its own event loop)."""
    return asyncio.run(
        Profiler(url, served_model, model=model, settings=settings, progress=progress).run()
    )


__all__ = [
    "LevelResult",
    "ProfileReport",
    "ProfileSettings",
    "Profiler",
    "Timed",
    "fit_decode",
    "iteration_points",
    "kv_capacity_from_metrics",
    "measured_profile_to_toml",
    "profile_engine",
    "saturation_batch",
    "synthetic_prompt",
    "timed_chat",
    "window_tokens",
]
