"""`ddpm demo` end to end with a tiny model and a few steps: training, the 10-row grid, metrics printed and
saved, reuse of a finished run, --retrain, and a clear error for a folder holding another run."""

from __future__ import annotations

import json

import pytest
from PIL import Image

import ddpm.evaluation.context as eval_context
from ddpm.cli import main
from ddpm.evaluation import JudgeRecipe

# A model and schedule small enough that the whole demo path runs in seconds.
TINY = [
    "--set", "model.model_channels=8", "--set", "model.channel_mult=[1, 2]", "--set", "model.norm_groups=4",
    "--set", "model.attention_resolutions=[2]", "--set", "model.num_head_channels=8",
    "--set", "diffusion.num_timesteps=20", "--set", "train.steps=4", "--set", "train.batch_size=16",
    "--set", "train.warmup_steps=1", "--set", "train.checkpoint_every=2", "--set", "sample.steps=4",
    "--per-class", "2", "--bpd-num", "4", "--quiet",
]  # fmt: skip


@pytest.fixture
def tiny_judge(monkeypatch, tmp_path):
    """A quick judge recipe (the real one takes ~15 s) cached in a temporary folder."""
    monkeypatch.setenv("DDPM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(eval_context, "JudgeRecipe", lambda: JudgeRecipe(width=8, feature_dim=16, epochs=1))


def test_demo_trains_samples_a_grid_and_reports(capsys, tmp_path, tiny_judge):
    out = tmp_path / "runs" / "demo"
    assert main(["demo", "--out", str(out), *TINY]) == 0
    printed = capsys.readouterr().out
    assert "training the demo model" in printed
    for name in ("accuracy", "fd", "bpd"):
        assert f"\n{name} " in printed, name
    assert "floor" in printed and "goal (accuracy >= 0.97, fd <= 2x floor):" in printed

    grid = Image.open(out / "samples.png")
    # 10 rows (one per class) of 2 images of 16x16 with 2-pixel padding around each
    assert grid.size == (2 + 2 * 18, 2 + 10 * 18)
    meta = grid.text
    assert "Sampler: DPM++ 2M" in meta["parameters"] and "Steps: 4" in meta["parameters"]

    blob = json.loads((out / "metrics.json").read_text())
    assert blob["action"] == "train"
    assert set(blob["metrics"]) == {"accuracy", "fd", "bpd"}
    assert blob["metrics"]["fd"]["num"] == 20 and blob["metrics"]["fd"]["stratified"]
    assert 0 <= blob["metrics"]["accuracy"]["value"] <= 1
    assert blob["metrics"]["bpd"]["num"] == 4 and blob["metrics"]["bpd"]["value"] > 0
    assert blob["goal_met"] == (
        blob["metrics"]["accuracy"]["value"] >= 0.97 and blob["metrics"]["fd"]["ratio"] <= 2.0
    )

    # A second call finds the finished run and only samples and measures again, with the same images;
    # settings of how training runs (threads, cadences) do not make it another run.
    before = (out / "samples.png").read_bytes()
    assert (
        main(["demo", "--out", str(out), *TINY, "--set", "train.num_threads=1", "--set", "train.log_every=1"])
        == 0
    )
    assert "reusing the trained demo" in capsys.readouterr().out
    assert json.loads((out / "metrics.json").read_text())["action"] == "reuse"
    assert (out / "samples.png").read_bytes() == before

    # The same folder with another config is refused; --retrain replaces it.
    code = main(["demo", "--out", str(out), *TINY, "--set", "train.lr=3e-4"])
    err = capsys.readouterr().err
    assert code == 2 and "another config; pass --retrain" in err
    assert main(["demo", "--out", str(out), *TINY, "--set", "train.lr=3e-4", "--retrain"]) == 0
    assert json.loads((out / "metrics.json").read_text())["action"] == "train"


def test_demo_stops_when_training_is_interrupted_and_resumes_next_time(
    capsys, tmp_path, tiny_judge, monkeypatch
):
    import ddpm.training

    real_train = ddpm.training.train

    def interrupted(config, **kwargs):  # what SIGTERM does: a checkpoint, then TrainingInterrupted
        run = real_train(config, **kwargs, stop_after=2)
        raise ddpm.training.TrainingInterrupted("SIGTERM", step=2, run_dir=run)

    out = tmp_path / "demo"
    monkeypatch.setattr(ddpm.training, "train", interrupted)
    assert main(["demo", "--out", str(out), *TINY]) == 143
    err = capsys.readouterr().err
    assert "ddpm demo: interrupted: stopped by SIGTERM at step 2" in err
    assert "Continue with the same `ddpm demo` command" in err
    assert not (out / "samples.png").exists()

    monkeypatch.setattr(ddpm.training, "train", real_train)
    assert main(["demo", "--out", str(out), *TINY]) == 0
    assert "resuming the demo model" in capsys.readouterr().out
    assert json.loads((out / "metrics.json").read_text())["action"] == "resume"
