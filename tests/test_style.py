"""The house style and the layers are checked, not hoped for (STYLE.md §20).

Ruff formats and lints the whole repository, and import-linter checks the layer contracts
declared in ``pyproject.toml`` (``[tool.importlinter]``), inside the README's test command,
so a new violation fails CI. Both tools come with the ``test`` extra.
"""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _tool(name: str) -> str:
    exe = Path(sys.executable).with_name(name)
    found = str(exe) if exe.exists() else shutil.which(name)
    if found is None:
        pytest.fail(
            f"{name} is not installed; it comes with the test extra: pip install -e '.[test]'"
        )
    return found


def _run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_ruff_format_is_clean():
    res = _run(_tool("ruff"), "format", "--check", ".")
    assert res.returncode == 0, f"run `ruff format .`:\n{res.stdout}{res.stderr}"


def test_ruff_lint_is_clean():
    res = _run(_tool("ruff"), "check", ".")
    assert res.returncode == 0, f"ruff check:\n{res.stdout}{res.stderr}"


def test_import_contracts_are_kept():
    res = _run(_tool("lint-imports"), "--no-cache")
    assert res.returncode == 0, f"lint-imports:\n{res.stdout[-4000:]}{res.stderr}"


def test_no_package_imports_another_packages_private_module():
    """``aragog_jax.<pkg>._x`` is private to ``<pkg>``: other packages use what ``<pkg>``
    exports. Root-level helpers (``aragog_jax._files``, ``_cli``, ...) are shared by all."""
    import grimp  # import-linter's graph library (always installed with it)

    graph = grimp.build_graph("aragog_jax")
    bad = []
    for module in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            parts = imported.split(".")
            private = [
                i for i, p in enumerate(parts) if p.startswith("_") and not p.startswith("__")
            ]
            if not private:
                continue
            owner = ".".join(parts[: private[0]])
            if owner != "aragog_jax" and module != owner and not module.startswith(owner + "."):
                bad.append(f"{module} imports {imported}")
    assert not bad, "private modules imported across packages:\n" + "\n".join(bad)
