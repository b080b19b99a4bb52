"""Shipped engine profiles and fleets: regenerated from the formula and the fit, and loadable."""

from __future__ import annotations

from aragog_jax.perf.derive import ENGINES_DIR, SHIPPED, load_published_points, shipped_profiles
from aragog_jax.spec import (
    PROFILES_DIR,
    family_pool,
    load_fleet,
    load_profile,
    resolve,
    shipped_workflows,
)


def test_shipped_profiles_match_the_formula():
    files = shipped_profiles()
    assert len(files) == len(SHIPPED) == 9
    on_disk = {p.name for p in ENGINES_DIR.glob("*.toml")}
    assert set(files) <= on_disk
    for name, text in files.items():
        assert (ENGINES_DIR / name).read_text() == text, (
            f"{name} is stale: run python -m aragog_jax.perf.derive"
        )


def test_shipped_profiles_load_and_are_labelled_fitted_or_derived():
    """``fitted`` exactly where published points of that model at that TP exist."""
    points, _ = load_published_points()
    measured = {(pt.model, pt.tensor_parallel) for pt in points}
    kinds = {}
    for path in sorted(ENGINES_DIR.glob("*_h100_tp*.toml")):
        p = load_profile(path)
        kinds[(p.model, p.tensor_parallel)] = p.kind
        assert p.kind == ("fitted" if (p.model, p.tensor_parallel) in measured else "derived")
        assert p.kind.upper() in path.read_text().splitlines()[0]
        assert 1 <= p.saturation_batch <= p.curve[-1].concurrency
        assert p.kv_capacity_tokens >= p.curve[-1].concurrency * 1024
    assert len(kinds) == len(SHIPPED)
    assert {k for k, v in kinds.items() if v == "fitted"} == {("Llama-3.1-8B-Instruct", 1)}


FLEETS = {"qwen_8gpu": 8, "llama_8gpu": 8, "mixed_8gpu": 8, "qwen_4gpu": 4}


def test_fleets_cover_their_family_and_every_workflow(catalog):
    shipped = {p.resolve() for p in shipped_workflows()}
    for name, gpus in FLEETS.items():
        path = PROFILES_DIR / "fleets" / f"{name}.toml"
        fleet = load_fleet(path)
        assert sum(e.tensor_parallel for e in fleet.engine) == gpus
        assert {resolve(path, w).resolve() for w in fleet.workflows} == shipped
        pool = {m.name for m in family_pool(catalog, fleet.family)}
        assert {e.model for e in fleet.engine} == pool
        for e in fleet.engine:
            assert not e.url and e.kind == "emulated"
            prof = load_profile(resolve(path, e.profile))
            assert prof.model == e.model and prof.tensor_parallel == e.tensor_parallel
