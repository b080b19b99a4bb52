"""Serving fixtures: two real vLLM CPU engines (session scope) and small factories.

The vLLM engines come from ``scripts/prepare_vllm.sh`` (run by ``scripts/test.sh``):
``.venv-vllm/bin/python`` and the tiny model in ``.venv-vllm/tiny-llama``. When they
are missing or do not start, tests that use them are skipped with the reason, except
under ``CI=true``, where they fail.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VLLM_VENV = ROOT / ".venv-vllm"
VLLM_PYTHON = VLLM_VENV / "bin" / "python"
TINY_MODEL = VLLM_VENV / "tiny-llama"
#: The notes measure ~30 s to healthy; several agents' suites on 2 cores can make it minutes.
HEALTH_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class VllmEngine:
    name: str  # served model name
    url: str
    pid: int
    core: int
    log: Path


def _unavailable(reason: str):
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(
            f"real vLLM engine required under CI=true but unavailable: {reason}", pytrace=False
        )
    pytest.skip(f"real vLLM engine unavailable: {reason} (run bash scripts/prepare_vllm.sh)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def start_vllm(
    name: str, core: int, log_dir: Path, dev_mode: bool = False
) -> tuple[subprocess.Popen, VllmEngine]:
    """``dev_mode``: vLLM's development endpoints too (``/server_info`` reports its config)."""
    port = free_port()
    env = dict(os.environ)
    env.update(
        VLLM_TARGET_DEVICE="cpu",
        HF_HUB_OFFLINE="1",
        VLLM_NO_USAGE_STATS="1",
        VLLM_CPU_OMP_THREADS_BIND=str(core),
    )
    if dev_mode:
        env["VLLM_SERVER_DEV_MODE"] = "1"
    log = log_dir / f"vllm-{name}.log"
    cmd = [
        str(VLLM_PYTHON),
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(TINY_MODEL),
        "--served-model-name",
        name,
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
        "4",
    ]
    fh = open(log, "wb")  # noqa: SIM115 - the child owns it
    proc = subprocess.Popen(
        cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    fh.close()
    return proc, VllmEngine(
        name=name, url=f"http://127.0.0.1:{port}", pid=proc.pid, core=core, log=log
    )


def stop_vllm(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=5)


@pytest.fixture(scope="session")
def vllm_engines(tmp_path_factory):
    """Two real vLLM engines, pinned to cores 0 and 1, serving ``tiny-a`` and ``tiny-b``
    (``tiny-b`` with vLLM's development endpoints, so both ways of reporting capacity are
    exercised)."""
    reason_file = VLLM_VENV / ".unavailable"
    if reason_file.is_file():
        _unavailable(reason_file.read_text().strip())
    if not VLLM_PYTHON.is_file() or not (TINY_MODEL / "aragog_tiny.json").is_file():
        _unavailable(f"{VLLM_PYTHON} or {TINY_MODEL} missing")
    log_dir = tmp_path_factory.mktemp("vllm")
    started = [
        start_vllm(n, core, log_dir, dev_mode=dev)
        for n, core, dev in (("tiny-a", 0, False), ("tiny-b", 1, True))
    ]
    try:
        deadline = time.monotonic() + HEALTH_TIMEOUT_S
        pending = {e.name for _, e in started}
        while pending and time.monotonic() < deadline:
            for proc, eng in started:
                if eng.name not in pending:
                    continue
                if proc.poll() is not None:
                    tail = eng.log.read_text(errors="replace")[-2000:]
                    _unavailable(f"vLLM {eng.name} exited with {proc.returncode}:\n{tail}")
                if _healthy(eng.url):
                    pending.discard(eng.name)
            time.sleep(0.5)
        if pending:
            tails = {
                e.name: e.log.read_text(errors="replace")[-600:]
                for _, e in started
                if e.name in pending
            }
            _unavailable(
                f"vLLM {sorted(pending)} not healthy after {HEALTH_TIMEOUT_S:.0f} s; log tails: {tails}"
            )
        yield [e for _, e in started], {e.name: p for p, e in started}
    finally:
        for proc, _ in started:
            stop_vllm(proc)
