"""Checkpoints survive a writer killed with SIGKILL mid-write: `latest` always names a complete one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from ddpm.config import dump_config
from ddpm.io.run_folder import (
    TEST_BLOCK_ENV,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from ddpm.training import train
from test_training import assert_same_checkpoint, tiny_config

META = {"unet": {}, "diffusion": {"schedule": {"name": "linear"}}}  # the least a model file says


def _run_until_blocked(script: str, marker, env_value: str, timeout: float = 120.0) -> subprocess.Popen:
    env = {**os.environ, TEST_BLOCK_ENV: env_value, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if proc.poll() is not None:
            raise AssertionError(f"writer exited early:\n{proc.stdout.read().decode()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("the writer never reached the blocking point")
        time.sleep(0.05)
    return proc


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL


def test_training_killed_while_writing_a_checkpoint_resumes_from_the_previous_one(tmp_path):
    cfg = tiny_config(tmp_path, "killed", "train.steps=4", "train.checkpoint_every=2", "data.flip=true")
    config_file = tmp_path / "killed.toml"
    config_file.write_text(dump_config(cfg))
    marker = tmp_path / "blocked"
    script = textwrap.dedent(f"""
        from ddpm.config import load_config
        from ddpm.training import train
        train(load_config({str(config_file)!r}), progress=False)
    """)
    _kill(_run_until_blocked(script, marker, f"files:4:{marker}"))

    run = tmp_path / "killed"
    assert (run / "latest").read_text().strip() == "checkpoints/step-2"
    assert [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith(".tmp-step-4")], \
        "the test should have killed the writer with a half-written step-4"
    assert load_checkpoint(run).step == 2

    # Resuming finishes the run; the leftover is cleaned; the result is that of a run never killed.
    train(None, resume=run, progress=False)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-2", "step-4"]
    straight = train(tiny_config(tmp_path, "straight", "train.steps=4", "train.checkpoint_every=2",
                                 "data.flip=true"), progress=False)
    assert_same_checkpoint(load_checkpoint(straight), load_checkpoint(run))


def _tensors(value: float) -> dict:
    return {"unet.w": torch.full((3,), value)}


def test_writer_killed_between_rename_and_latest_leaves_latest_on_the_previous_step(tmp_path):
    run = tmp_path / "run"
    marker = tmp_path / "blocked"
    script = textwrap.dedent(f"""
        import torch
        from ddpm.io.run_folder import save_checkpoint
        for step in (1, 2):
            t = {{"unet.w": torch.full((3,), float(step))}}
            save_checkpoint({str(run)!r}, step, model=t, ema=t, state={{"step": step}}, meta={META!r})
    """)
    _kill(_run_until_blocked(script, marker, f"renamed:2:{marker}"))
    assert latest_checkpoint(run).name == "step-1"
    ck = load_checkpoint(run)
    assert ck.step == 1 and torch.equal(ck.ema["unet.w"], torch.ones(3))
    # The next save moves on normally and prunes beyond keep_last.
    save_checkpoint(run, 3, model=_tensors(3.0), ema=_tensors(3.0), state={"step": 3}, meta=META, keep_last=1)
    assert [s for s, _ in list_checkpoints(run)] == [3]
    assert load_checkpoint(run).step == 3


def test_saving_the_same_step_again_and_bad_pointers(tmp_path):
    run = tmp_path / "run"
    save_checkpoint(run, 5, model=_tensors(1.0), ema=_tensors(1.0), state={"step": 5}, meta=META)
    save_checkpoint(run, 5, model=_tensors(2.0), ema=_tensors(2.0), state={"step": 5}, meta=META)
    assert torch.equal(load_checkpoint(run).model["unet.w"], torch.full((3,), 2.0))
    assert torch.equal(load_checkpoint(run / "checkpoints" / "step-5").ema["unet.w"], torch.full((3,), 2.0))
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-5"]
    (run / "latest").write_text("checkpoints/step-9\n")
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        load_checkpoint(run)
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        load_checkpoint(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "nothing")
