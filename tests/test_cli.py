"""The `ddpm` command: help for every command, one-line user errors with exit status 2, the console script,
and train -> sample -> export -> eval end to end on a tiny model."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ddpm.cli import COMMANDS, main


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_top_level_help_lists_every_command(capsys):
    code, out, _ = _run(capsys, "--help")
    assert code == 0
    assert out.startswith("usage: ddpm")
    for name in COMMANDS:
        assert f"\n    {name} " in out, name
    code, out, _ = _run(capsys)  # no command: the same help, status 0
    assert code == 0 and "usage: ddpm" in out


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(capsys, command):
    code, out, err = _run(capsys, command, "--help")
    assert code == 0 and err == ""
    assert out.startswith(f"usage: ddpm {command}")
    assert "example" in out  # each help ends with a runnable example


def test_console_script_entry_point():
    script = Path(sys.executable).with_name("ddpm")
    assert script.is_file(), "the `ddpm` console script is not installed in this environment"
    proc = subprocess.run([str(script), "eval", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: ddpm eval")
    proc = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("ddpm ")


def _assert_one_line_error(code, err, command, *fragments):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"ddpm {command}: error: "), err
    assert "Traceback" not in err
    for f in fragments:
        assert f in lines[0], (f, lines[0])


def test_user_errors_are_one_line_with_status_2(capsys, tmp_path):
    code, _, err = _run(capsys, "train")
    _assert_one_line_error(code, err, "train", "--config")

    code, _, err = _run(capsys, "train", "--config", str(tmp_path / "missing.toml"))
    _assert_one_line_error(code, err, "train", "missing.toml", "does not exist")

    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nstepz = 3\n")
    code, _, err = _run(capsys, "train", "--config", str(bad))
    _assert_one_line_error(code, err, "train", "stepz")

    code, _, err = _run(capsys, "train", "--resume", str(tmp_path))
    _assert_one_line_error(code, err, "train", "not a run folder")

    code, _, err = _run(capsys, "sample", "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "o"))
    _assert_one_line_error(code, err, "sample", "no such run folder or model file")

    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    code, _, err = _run(capsys, "sample", "--model", str(notes), "--out", str(tmp_path / "o"))
    _assert_one_line_error(code, err, "sample", "not a .safetensors model file")

    code, _, err = _run(capsys, "eval", "--model", str(tmp_path), "--metric", "fd,nope")
    _assert_one_line_error(code, err, "eval", "unknown metric nope", "accuracy, fd, bpd")

    code, _, err = _run(capsys, "export", str(tmp_path / "nope"), "--out", str(tmp_path / "m.safetensors"))
    _assert_one_line_error(code, err, "export", "no such run folder")

    code, _, err = _run(capsys, "export", str(tmp_path), "--out", str(tmp_path / "m.ckpt"))
    _assert_one_line_error(code, err, "export", ".safetensors")

    code, _, err = _run(capsys, "demo", "--out", str(tmp_path), "--set", "data.condition=none")
    _assert_one_line_error(code, err, "demo", "data.condition = 'class'")


def test_argparse_errors_also_exit_2(capsys):
    code, _, err = _run(capsys, "sample", "--model", "m", "--out", "o", "--steps", "0")
    assert code == 2 and "ddpm sample: error: argument --steps" in err
    code, _, err = _run(capsys, "nope")
    assert code == 2 and "invalid choice" in err


def test_python_dash_m_runs_the_cli():
    argv = [sys.executable, "-m", "ddpm.cli", "sample", "--help"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("usage: ddpm sample")


def test_packaged_demo_config_loads():
    from ddpm import configs
    from ddpm.config import load_config

    assert "demo" in configs.names()
    config = load_config(configs.path("demo"))
    assert (
        config.data.condition == "class" and config.sample.sampler == "dpmpp_2m" and config.sample.steps == 20
    )
    with pytest.raises(FileNotFoundError, match="packaged: demo"):
        configs.path("nope")
    assert config.sample.num == 100
