"""SIGTERM / Ctrl-C: finish the current step, save a checkpoint, raise TrainingInterrupted (its exit code
the shell's: 143 / 130)."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import ddpm.training.tasks.diffusion as diffusion
from ddpm.config import dump_config
from ddpm.io.run_folder import load_checkpoint
from ddpm.training import TrainingInterrupted, train
from test_training import tiny_config


def _rows(path) -> int:
    try:
        with open(path, newline="") as f:
            return sum(1 for _ in csv.DictReader(f))
    except FileNotFoundError:
        return 0


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path):
    cfg = tiny_config(tmp_path, "term", "train.steps=1000000", "train.checkpoint_every=0")
    config_file = tmp_path / "term.toml"
    config_file.write_text(dump_config(cfg))
    script = textwrap.dedent(f"""
        import sys
        from ddpm.config import load_config
        from ddpm.training import TrainingInterrupted, train
        try:
            train(load_config({str(config_file)!r}), progress=False)
        except TrainingInterrupted as stop:
            print(stop)
            sys.exit(stop.exit_code)
        print("returned normally")
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    metrics = tmp_path / "term" / "metrics.csv"
    deadline = time.monotonic() + 120
    while _rows(metrics) < 3:
        assert proc.poll() is None, proc.stdout.read().decode()
        assert time.monotonic() < deadline, "training never logged three steps"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    out = out.decode()
    assert proc.returncode == 143, out
    assert "returned normally" not in out and "stopped by SIGTERM" in out and "--resume" in out
    ck = load_checkpoint(tmp_path / "term")
    assert ck.step >= 3 and f"at step {ck.step};" in out
    assert _rows(metrics) == ck.step  # log_every=1: one row per finished step, the last one included


def test_ctrl_c_in_process_saves_and_a_second_one_aborts(tmp_path, monkeypatch):
    real = diffusion.training_loss
    calls = {"n": 0}

    def interrupting(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(diffusion, "training_loss", interrupting)
    with pytest.raises(TrainingInterrupted, match="stopped by SIGINT at step 3") as stop:
        train(tiny_config(tmp_path, "int", "train.steps=50"), progress=False)
    assert stop.value.exit_code == 130 and stop.value.step == 3 and stop.value.run_dir == tmp_path / "int"
    assert load_checkpoint(tmp_path / "int").step == 3 and calls["n"] == 3
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored

    def twice(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(diffusion, "training_loss", twice)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(tmp_path, "abort", "train.steps=50"), progress=False)
    assert not (tmp_path / "abort" / "latest").exists()
