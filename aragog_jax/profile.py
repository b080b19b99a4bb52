"""Measure a running OpenAI-compatible engine and write a measured engine profile.

    python -m aragog_jax.profile --engine URL --model NAME --out PROFILE.toml [options]

Sweeps concurrency on the engine (bounded in time and request count per level, with
progress on stderr), measures generated tokens/s against concurrent sequences, time to
first token and inter-token latency, finds the saturation batch (the smallest swept
concurrency within ``--saturation-margin`` of the best throughput) and writes the
profile format the simulator, scheduler and emulated engine read (``kind =
"measured"``, with the engine's version and the date). Next to it,
``PROFILE.report.json`` holds every measurement and the git SHA. The method is
documented in :mod:`aragog_jax.perf._measure` (the sweep) and :mod:`aragog_jax.perf._fit`.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from aragog_jax._cli import run_cli
from aragog_jax._provenance import git_sha
from aragog_jax.errors import AragogError


def _levels(text: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from exc
    if not vals:
        raise argparse.ArgumentTypeError("needs at least one concurrency level")
    return vals


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m aragog_jax.profile",
        description="Profile a running OpenAI-compatible engine (vLLM, SGLang, emulated): throughput vs "
        "concurrent sequences, TTFT, inter-token latency, prefill rate, saturation batch. Writes a "
        'kind="measured" engine profile TOML (and PROFILE.report.json with the raw measurements).',
    )
    p.add_argument("--engine", required=True, help="engine base URL, e.g. http://127.0.0.1:8000")
    p.add_argument(
        "--model", required=True, help="model name the engine serves (sent as the request's model)"
    )
    p.add_argument(
        "--profile-model",
        default="",
        help="model name written in the profile (default: --model); "
        "use the model-catalog name the fleet refers to",
    )
    p.add_argument("--out", type=Path, required=True, help="output profile TOML")
    p.add_argument(
        "--concurrency",
        type=_levels,
        default=(1, 2, 4, 8, 16),
        help="comma-separated levels (default 1,2,4,8,16)",
    )
    p.add_argument(
        "--prompt-tokens", type=int, default=128, help="approximate prompt length (default 128)"
    )
    p.add_argument(
        "--output-tokens",
        type=int,
        default=64,
        help="generated tokens per request (default 64, ignore_eos)",
    )
    p.add_argument(
        "--level-seconds",
        type=float,
        default=15.0,
        help="time bound per concurrency level (default 15)",
    )
    p.add_argument(
        "--level-requests",
        type=int,
        default=2000,
        help="request bound per concurrency level (default 2000)",
    )
    p.add_argument(
        "--probe-repeats", type=int, default=5, help="requests per prefill probe (default 5)"
    )
    p.add_argument(
        "--saturation-margin",
        type=float,
        default=0.10,
        help="saturation = smallest level within this fraction of the best throughput (default 0.10)",
    )
    p.add_argument(
        "--kv-capacity-tokens",
        type=int,
        default=0,
        help="KV capacity when the engine does not export it",
    )
    p.add_argument(
        "--hardware",
        default="unknown",
        help="hardware name written in the profile (e.g. H100-80GB, cpu)",
    )
    p.add_argument(
        "--tensor-parallel",
        type=int,
        default=1,
        help="tensor parallel degree written in the profile",
    )
    p.add_argument(
        "--timeout", type=float, default=120.0, help="per-request timeout in seconds (default 120)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic prompts (default 0)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from aragog_jax.perf import ProfileSettings, measured_profile_to_toml, profile_engine
    from aragog_jax.spec import load_profile

    if args.tensor_parallel < 1:
        raise AragogError(f"--tensor-parallel must be >= 1, got {args.tensor_parallel}")
    settings = ProfileSettings(
        concurrency=args.concurrency,
        prompt_tokens=args.prompt_tokens,
        output_tokens=args.output_tokens,
        level_s=args.level_seconds,
        level_requests=args.level_requests,
        probe_repeats=args.probe_repeats,
        saturation_margin=args.saturation_margin,
        request_timeout_s=args.timeout,
        kv_capacity_tokens=args.kv_capacity_tokens,
        hardware=args.hardware,
        tensor_parallel=args.tensor_parallel,
        seed=args.seed,
    )

    def progress(msg: str) -> None:
        if not args.quiet:
            print(f"[profile] {msg}", file=sys.stderr, flush=True)

    profile, report = profile_engine(
        args.engine, args.model, model=args.profile_model, settings=settings, progress=progress
    )
    command = "python -m aragog_jax.profile " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(measured_profile_to_toml(profile, command))
    load_profile(args.out)  # what we wrote must load back
    data = {"git_sha": git_sha(), "command": command, **report.to_json()}
    report_path = args.out.with_suffix(".report.json")
    report_path.write_text(json.dumps(data, indent=2) + "\n")
    print(f"wrote {args.out} and {report_path}")
    print(
        f"saturation batch {profile.saturation_batch}; peak {max(p.tokens_per_s for p in profile.curve):.1f} tokens/s; "
        f"prefill {profile.prefill_tokens_per_s:,.0f} tokens/s; decode t(b) = {1e3 * profile.decode_base_s:.2f} ms + "
        f"{1e3 * profile.decode_per_seq_s:.3f} ms x b; ttft {1e3 * profile.ttft_s:.1f} ms; itl "
        f"{1e3 * profile.itl_s:.2f} ms; "
        f"{report.num_requests} requests in {report.seconds:.0f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
