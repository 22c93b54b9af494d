"""The `ddpm` command: help for every command, one-line user errors with exit status 2, the console script,
and train -> sample -> export -> eval end to end on a tiny model."""

from __future__ import annotations

import json
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
    code, out, _ = _run(capsys, "--version")
    assert code == 0 and out.startswith("ddpm 0.")


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(capsys, command):
    code, out, err = _run(capsys, command, "--help")
    assert code == 0 and err == ""
    assert out.startswith(f"usage: ddpm {command}")
    if command in ("demo", "train", "sample", "export", "eval"):
        assert "example" in out  # these helps end with a runnable example


def test_console_script_entry_point():
    script = Path(sys.executable).with_name("ddpm")
    assert script.is_file(), "the `ddpm` console script is not installed in this environment"
    proc = subprocess.run([str(script), "eval", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: ddpm eval")


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
    _assert_one_line_error(code, err, "sample", "neither a ddpm model", "5 bytes long, too short")

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


TINY_CONFIG = """
[run]
name = "tiny"

[data]
dataset = "digits"
condition = "class"

[model]
model_channels = 8
channel_mult = [1, 2]
attention_resolutions = [2]
num_head_channels = 8
norm_groups = 4

[diffusion]
num_timesteps = 20

[train]
steps = 2
batch_size = 8
warmup_steps = 1
checkpoint_every = 2
sample_every = 0

[sample]
steps = 3
guidance_scale = 1.5
"""


def test_train_sample_export_eval_end_to_end(capsys, tmp_path, monkeypatch):
    import ddpm.evaluation.context as eval_context
    from ddpm.evaluation import JudgeRecipe
    from ddpm.io.images import read_png_metadata

    monkeypatch.setenv("DDPM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(eval_context, "JudgeRecipe", lambda: JudgeRecipe(width=8, feature_dim=16, epochs=1))
    config = tmp_path / "tiny.toml"
    config.write_text(TINY_CONFIG)
    runs = tmp_path / "runs"
    code, out, err = _run(capsys, "train", "--config", str(config), "--set", f"run.dir={runs}", "--quiet")
    assert code == 0, err
    run = runs / "tiny"
    assert f"run folder: {run}" in out and (run / "latest").is_file()

    # Training into the same folder again is a one-line error that names the fix.
    code, _, err = _run(capsys, "train", "--config", str(config), "--set", f"run.dir={runs}", "--quiet")
    _assert_one_line_error(code, err, "train", "--resume")

    # sample: per-image PNGs with metadata, and a grid; --class by index.
    samples = tmp_path / "samples"
    code, out, err = _run(capsys, "sample", "--model", str(run), "--num", "3", "--seed", "5", "--class", "7",
                          "--sampler", "ddim", "--out", str(samples), "--quiet")  # fmt: skip
    assert code == 0, err
    names = sorted(p.name for p in samples.iterdir())
    assert names == ["00000-seed5.png", "00001-seed6.png", "00002-seed7.png", "grid.png"]
    meta = read_png_metadata(samples / "00001-seed6.png")
    params = meta["parameters"]
    assert (
        "Seed: 6" in params
        and "Sampler: DDIM" in params
        and "Steps: 3" in params
        and "CFG scale: 1.5" in params
    )
    assert "Model hash: " in params
    assert json.loads(meta["ddpm"])["class_label"] == 7
    assert "grid" in json.loads(read_png_metadata(samples / "grid.png")["ddpm"])

    # export, then the file samples the same images as the run folder.
    model = tmp_path / "tiny.safetensors"
    code, out, err = _run(capsys, "export", str(run), "--out", str(model))
    assert code == 0 and model.is_file() and "step 2" in out, err
    code, _, err = _run(capsys, "export", str(run), "--out", str(model))
    _assert_one_line_error(code, err, "export", "--force")
    again = tmp_path / "again"
    code, _, err = _run(capsys, "sample", "--model", str(model), "--num", "3", "--seed", "5", "--class", "7",
                        "--sampler", "ddim", "--out", str(again), "--quiet")  # fmt: skip
    assert code == 0, err
    from PIL import Image

    for name in names[:3]:
        assert Image.open(samples / name).tobytes() == Image.open(again / name).tobytes()

    # Unknown class: a one-line error listing the classes.
    code, _, err = _run(capsys, "sample", "--model", str(model), "--class", "12", "--out", str(again))
    _assert_one_line_error(code, err, "sample", "unknown class '12'", "10 classes")

    # eval on the exported file: a table on stdout and the same numbers in JSON.
    report = tmp_path / "eval.json"
    argv = ["--num", "20", "--bpd-num", "3", "--steps", "2", "--fd-repeats", "2", "--out", str(report)]
    code, out, err = _run(capsys, "eval", "--model", str(model), *argv, "--quiet")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["metric", "value", "context"]
    assert [line.split()[0] for line in lines[1:4]] == ["accuracy", "fd", "bpd"]
    blob = json.loads(report.read_text())
    assert set(blob["metrics"]) == {"accuracy", "fd", "bpd"}
    assert blob["options"]["num"] == 20 and blob["options"]["sampling"]["steps"] == 2
    assert blob["metrics"]["fd"]["repeats"] == 2 and blob["metrics"]["bpd"]["num"] == 3
    assert blob["meta"]["training"]["step"] == 2


def test_diverged_training_is_a_one_line_error(capsys, tmp_path):
    config = tmp_path / "tiny.toml"
    config.write_text(TINY_CONFIG)
    blow_up = [
        "train.lr=1e30",
        "train.grad_clip=0",
        "train.max_nonfinite=1",
        "train.warmup_steps=0",
        "train.steps=6",
    ]
    sets = [arg for s in blow_up + [f"run.dir={tmp_path}"] for arg in ("--set", s)]
    code, _, err = _run(capsys, "train", "--config", str(config), *sets, "--quiet")
    _assert_one_line_error(code, err, "train", "non-finite loss or gradient", "Lower train.lr")


def test_example_configs_load():
    from ddpm.config import load_config

    files = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.toml"))
    assert {f.stem for f in files} >= {"digits", "faces", "my-images"}
    for f in files:
        config = load_config(f)
        assert config.run.name == f.stem, f
