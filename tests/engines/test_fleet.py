"""The one fleet-engines loader behind serve, simulate and label."""

from __future__ import annotations

import pytest

from aragog_jax.engines.fleet import load_engine_fleet
from aragog_jax.errors import SpecError
from aragog_jax.serving import load_runtime
from aragog_jax.sim import load_setup
from aragog_jax.spec import PROFILES_DIR
from tests.serving._fleetkit import write_fleet

SHIPPED = PROFILES_DIR / "fleets" / "qwen_4gpu.toml"


def test_serve_and_simulate_load_the_same_engines():
    ef = load_engine_fleet(SHIPPED)
    served = load_runtime(SHIPPED, compile_routers=False).engines
    simulated = load_setup("self_refine_humaneval", "qwen", fleet=SHIPPED).engines
    assert [(e.name, e.model, e.profile) for e in ef.engines] == [
        (e.name, e.model, e.profile) for e in served
    ]
    assert [(e.name, e.profile, e.num_gpus) for e in simulated] == [
        (e.name, e.profile, e.num_gpus) for e in ef.engines
    ]
    assert all(e.profiled and e.emulated for e in ef.engines)
    assert sum(e.num_gpus for e in ef.engines) == 4


def test_real_engine_without_profile_gets_the_placeholder(tmp_path):
    path = write_fleet(tmp_path, [("e", "small", "http://127.0.0.1:9")])
    (e,) = load_engine_fleet(path).engines
    assert not e.profiled and not e.emulated and e.profile.saturation_batch == 16
    with pytest.raises(SpecError, match=r"engine\[0\]\.profile: the simulator needs"):
        load_engine_fleet(path, need_profiles="the simulator needs a profile for every engine")


@pytest.mark.parametrize(
    ("old", "new", "needle"),
    [
        ('url = "http://127.0.0.1:9"\n', "", r"engine\[0\]\.url: a vllm engine needs a url"),
        ('kind = "vllm"', 'kind = "emulated"', r"engine\[0\]\.profile: an emulated engine needs"),
    ],
)
def test_bad_engines_are_spec_errors_naming_the_field(tmp_path, old, new, needle):
    path = write_fleet(tmp_path, [("e", "small", "http://127.0.0.1:9")])
    path.write_text(path.read_text().replace(old, new))
    with pytest.raises(SpecError, match=needle) as info:
        load_engine_fleet(path)
    assert str(path) in str(info.value)


def test_check_family_names_the_engine_outside_it(tmp_path):
    path = write_fleet(tmp_path, [("e", "small", "http://127.0.0.1:9")])
    ef = load_engine_fleet(path)
    assert [m.name for m in ef.check_family("t")] == ["small", "big"]
    path.write_text(path.read_text().replace('model = "small"', 'model = "Qwen2.5-7B-Instruct"'))
    path.write_text(path.read_text().replace('models = "models.toml"\n', ""))
    with pytest.raises(SpecError, match=r"engine\[0\]\.model: 'Qwen2\.5-7B-Instruct' is not in"):
        load_engine_fleet(path).check_family("llama")
