"""`ddpm train` with run.task = "autoencoder": the one loop trains the autoencoder task (tiny CPU runs)."""

from __future__ import annotations

import csv
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from ddpm.cli import main
from ddpm.config import dump_config, load_config
from ddpm.io.checkpoint import UnsafeCheckpointError
from ddpm.io.keymaps import vae_to_single_file
from ddpm.io.run_folder import load_checkpoint
from ddpm.io.vae_files import load_autoencoder_file, load_vae_folder, load_vae_single_file, save_vae_folder
from ddpm.models.autoencoder import AutoencoderKL, AutoencoderKLConfig
from ddpm.training import AutoencoderTask, Trainer, export_model, train
from ddpm.training.tasks.autoencoder import estimate_scaling_factor, training_images

VAE_TOML = Path(__file__).resolve().parents[1] / "configs" / "vae.toml"

# A two-level (f = 2) autoencoder of ~10k parameters on 8x8 photo crops: a step takes milliseconds.
TINY = [
    "data.image_size=8",
    "autoencoder.base_channels=8",
    "autoencoder.channel_mult=[1, 2]",
    "autoencoder.norm_groups=4",
    "autoencoder.mid_attention=false",
    "train.num_threads=1",
    "train.batch_size=8",
    "train.warmup_steps=2",
    "train.sample_every=0",
    "train.log_every=2",  # each row also measures PSNR on ~3000 held-out 8x8 crops
]


def tiny_config(run_dir, name: str, *overrides: str):
    return load_config(VAE_TOML, [*TINY, f"run.dir={str(run_dir)!r}", f"run.name={name}", *overrides])


def metrics(run) -> list[dict]:
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_ddpm_train_on_the_vae_config_logs_a_rising_held_out_psnr(tmp_path):
    sets = [f"run.dir={str(tmp_path)!r}", "train.steps=40", "train.batch_size=8", "train.log_every=10",
            "train.checkpoint_every=10", "train.keep_last=2", "train.sample_every=20", "train.warmup_steps=5",
            "train.ema_decay=0.9", "sample.num=4"]
    args = ["train", "--config", str(VAE_TOML), "--quiet", *[a for s in sets for a in ("--set", s)]]
    assert main(args) == 0
    run = tmp_path / "vae"
    rows = metrics(run)
    assert [int(r["step"]) for r in rows] == [10, 20, 30, 40]
    psnr = [float(r["psnr"]) for r in rows]
    # Measured 13.5 dB after 10 steps and 14.1 dB after 40 (small preset, batch 8, one thread); the
    # untrained model sits at 11.4 dB, so a flat or falling curve means the autoencoder is not learning.
    assert psnr[-1] > psnr[0] + 0.3, psnr
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"])
    # keep_last, the preview grid and the checkpoint's model file are those of the shared loop.
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-30", "step-40"]
    assert (run / "samples" / "step-20.png").is_file() and (run / "samples" / "step-40.png").is_file()
    model, meta = load_autoencoder_file(run / "checkpoints" / "step-40" / "ema.safetensors")
    assert meta["training"]["step"] == 40 and meta["training"]["task"] == "autoencoder"
    assert model.config.channel_mult == (1, 2, 4)


def test_trainer_dispatches_on_run_task(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, "a"), progress=False)
    assert isinstance(trainer.task, AutoencoderTask)
    assert isinstance(trainer.module, AutoencoderKL)
    assert trainer.dataset.as_tensor()[0].shape[1:] == (3, 8, 8)
    assert trainer.optimizer.param_groups[0]["betas"] == (0.9, 0.99)  # train.adam_betas of configs/vae.toml
    trainer.env.close()


