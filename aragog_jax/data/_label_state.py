"""A labelling directory's state: the engines a call is keyed by, the manifest
(``label_state.json``) and the call log (``calls.jsonl``); see :mod:`aragog_jax.data._label`."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from aragog_jax._files import atomic_write, remove_durably
from aragog_jax.errors import AragogError

STATE_FORMAT = "aragog-label-state/2"
ON_CHANGE = ("refuse", "update", "restart")

#: Files a labelling directory holds (removed by ``on_change="restart"``).
OUTPUT_FILES = (
    "meta.json",
    "inputs.jsonl",
    "scores.npy",
    "labelled.npy",
    "label_report.json",
    "calls.jsonl",
    "failures.jsonl",
    "config_failures.jsonl",
    "input_errors.jsonl",
    "label_state.json",
)


# -- engines ------------------------------------------------------------------------------


@dataclass(frozen=True)
class EngineTarget:
    """An engine the labeller calls. ``identity`` is what the call cache keys it by
    (default: its URL; ``"emulated"`` for emulated engines, whose replies depend only on
    model, prompt and seed, not on the loopback port they happen to get)."""

    name: str
    model: str  # catalog model name
    url: str
    served_model: str
    identity: str = ""

    @property
    def engine_id(self) -> str:
        return self.identity or self.url.rstrip("/")


def function_pin(ref: str, fn: Callable) -> str:
    """What the call cache pins for a user function (stage function or scorer): its name (a
    file by its base name, so a moved checkout keeps its cache) and a digest of the source
    file it is defined in (so editing the function, or a helper next to it, changes it)."""
    mod, _, name = ref.rpartition(":")
    try:
        source = Path(fn.__code__.co_filename).read_bytes()
    except (AttributeError, OSError):  # not a plain Python function: its name only
        source = b""
    return f"{Path(mod).name if mod.endswith('.py') else mod}:{name}#{hashlib.sha256(source).hexdigest()[:16]}"


def call_seed(seed: int, text: str, key: tuple) -> int:
    h = hashlib.blake2b(f"{seed}\x00{text}\x00{key!r}".encode(), digest_size=4).digest()
    return int.from_bytes(h, "little") % 2**31


def key_str(key: tuple) -> str:
    s, models = key
    return f"{s}:" + ",".join(f"{a}={m}" for a, m in models)


def json_digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[
        :32
    ]


# -- the manifest ---------------------------------------------------------------------------


def _short(x) -> str:
    s = str(x)
    return s if len(s) <= 60 else s[:57] + "..."


def describe_changes(old: dict, new: dict) -> list[str]:
    """What differs between two manifests, one short phrase each (empty when equal)."""
    out: list[str] = []
    ow, nw = old.get("workflow", {}), new.get("workflow", {})
    if ow.get("name") != nw.get("name"):
        out.append(f"workflow {ow.get('name')!r} -> {nw.get('name')!r}")
    elif ow != nw:
        ost, nst = {s[0]: s for s in ow.get("stages", [])}, {s[0]: s for s in nw.get("stages", [])}
        fields = ("name", "prompt", "output_tokens", "function")
        for name in [*nst, *(n for n in ost if n not in nst)]:
            a, b = ost.get(name), nst.get(name)
            if a != b:
                what = (
                    "added"
                    if a is None
                    else "removed"
                    if b is None
                    else ", ".join(
                        f
                        for f, x, y in zip(fields, a + [None] * 4, b + [None] * 4, strict=False)
                        if x != y
                    )
                )
                out.append(f"stage {name!r} ({what})")
        if ow.get("fingerprint") != nw.get("fingerprint") and not out:
            out.append("workflow models or stages")
    od, nd = old.get("dataset", {}), new.get("dataset", {})
    if od != nd:
        out.append(
            f"dataset ({od.get('rows')} rows, sha256 {str(od.get('sha256'))[:12]} -> "
            f"{nd.get('rows')} rows, {str(nd.get('sha256'))[:12]})"
        )
    of, nf = old.get("fleet", {}), new.get("fleet", {})
    for name in [*nf, *(n for n in of if n not in nf)]:
        a, b = of.get(name), nf.get(name)
        if a != b:
            if a is None or b is None:
                out.append(f"engine {name!r} {'added' if a is None else 'removed'}")
            else:
                out.append(
                    f"engine {name!r} "
                    + ", ".join(
                        f"{k} {_short(a.get(k))} -> {_short(b.get(k))}"
                        for k in sorted(set(a) | set(b))
                        if a.get(k) != b.get(k)
                    )
                )
    if old.get("scorer") != new.get("scorer"):
        out.append(f"scorer {_short(old.get('scorer'))} -> {_short(new.get('scorer'))}")
    oo, no = old.get("options", {}), new.get("options", {})
    out.extend(
        f"{k} {oo.get(k)!r} -> {no.get(k)!r}"
        for k in sorted(set(oo) | set(no))
        if oo.get(k) != no.get(k)
    )
    return out or (["label_state.json"] if old != new else [])


def read_call_log(path: Path) -> tuple[dict[str, dict], int]:
    """The cached calls by digest, and how many lines could not be read.

    A last line without its newline is a record torn by a killed run: it is cut off the
    file (so the next record starts on a line of its own) and its call is redone.
    """
    cache: dict[str, dict] = {}
    if not path.is_file():
        return cache, 0
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with open(path, "r+b") as f:
            f.truncate(end)
            os.fsync(f.fileno())
    unreadable = 0
    for line in data[:end].splitlines():
        try:
            rec = json.loads(line)
            cache[rec["digest"]] = rec
        except (ValueError, KeyError, TypeError):
            unreadable += 1
    return cache, unreadable + (end < len(data))


def open_state(
    out: Path, new: dict, on_change: str, progress: Callable[[str], None]
) -> dict[str, dict]:
    """Check (or write) the manifest ``new`` of ``out``; return the call cache. Called with the lock held."""
    state_path = out / "label_state.json"
    old = None
    if state_path.is_file():
        try:
            old = json.loads(state_path.read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            raise AragogError(
                f"{state_path}: unreadable ({exc}); rerun with --restart to start over"
            ) from exc
        if not isinstance(old, dict) or old.get("format") != STATE_FORMAT:
            got = old.get("format") if isinstance(old, dict) else None
            raise AragogError(
                f"{out}: labelled by another labeller version ({got!r}, this one writes "
                f"{STATE_FORMAT!r}; its call cache is not reusable); rerun with --restart"
            )
    mode = on_change
    if old is not None and old != new:
        if mode == "refuse":
            raise AragogError(
                f"{out}: was labelled with something else: {'; '.join(describe_changes(old, new))}; "
                "rerun with --update to reuse the calls that still match (the rest are redone) "
                "or --restart to start over"
            )
        progress(
            f"labelled with something else before ({'; '.join(describe_changes(old, new))}): {mode}"
        )
    if mode == "restart":
        remove_durably(*(out / f for f in OUTPUT_FILES))
        old = None
    if old != new:
        remove_durably(
            out / "meta.json"
        )  # the dataset there no longer matches: incomplete until rewritten
        atomic_write(state_path, json.dumps(new, indent=1) + "\n")
    cache, unreadable = read_call_log(out / "calls.jsonl")
    if unreadable:
        progress(
            f"calls.jsonl: {unreadable} unreadable line(s) (a torn record is cut off); their calls are redone"
        )
    return cache


__all__ = [
    "ON_CHANGE",
    "OUTPUT_FILES",
    "STATE_FORMAT",
    "EngineTarget",
    "call_seed",
    "describe_changes",
    "function_pin",
    "json_digest",
    "key_str",
    "open_state",
    "read_call_log",
]
