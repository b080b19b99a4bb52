"""Load a user's function named ``module:function`` or ``path/to/file.py:function``.

One loader for every place that runs user code: the labeller's scorer and workflow
stage functions (``[[stage]] function = ...``). Errors are :class:`AragogError` naming
the reference and what is wrong with it, never a traceback.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from pathlib import Path

from aragog_jax.errors import AragogError


def load_callable(ref: str, what: str, example: str) -> Callable:
    """``module:function`` or ``path/to/file.py:function`` -> the callable.

    Args:
      ref: the reference.
      what: how errors name it (e.g. ``"scorer 'x:y'"``).
      example: a valid reference shown when ``ref`` is malformed.
    """
    mod_name, sep, fn_name = ref.rpartition(":")
    if not sep or not mod_name or not fn_name:
        raise AragogError(
            f"{what}: expected module:function or path/to/file.py:function, e.g. {example}"
        )
    if mod_name.endswith(".py"):
        path = Path(mod_name)
        if not path.is_file():
            raise AragogError(f"{what}: file {path} not found")
        mspec = importlib.util.spec_from_file_location(f"_aragog_user_{path.stem}", path)
        mod = importlib.util.module_from_spec(mspec)
        try:
            mspec.loader.exec_module(mod)
        except Exception as exc:  # noqa: BLE001 - the user's file: say which and why
            raise AragogError(f"{what}: cannot load {path}: {type(exc).__name__}: {exc}") from exc
    else:
        try:
            mod = importlib.import_module(mod_name)
        except ImportError as exc:
            raise AragogError(f"{what}: cannot import {mod_name!r}: {exc}") from exc
        except Exception as exc:  # noqa: BLE001 - the user's module raised while importing
            raise AragogError(
                f"{what}: importing {mod_name!r} raised {type(exc).__name__}: {exc}"
            ) from exc
    fn = getattr(mod, fn_name, None)
    if not callable(fn):
        raise AragogError(f"{what}: {mod_name} has no function {fn_name!r}")
    return fn