def test_resume_is_bit_identical_for_the_autoencoder_task(tmp_path):
    # flips and posterior draws (training generator), gradient accumulation, EMA warmup, cosine LR
    extra = ["train.steps=6", "train.grad_accum=2", "train.ema_decay=0.9", "train.checkpoint_every=0",
             "train.log_every=1"]
    straight = train(tiny_config(tmp_path, "straight", *extra), progress=False)
    resumed = train(tiny_config(tmp_path, "resumed", *extra), progress=False, stop_after=3)
    assert load_checkpoint(resumed).step == 3
    train(None, resume=resumed, progress=False)
    a, b = load_checkpoint(straight), load_checkpoint(resumed)
    assert a.step == b.step == 6
    for name in ("model", "ema"):
        ta, tb = getattr(a, name), getattr(b, name)
        assert ta.keys() == tb.keys() and all(k.startswith("vae.") for k in ta)
        for k in ta:
            assert torch.equal(ta[k], tb[k]), f"{name} tensor {k} differs"
    oa, ob = a.state["optimizer"]["state"], b.state["optimizer"]["state"]
    assert all(torch.equal(oa[i][k], ob[i][k]) for i in oa for k in oa[i])
    assert torch.equal(a.state["generator"], b.state["generator"])
    psnr_a = [r["psnr"] for r in metrics(straight)]
    assert psnr_a == [r["psnr"] for r in metrics(resumed)] and len(psnr_a) == 6


def test_the_posterior_draw_comes_from_the_step_draws_so_the_resume_test_can_fail(tmp_path):
    # The loss of one micro-batch depends on its checkpointed seed: a run that drew z ~ q(z|x) from the
    # global RNG (not checkpointed) or ignored it would not be covered by the bit-exact resume check.
    trainer = Trainer(tiny_config(tmp_path, "a", "autoencoder.kl_weight=1.0"), progress=False)
    batch = {"image": trainer.dataset.as_tensor()[0][:8]}
    draws = [{"flip": None, "seeds": torch.tensor([s])} for s in (1, 1, 2)]
    loss = [trainer.task.loss(trainer.forward, batch, d, rows=slice(0, 8), part=0, autocast=trainer.autocast)
            .item() for d in draws]
    assert loss[0] == loss[1] != loss[2]
    trainer.env.close()


def test_export_writes_a_loadable_autoencoder_with_its_scaling_factor(tmp_path):
    run = train(tiny_config(tmp_path, "a", "train.steps=3"), progress=False)
    out = export_model(run, tmp_path / "vae.safetensors")
    model, meta = load_autoencoder_file(out)
    ema = load_checkpoint(run).ema
    for k, v in model.state_dict().items():
        assert torch.equal(v, ema["vae." + k])
    images = training_images("photos", image_size=8)
    expected = estimate_scaling_factor(model, images)  # the factor does not change the raw latents
    assert model.config.scaling_factor == pytest.approx(expected, rel=1e-6)
    assert model.config.scaling_factor != 1.0
    assert meta["training"]["step"] == 3 and meta["data"]["dataset"] == "photos"
    # The scaled latents of the training images have unit standard deviation.
    with torch.no_grad():
        z = model.encode_posterior(images).sample(generator=torch.Generator().manual_seed(0))
    z = z * model.config.scaling_factor
    assert float(z.std()) == pytest.approx(1.0, rel=1e-4)


def test_resume_refuses_another_task_or_architecture(tmp_path):
    run = train(tiny_config(tmp_path, "a", "train.steps=1"), progress=False)
    with pytest.raises(ValueError, match="task 'autoencoder'"):
        Trainer(load_config(None, ["run.task=diffusion", f"run.dir={str(tmp_path)!r}", "run.name=a"]),
                resume=run, progress=False)
    with pytest.raises(ValueError, match="autoencoder.base_channels"):
        Trainer(tiny_config(tmp_path, "a", "autoencoder.base_channels=16", "autoencoder.norm_groups=8"),
                resume=run, progress=False)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.condition=class", "does not apply to an autoencoder"),
        ("data.image_size=9", "not a multiple of the autoencoder's downsampling factor 2"),
        ("data.channels=1", "works on RGB images"),
    ],
)
def test_bad_autoencoder_settings_are_explained(tmp_path, override, message):
    with pytest.raises(ValueError, match=message):
        Trainer(tiny_config(tmp_path, "a", override), progress=False)


