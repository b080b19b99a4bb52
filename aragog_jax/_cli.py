"""Shared command-line plumbing: user mistakes become one-line errors and exit status 2,
and the XLA:CPU flags the tools run with."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence

from aragog_jax.errors import AragogError

EXIT_USER_ERROR = 2

#: XLA flags the scheduling-bound tools (``serve``, ``simulate``, ``bench/paper.py``) run
#: with, unless ``XLA_FLAGS`` already sets them. XLA:CPU's concurrency-optimised HLO
#: scheduler orders a program for parallel thunk execution; for the scheduler's small,
#: loop-heavy round that costs ~30 µs per call on a 2-core CPU (an empty round: ~90 ->
#: ~60 µs; the simulator's headline case runs ~13% faster without it), while it helps
#: large matmul batches a little (the 4096-row router bucket: ~5% slower without it), so
#: the batch routing and training tools keep XLA's default. Other backends ignore
#: ``xla_cpu_`` flags.
XLA_CPU_FLAGS = ("--xla_cpu_enable_concurrency_optimized_scheduler=false",)


def tune_xla(environ=os.environ) -> str:
    """Add :data:`XLA_CPU_FLAGS` to ``XLA_FLAGS`` (those the user did not set); returns it.

    Takes effect only before JAX creates its backends (the first computation), which is
    why the CLIs call it first thing.
    """
    flags = environ.get("XLA_FLAGS", "")
    for flag in XLA_CPU_FLAGS:
        if flag.split("=", 1)[0] not in flags:
            flags = f"{flags} {flag}".strip()
    environ["XLA_FLAGS"] = flags
    return flags


def run_cli(
    main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None
) -> int:
    """Run ``main(argv)``; an :class:`AragogError` prints ``error: ...`` and returns 2.

    Anything else is a bug and keeps its traceback.
    """
    try:
        code = main(argv)
    except AragogError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(code or 0)
