"""Spec validation: one broken file per error kind, each a one-line error naming the field."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from aragog_jax.errors import SpecError
from aragog_jax.spec import (
    WORKFLOWS_DIR,
    load_fleet,
    load_models,
    load_profile,
    load_workflow,
    resolve_workflow,
    shipped_workflows,
)

GOOD_STAGE = """
[[stage]]
name = "{name}"
upstream = {upstream}
input_tokens = 10
output_tokens = 5
prompt = "{{input}}"
"""


def _wf(tmp_path, body: str, name: str = "wf.toml"):
    p = tmp_path / name
    p.write_text('name = "wf"\n' + textwrap.dedent(body))
    return p


def _stages(*pairs: tuple[str, list[str]]) -> str:
    return "".join(GOOD_STAGE.format(name=n, upstream=repr(u).replace("'", '"')) for n, u in pairs)


BROKEN = {
    "duplicate stage": (
        _stages(("a", []), ("a", [])),
        r"stage\[1\]\.name: duplicate stage name 'a'",
    ),
    "unknown upstream": (
        _stages(("a", []), ("b", ["zz"])),
        r"stage\[1\]\.upstream: unknown stage 'zz'",
    ),
    "cycle": (_stages(("a", ["c"]), ("b", ["a"]), ("c", ["b"])), r"cycle a -> c -> b -> a"),
    "self loop": (_stages(("a", ["a"])), r"stage\[0\]\.upstream: stage 'a' lists itself"),
    "unknown model": (
        _stages(("a", [])) + 'models = ["GPT-17"]\n',
        r"stage\[0\]\.models: unknown model 'GPT-17'",
    ),
    "negative tokens": (
        '[[stage]]\nname = "a"\nprompt = "x"\ninput_tokens = -3\noutput_tokens = 1\n',
        r"stage\[0\]\.input_tokens: Expected `int` >= 0",
    ),
    "no stages": ("stage = []\n", r"stage: a workflow needs at least one stage"),
    "unknown field": (_stages(("a", [])) + "colour = 1\n", r"unknown field `colour`"),
    "bad placeholder": (
        '[[stage]]\nname = "a"\nprompt = "{b}"\ninput_tokens = 1\noutput_tokens = 1\n',
        r"stage\[0\]\.prompt: placeholder \{b\}",
    ),
    "wrong type": (
        '[[stage]]\nname = "a"\nprompt = "x"\ninput_tokens = "ten"\noutput_tokens = 1\n',
        r"stage\[0\]\.input_tokens: Expected `int`, got `str`",
    ),
    "not toml": ("[[stage]\n", r"not valid TOML"),
}


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_broken_workflow_names_file_field_value(tmp_path, catalog, kind):
    body, pattern = BROKEN[kind]
    path = _wf(tmp_path, body)
    with pytest.raises(SpecError, match=pattern) as info:
        load_workflow(path, catalog)
    assert str(path) in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(SpecError, match="workflow file not found"):
        load_workflow(tmp_path / "nope.toml")


def test_resolve_workflow_takes_a_file_or_a_shipped_name_and_names_what_is_missing(tmp_path):
    wf = tmp_path / "mine.toml"
    wf.write_text("")
    assert resolve_workflow(wf) == wf and resolve_workflow(str(wf)) == wf
    assert resolve_workflow("self_refine_squad") == WORKFLOWS_DIR / "self_refine_squad.toml"
    for missing in (tmp_path / "nope.toml", "no_such_workflow"):
        with pytest.raises(SpecError, match="workflow file not found") as info:
            resolve_workflow(missing)
        assert str(missing) in str(info.value) and "self_refine_squad" in str(info.value)


def test_shipped_workflows_load(catalog):
    names = [load_workflow(p, catalog).name for p in shipped_workflows()]
    assert names == sorted(names) and len(names) == 5


def test_model_catalog_families_reference_known_models(tmp_path):
    p = tmp_path / "m.toml"
    p.write_text('[families]\nx = ["nope"]\n')
    p.write_text(
        '[families]\nx = ["nope"]\n[[model]]\nname = "a"\nfamily = "f"\nnum_params = 1\nnum_layers = 1\n'
        "hidden_size = 1\nnum_attention_heads = 1\nnum_kv_heads = 1\nhead_dim = 1\n"
    )
    with pytest.raises(SpecError, match=r"families\.x: unknown model 'nope'"):
        load_models(p)


def test_shipped_catalog_architecture_numbers():
    cat = load_models()
    by = {m.name: m for m in cat.model}
    assert by["Llama-3.1-70B-Instruct"].num_layers == 80
    assert by["Qwen2.5-7B-Instruct"].num_kv_heads == 4
    # 2 (K,V) * layers * kv_heads * head_dim * 2 bytes
    assert by["Llama-3.1-8B-Instruct"].kv_bytes_per_token == 2 * 32 * 8 * 128 * 2
    assert set(cat.families) >= {"qwen", "llama", "mixed"}


def test_fleet_missing_references(tmp_path):
    p = tmp_path / "fleet.toml"
    p.write_text('workflows = ["missing.toml"]\n[[engine]]\nname = "e"\nmodel = "m"\n')
    with pytest.raises(SpecError, match=r"workflows\[0\]: file not found"):
        load_fleet(p)
    p.write_text(
        'workflows = []\n[[engine]]\nname = "e"\nmodel = "m"\n[[engine]]\nname = "e"\nmodel = "m"\n'
    )
    with pytest.raises(SpecError, match=r"engine\[1\]\.name: duplicate engine name 'e'"):
        load_fleet(p)


def test_profile_curve_must_increase(tmp_path):
    p = tmp_path / "p.toml"
    p.write_text(
        'model = "m"\nhardware = "h"\ntensor_parallel = 1\nkind = "derived"\nsaturation_batch = 4\n'
        "kv_capacity_tokens = 100\nprefill_tokens_per_s = 1.0\ndecode_base_s = 0.01\n"
        "decode_per_seq_s = 0.0\ndecode_per_ctx_token_s = 0.0\ncurve = [[2, 10.0], [1, 5.0]]\n"
    )
    with pytest.raises(SpecError, match=r"curve: concurrency values must be strictly increasing"):
        load_profile(p)


def test_cli_prints_one_line_error_and_exits_2(tmp_path):
    body, _ = BROKEN["cycle"]
    path = _wf(tmp_path, body)
    proc = subprocess.run(
        [sys.executable, "-m", "aragog_jax.inspect", str(path), "--family", "qwen"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert 1 <= len(lines) <= 2 and lines[0].startswith("error: ")
    assert "Traceback" not in proc.stderr


def test_tune_xla_adds_only_the_flags_the_user_did_not_set():
    from aragog_jax._cli import XLA_CPU_FLAGS, tune_xla

    env: dict[str, str] = {}
    assert tune_xla(env).split() == list(XLA_CPU_FLAGS)
    assert tune_xla(env).split() == list(XLA_CPU_FLAGS)  # idempotent
    mine = {
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2 --xla_cpu_enable_concurrency_optimized_scheduler=true"
    }
    assert (
        tune_xla(mine)
        == mine["XLA_FLAGS"]
        == (
            "--xla_force_host_platform_device_count=2 --xla_cpu_enable_concurrency_optimized_scheduler=true"
        )
    )  # the user's own setting wins


def test_serve_and_simulate_clis_run_with_the_tuned_flags():
    """The scheduling-bound CLIs set the flags before JAX starts; the others do not."""
    code = (
        "import os, runpy, sys, aragog_jax._cli as c\n"
        "c.run_cli = lambda main: print(os.environ.get('XLA_FLAGS', '')) or 0\n"
        "runpy.run_module('aragog_jax.' + sys.argv[1], run_name='__main__')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    for cli, tuned in (("serve", True), ("simulate", True), ("route", False)):
        proc = subprocess.run(
            [sys.executable, "-c", code, cli], capture_output=True, text=True, check=False, env=env
        )
        assert proc.returncode == 0, proc.stderr
        assert ("xla_cpu_enable_concurrency_optimized_scheduler=false" in proc.stdout) == tuned, (
            cli,
            proc.stdout,
        )