def test_config_rejects_a_bad_autoencoder_section():
    with pytest.raises(ValueError, match="autoencoder.reconstruction"):
        load_config(None, ["autoencoder.reconstruction=l3"])
    with pytest.raises(ValueError, match="norm_groups"):
        load_config(None, ["autoencoder.base_channels=12"])
    with pytest.raises(ValueError, match="run.task"):
        load_config(None, ["run.task=gan"])


# ------------------------------------------------------- the loaders read through the shared safe reader
def _tiny_vae() -> AutoencoderKL:
    torch.manual_seed(0)
    return AutoencoderKL(AutoencoderKLConfig.tiny())


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_vae_folder_loader_refuses_a_code_carrying_pickle(tmp_path):
    folder = save_vae_folder(_tiny_vae(), tmp_path / "vae")
    (folder / "diffusion_pytorch_model.safetensors").unlink()
    with open(folder / "diffusion_pytorch_model.bin", "wb") as f:
        pickle.dump({"encoder.conv_in.weight": _Evil()}, f, protocol=2)
    with pytest.raises(UnsafeCheckpointError, match="nothing in it ran"):
        load_vae_folder(folder)


def test_vae_folder_loader_reads_a_torch_save_bin(tmp_path):
    model = _tiny_vae()
    folder = save_vae_folder(model, tmp_path / "vae")
    from safetensors.torch import load_file

    weights = folder / "diffusion_pytorch_model.safetensors"
    raw = load_file(str(weights))
    weights.unlink()
    torch.save(raw, folder / "diffusion_pytorch_model.bin")
    loaded = load_vae_folder(folder)
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())


def test_single_file_loader_sniffs_content_not_suffix(tmp_path):
    model = _tiny_vae()
    sd = {k: v.contiguous() for k, v in vae_to_single_file(model.state_dict()).items()}
    sd["model.diffusion_model.extra"] = torch.zeros(2)  # another component's tensor is left out
    path = tmp_path / "sd.ckpt"  # safetensors content under a pickle's name
    save_file(sd, str(path))
    loaded = load_vae_single_file(path, config=model.config)
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())
    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ValueError, match="truncated"):
        load_vae_single_file(truncated, config=model.config)


def test_autoencoder_under_two_gloo_processes_matches_one_process(tmp_path):
    from test_ddp import WORKER  # trains the config file's run, writes each rank's weight hash

    opts = ["train.steps=3", "train.checkpoint_every=0", "train.ema_decay=0.5", "train.log_every=0"]
    (tmp_path / "ddp.toml").write_text(dump_config(tiny_config(tmp_path, "ddp", *opts)))
    (tmp_path / "worker.py").write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    args = [tmp_path / "worker.py", tmp_path / "ddp.toml", tmp_path / "elsewhere", tmp_path]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    proc = subprocess.run([*launcher, *map(str, args)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    hashes = [(tmp_path / f"rank{r}.txt").read_text() for r in (0, 1)]
    assert hashes[0] == hashes[1], "the two ranks ended with different weights"
    assert not (tmp_path / "elsewhere").exists(), "rank 1 wrote files"
    # Two ranks of one chunk each = one process with two accumulation chunks: same crops, flips and
    # posterior seeds per chunk, gradients averaged, up to float rounding of the reduction order.
    ddp = load_checkpoint(tmp_path / "ddp")
    single_run = train(tiny_config(tmp_path, "single", *opts, "train.grad_accum=2"), progress=False)
    single = load_checkpoint(single_run)
    for k in single.model:
        torch.testing.assert_close(ddp.model[k], single.model[k], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(ddp.ema[k], single.ema[k], rtol=1e-4, atol=1e-6)
