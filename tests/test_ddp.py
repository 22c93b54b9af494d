"""DDP on CPU: two gloo processes under torchrun stay in sync, only rank 0 writes, and the result is the
single-process run's (the global batch is split, not changed)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import torch

from ddpm.config import dump_config
from ddpm.io.run_folder import load_checkpoint
from ddpm.training import train
from test_training import tiny_config

WORKER = textwrap.dedent("""
    import hashlib, os, sys
    from ddpm.config import load_config
    from ddpm.training import Trainer

    config_file, elsewhere, out = sys.argv[1:4]
    cfg = load_config(config_file)
    rank = int(os.environ["RANK"])
    if rank != 0:
        cfg.run.dir = elsewhere  # a rank other than 0 that wrote anything would create this folder
    trainer = Trainer(cfg, progress=False)
    assert trainer.env.world_size == 2 and trainer.env.rank == rank
    trainer.run()
    h = hashlib.sha256()
    for module in (trainer.module, trainer.ema.module):
        for k, v in sorted(module.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
    with open(os.path.join(out, f"rank{rank}.txt"), "w") as f:
        f.write(h.hexdigest())
""")

OPTS = ["train.steps=3", "train.batch_size=8", "train.checkpoint_every=0", "data.condition=class",
        "data.cond_drop_prob=0.5", "data.flip=true", "train.ema_decay=0.5"]


def test_two_gloo_processes_match_each_other_and_one_process(tmp_path):
    cfg = tiny_config(tmp_path, "ddp", *OPTS)
    (tmp_path / "ddp.toml").write_text(dump_config(cfg))
    (tmp_path / "worker.py").write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    args = [tmp_path / "worker.py", tmp_path / "ddp.toml", tmp_path / "elsewhere", tmp_path]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd = [*launcher, *map(str, args)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    hashes = [(tmp_path / f"rank{r}.txt").read_text() for r in (0, 1)]
    assert hashes[0] == hashes[1], "the two ranks ended with different weights"
    assert not (tmp_path / "elsewhere").exists(), "rank 1 wrote files"
    run = tmp_path / "ddp"
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "config.toml", "latest", "metrics.csv"]
    ddp = load_checkpoint(run)
    assert ddp.step == 3 and ddp.state["world_size"] == 2 and len(ddp.state["rng_cpu"]) == 2

    # Each rank took half of every global batch of 8 and DDP averaged the gradients: the same maths as one
    # process with the whole batch, up to float rounding of the reduction order.
    single = load_checkpoint(train(tiny_config(tmp_path, "single", *OPTS), progress=False))
    assert ddp.state["position"] == single.state["position"] == 24
    for k in single.model:
        torch.testing.assert_close(ddp.model[k], single.model[k], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(ddp.ema[k], single.ema[k], rtol=1e-4, atol=1e-6)
