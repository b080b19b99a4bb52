"""python -m aragog_jax.serve: user mistakes are one line and exit status 2."""

from __future__ import annotations

import pytest

from aragog_jax._cli import run_cli
from aragog_jax.serve import main


def test_missing_fleet_is_exit_2(tmp_path, capsys):
    assert run_cli(main, ["--fleet", str(tmp_path / "nope.toml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "nope.toml" in err and err.count("\n") == 1


def test_bad_time_scale_is_exit_2(capsys):
    assert run_cli(main, ["--time-scale", "0"]) == 2
    assert "--time-scale must be > 0" in capsys.readouterr().err


def test_fleet_with_unknown_model_is_exit_2(tmp_path, capsys):
    from ._fleetkit import write_fleet

    path = write_fleet(tmp_path, [("e", "no-such-model", "http://127.0.0.1:9")])
    assert run_cli(main, ["--fleet", str(path)]) == 2
    assert "engine[0].model" in capsys.readouterr().err


def test_help_lists_routes(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "--fleet" in out and "/v1/workflows/{name}/runs" in out


def test_busy_port_is_exit_2(tmp_path, capsys):
    import socket

    from ._fleetkit import write_fleet

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        path = write_fleet(
            tmp_path,
            [("e-small", "small", "http://127.0.0.1:9"), ("e-big", "big", "http://127.0.0.1:9")],
        )
        assert run_cli(main, ["--fleet", str(path), "--port", str(port)]) == 2
    assert "cannot listen on 127.0.0.1" in capsys.readouterr().err


def test_bad_beam_width_is_exit_2(capsys):
    assert run_cli(main, ["--beam-width", "0"]) == 2
    assert "--beam-width must be >= 1" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["-1", "nan", "inf"])
def test_bad_routing_budget_is_exit_2(capsys, value):
    assert run_cli(main, ["--routing-budget-ms", value]) == 2
    assert "--routing-budget-ms must be a finite number >= 0" in capsys.readouterr().err


def test_api_keys_env_naming_an_unset_variable_is_exit_2(tmp_path, capsys, monkeypatch):
    """Auth never fails open: the configured key source is empty, so the server does not start."""
    from ._fleetkit import write_fleet

    monkeypatch.delenv("ARAGOG_NO_SUCH_KEYS", raising=False)
    path = write_fleet(
        tmp_path,
        [("e", "small", "http://127.0.0.1:9")],
        server={"api_keys_env": "ARAGOG_NO_SUCH_KEYS"},
    )
    assert run_cli(main, ["--fleet", str(path)]) == 2
    err = capsys.readouterr().err
    assert (
        err.count("\n") == 1
        and "server.api_keys_env: environment variable ARAGOG_NO_SUCH_KEYS is not set" in err
    )


def test_no_fast_lane_reaches_the_server_options(tmp_path, monkeypatch):
    """``--no-fast-lane`` turns ServeOptions.fast_lane off (the default is on)."""
    import asyncio

    from aragog_jax import serve
    from aragog_jax.serving import _server

    from ._fleetkit import write_fleet

    fleet = str(write_fleet(tmp_path, [("e-small", "small", "http://127.0.0.1:9")]))

    seen = []

    class Stop(Exception):
        pass

    def capture(self, fleet, options):
        seen.append(options.fast_lane)
        raise Stop

    monkeypatch.setattr(_server.Server, "__init__", capture)
    for argv in (["--fleet", fleet], ["--fleet", fleet, "--no-fast-lane"]):
        with pytest.raises(Stop):
            asyncio.run(serve._serve(serve.build_parser().parse_args(argv)))
    assert seen == [True, False]
