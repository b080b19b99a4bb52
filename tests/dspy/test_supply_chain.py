"""Supply chain: the pinned LiteLLM is not a compromised release, and no unexpected
``.pth`` start-up file is installed.

LiteLLM 1.82.7 and 1.82.8 were compromised on PyPI on 2026-03-24 (TeamPCP): 1.82.8
shipped ``litellm_init.pth``, which Python's ``site`` module runs at every interpreter
start. A ``.pth`` file with an ``import`` line is code that runs before any of ours, so
the environment may hold only the ones listed here.
"""

from __future__ import annotations

import re
import site
import tomllib
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COMPROMISED_LITELLM = {"1.82.7", "1.82.8"}

#: name pattern -> why it is expected. Anything else fails the test.
ALLOWED_PTH = {
    r"distutils-precedence\.pth": "setuptools: prefer its vendored distutils",
    r"__editable__\.aragog_jax-[\w.]+\.pth": "this project installed with pip install -e",
    r"_virtualenv\.pth": "virtualenv's own venv hook",
}


def _site_dirs() -> list[Path]:
    dirs = list(site.getsitepackages()) + (
        [site.getusersitepackages()] if site.ENABLE_USER_SITE else []
    )
    return sorted({Path(d) for d in dirs if Path(d).is_dir()})


def unexpected_pth(dirs: list[Path]) -> list[str]:
    found = [p for d in dirs for p in sorted(d.glob("*.pth"))]
    return [str(p) for p in found if not any(re.fullmatch(pat, p.name) for pat in ALLOWED_PTH)]


def test_no_unexpected_pth_startup_files():
    dirs = _site_dirs()
    assert Path(metadata.distribution("litellm").locate_file("")).resolve() in {
        d.resolve() for d in dirs
    }
    unexpected = unexpected_pth(dirs)
    assert not unexpected, (
        f"unexpected .pth start-up files (code that runs at every interpreter start): {unexpected}"
    )


def test_the_scan_catches_the_compromised_releases_start_up_file(tmp_path):
    for name in (
        "distutils-precedence.pth",
        "__editable__.aragog_jax-0.1.0.pth",
        "litellm_init.pth",
    ):
        (tmp_path / name).write_text("import os\n")
    assert unexpected_pth([tmp_path]) == [str(tmp_path / "litellm_init.pth")]


def test_litellm_and_dspy_are_the_pinned_releases():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    pins = dict(re.fullmatch(r"([\w-]+)==([\w.]+)", req).groups() for req in extras["dspy"])
    assert set(pins) == {"dspy", "litellm"} and pins["litellm"] not in COMPROMISED_LITELLM
    assert (
        metadata.version("litellm") == pins["litellm"] and metadata.version("dspy") == pins["dspy"]
    )
    assert "aragog_jax[dspy]" in extras["test"]  # CI installs (and so runs) what this pins
    files = [str(f) for f in metadata.distribution("litellm").files or []]
    assert not [f for f in files if f.endswith(".pth")], (
        "the installed litellm ships a .pth start-up file"
    )
