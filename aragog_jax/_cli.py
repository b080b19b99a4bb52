"""Shared command-line plumbing: user mistakes become one-line errors and exit status 2."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from aragog_jax.errors import AragogError

EXIT_USER_ERROR = 2


def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> int:
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
