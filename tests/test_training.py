"""The training loop: exact resume, non-finite steps, config checks, export (tiny CPU runs, T = 100)."""

from __future__ import annotations

import csv
import math

import pytest
import torch
from torch.utils.data import Dataset

import ddpm.config.run as config_run
import ddpm.training.tasks as tasks
import ddpm.training.tasks.diffusion as diffusion
from ddpm.config import TASKS, Config, load_config
from ddpm.data import TensorImageDataset, load_dataset, register_builtin
from ddpm.io.images import make_grid, save_png
from ddpm.io.model_file import load_model_file
from ddpm.io.model_meta import ModelMeta, TrainingMeta
from ddpm.io.run_folder import latest_checkpoint, load_checkpoint
from ddpm.training import (
    Task,
    Trainer,
    TrainingDiverged,
    ema_decay_at,
    export_model,
    lr_at,
    make_task,
    register_task,
    train,
)

# A ~30k-parameter UNet on 8x8 digits: a training step takes a few milliseconds on one core.
TINY = [
    "data.image_size=8",
    "model.model_channels=16",
    "model.channel_mult=[1, 2]",
    "model.num_res_blocks=1",
    "model.attention_resolutions=[2]",
    "model.norm_groups=8",
    "model.num_head_channels=16",
    "diffusion.num_timesteps=100",
    "train.num_threads=1",
    "train.warmup_steps=2",
    "train.batch_size=8",
    "train.sample_every=0",
    "train.log_every=1",
]


def tiny_config(run_dir, name: str, *overrides: str) -> Config:
    return load_config(None, [*TINY, f"run.dir={str(run_dir)!r}", f"run.name={name}", *overrides])


def metrics(run) -> list[dict]:
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def assert_same_checkpoint(a, b):
    assert a.step == b.step
    for name in ("model", "ema"):
        ta, tb = getattr(a, name), getattr(b, name)
        assert ta.keys() == tb.keys()
        for k in ta:
            assert torch.equal(ta[k], tb[k]), f"{name} tensor {k} differs"
    oa, ob = a.state["optimizer"]["state"], b.state["optimizer"]["state"]
    for i in oa:
        for k in oa[i]:
            assert torch.equal(oa[i][k], ob[i][k]), f"optimizer state {i}.{k} differs"
    assert torch.equal(a.state["generator"], b.state["generator"])
    assert a.state["position"] == b.state["position"]


# Everything random at once: dropout (global RNG), CFG label drops and flips (training generator),
# gradient accumulation, EMA warmup, cosine LR.
RANDOM_EVERYTHING = [
    "data.condition=class", "data.cond_drop_prob=0.5", "data.flip=true", "model.dropout=0.1",
    "train.grad_accum=2", "train.ema_decay=0.9", "train.lr_schedule=cosine", "train.steps=6",
    "train.checkpoint_every=0",
]


def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path):
    straight = train(tiny_config(tmp_path, "straight", *RANDOM_EVERYTHING), progress=False)
    cfg = tiny_config(tmp_path, "resumed", *RANDOM_EVERYTHING)
    resumed = train(cfg, progress=False, stop_after=3)
    assert load_checkpoint(resumed).step == 3
    assert train(None, resume=resumed, progress=False) == resumed
    assert_same_checkpoint(load_checkpoint(straight), load_checkpoint(resumed))
    # The metrics log continues where the checkpoint was: no duplicated or missing steps.
    assert [int(r["step"]) for r in metrics(resumed)] == [1, 2, 3, 4, 5, 6]


class _PlainDigits(Dataset):
    """Not a tensor dataset: served item by item, so training goes through a DataLoader."""

    def __init__(self, base):
        self.base = base
        self.channels, self.image_size = base.channels, base.image_size
        self.num_classes, self.class_names, self.has_captions = base.num_classes, base.class_names, False

    def __len__(self):
        return 64

    def __getitem__(self, i):
        return self.base[i]


def _plain_factory(**kw):
    return _PlainDigits(load_dataset("digits", **kw))


register_builtin("plain_digits_for_tests", _plain_factory, replace=True)
register_builtin(
    "unlabelled_for_tests",
    lambda **kw: TensorImageDataset(torch.zeros(16, 1, 8, 8)),
    replace=True,
)


def test_resume_is_exact_through_the_dataloader_path(tmp_path):
    opts = ["data.dataset=plain_digits_for_tests", "data.num_workers=1", *RANDOM_EVERYTHING]
    straight = train(tiny_config(tmp_path, "straight", *opts), progress=False)
    resumed = train(tiny_config(tmp_path, "resumed", *opts), progress=False, stop_after=4)
    train(None, resume=resumed, progress=False)
    assert_same_checkpoint(load_checkpoint(straight), load_checkpoint(resumed))
    # 6 steps x 8 samples over 64 items crosses no epoch; the stream's position says what was consumed
    assert load_checkpoint(resumed).state["position"] == 48


def test_resume_may_extend_steps_and_change_cadence(tmp_path):
    run = train(tiny_config(tmp_path, "r", "train.steps=2"), progress=False)
    cfg = load_config(run / "config.toml", ["train.steps=4", "train.log_every=2", "train.lr=1e-4"])
    train(cfg, resume=run, progress=False)
    assert load_checkpoint(run).step == 4
    assert "steps = 4" in (run / "config.toml").read_text()
    bad = load_config(run / "config.toml", ["model.model_channels=8", "model.norm_groups=4", "train.steps=6"])
    with pytest.raises(ValueError, match=r"model.model_channels: 16 -> 8.*start a new run"):
        train(bad, resume=run, progress=False)
    with pytest.raises(ValueError, match="already holds a run.*--resume"):
        train(tiny_config(tmp_path, "r"), progress=False)


class _NaNAt:
    """Wrap training_loss so that the calls with the given 0-based step indices return NaN."""

    def __init__(self, steps, real):
        self.steps, self.real, self.calls = set(steps), real, 0

    def __call__(self, *args, **kwargs):
        loss = self.real(*args, **kwargs)
        step = self.calls
        self.calls += 1
        return loss * float("nan") if step in self.steps else loss


def test_nonfinite_loss_or_gradient_skips_the_step_and_is_counted(tmp_path, monkeypatch):
    monkeypatch.setattr(diffusion, "training_loss", _NaNAt({1}, diffusion.training_loss))
    trainer = Trainer(tiny_config(tmp_path, "n", "train.steps=6", "train.max_nonfinite=2"), progress=False)
    # a finite loss with an infinite gradient at step index 3
    calls = {"n": 0}

    def poison(grad):
        calls["n"] += 1
        return grad * math.inf if calls["n"] == 4 else grad

    trainer.module.unet.out[2].weight.register_hook(poison)
    run = trainer.run()
    rows = metrics(run)
    assert [int(r["nonfinite_skips"]) for r in rows] == [0, 1, 1, 2, 2, 2]
    assert rows[1]["loss"] == "nan" and rows[3]["loss"] == "nan"  # no good step to average in those rows
    ck = load_checkpoint(run)
    steps_taken = {int(s["step"]) for s in ck.state["optimizer"]["state"].values()}
    assert steps_taken == {4}, "6 steps with 2 skipped must make 4 optimizer updates"
    assert all(torch.isfinite(v).all() for v in ck.model.values())
    assert all(torch.isfinite(v).all() for v in ck.ema.values())


def test_too_many_nonfinite_steps_stop_the_run_and_keep_the_last_good_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr(diffusion, "training_loss", _NaNAt(range(2, 100), diffusion.training_loss))
    cfg = tiny_config(tmp_path, "d", "train.steps=20", "train.checkpoint_every=2", "train.max_nonfinite=3")
    message = r"step 5: 3 consecutive steps .*non-finite.*step-2.*train\.lr"
    with pytest.raises(TrainingDiverged, match=message):
        train(cfg, progress=False)
    run = tmp_path / "d"
    assert latest_checkpoint(run).name == "step-2"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-2"]
    ck = load_checkpoint(run)
    assert ck.step == 2 and all(torch.isfinite(v).all() for v in ck.model.values())


def test_model_fields_follow_the_data_and_conflicts_are_named(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, "c", "data.condition=class", "diffusion.learned_variance=true"),
                      progress=False)
    uc = trainer.task.unet_config
    assert (uc.in_channels, uc.out_channels, uc.num_classes, uc.learned_variance) == (1, 1, 10, True)
    with pytest.raises(ValueError, match=r"model.in_channels = 2 .*1 implied by the dataset"):
        Trainer(tiny_config(tmp_path, "c", "model.in_channels=2"), progress=False)
    with pytest.raises(ValueError, match=r"model.num_classes = 5 conflicts with 10"):
        Trainer(tiny_config(tmp_path, "c", "model.num_classes=5", "data.condition=class"), progress=False)
    with pytest.raises(ValueError, match="needs a labelled dataset"):
        Trainer(tiny_config(tmp_path, "c", "data.dataset=unlabelled_for_tests", "data.condition=class"),
                progress=False)
    with pytest.raises(ValueError, match="multiples of 2"):
        Trainer(tiny_config(tmp_path, "c", "data.image_size=7"), progress=False)


def test_checkpoints_keep_last_and_export_writes_the_ema_model_file(tmp_path):
    run = train(tiny_config(tmp_path, "k", "train.steps=5", "train.checkpoint_every=1", "train.keep_last=2",
                            "data.condition=class"), progress=False)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-4", "step-5"]
    out = export_model(run, tmp_path / "model.safetensors")
    tensors, meta = load_model_file(out)
    ck = load_checkpoint(run)
    assert tensors.keys() == ck.ema.keys() and all(k.startswith("unet.") for k in tensors)
    assert all(torch.equal(tensors[k], ck.ema[k]) for k in tensors)
    assert meta["training"] == {"step": 5, "run": "k"}
    assert meta["conditioning"] == {"type": "class", "num_classes": 10, "text_encoder": None}
    assert meta["data"]["class_names"] == [str(k) for k in range(10)] and meta["data"]["image_size"] == 8
    assert meta["unet"]["num_classes"] == 10 and meta["diffusion"]["schedule"]["num_timesteps"] == 100
    assert meta["sampling"]["clip_x0"] == "static"
    with pytest.raises(ValueError, match=r"\.safetensors"):
        export_model(run, tmp_path / "model.pt")


def test_loss_goes_down(tmp_path):
    run = train(tiny_config(tmp_path, "l", "train.steps=60", "train.lr=2e-3", "train.batch_size=32",
                            "train.log_every=10", "train.checkpoint_every=0"), progress=False)
    losses = [float(r["loss"]) for r in metrics(run)]
    # eps-prediction starts near the noise variance (1.0); a working loop gets well below it in 60 steps
    assert losses[0] > 0.6 and losses[-1] < 0.5 * losses[0], losses


def test_timestep_sampling_setting_reaches_the_training_draws(tmp_path):
    def t_of(trainer):
        return trainer.task.draws(trainer.generator, parts=1)["t"]

    uniform = t_of(Trainer(tiny_config(tmp_path, "u"), progress=False))
    t = t_of(Trainer(tiny_config(tmp_path, "n", "diffusion.timestep_sampling=logit_normal",
                                 "diffusion.timestep_loc=4", "diffusion.timestep_scale=0.1"), progress=False))
    # sigmoid(4 +- 0.4) > 0.97: every draw in the last 3% of the 100 steps
    assert int(t.min()) >= 97 and int(uniform.min()) < 97


def test_schedules_of_lr_and_ema():
    assert lr_at(0, lr=1.0, warmup_steps=4, schedule="constant", total_steps=10) == 0.25
    assert lr_at(3, lr=1.0, warmup_steps=4, schedule="constant", total_steps=10) == 1.0
    assert lr_at(5, lr=1.0, warmup_steps=0, schedule="cosine", total_steps=10) == pytest.approx(0.5)
    assert lr_at(10, lr=1.0, warmup_steps=0, schedule="cosine", total_steps=10) == pytest.approx(0.0)
    assert ema_decay_at(0, decay=0.999, warmup=True) == pytest.approx(0.1)
    assert ema_decay_at(10**6, decay=0.999, warmup=True) == 0.999
    assert ema_decay_at(0, decay=0.999, warmup=False) == 0.999


def test_bf16_autocast_trains_like_float32(tmp_path):
    # The CUDA default; on CPU it runs through torch.autocast("cpu", bfloat16) when asked for.
    rows = {}
    for mp in ("no", "bf16"):
        run = train(tiny_config(tmp_path, mp, f"train.mixed_precision={mp}", "train.steps=3",
                                "data.condition=class"), progress=False)
        rows[mp] = metrics(run)
    for a, b in zip(rows["no"], rows["bf16"]):
        assert float(b["loss"]) == pytest.approx(float(a["loss"]), rel=0.03)
        assert math.isfinite(float(b["grad_norm"]))


# ------------------------------------------------------------------------------------------ tasks
class _Denoise(Task):
    """A task the loop has never heard of: one 3x3 convolution learns to take noise off 8x8 digits."""

    name = "denoise_for_tests"
    metric_fields = ("weight_norm",)

    def build(self):
        dataset = load_dataset("digits", image_size=8, seed=self.config.train.seed)
        torch.manual_seed(self.config.train.seed)
        return dataset, torch.nn.Conv2d(1, 1, 3, padding=1)

    def draws(self, generator, *, parts):
        return {"noise": 0.3 * torch.randn(self.config.train.batch_size, 1, 8, 8, generator=generator)}

    def loss(self, forward, batch, draws, *, rows, part, autocast):
        x = batch["image"]
        with autocast():
            return (forward(x + draws["noise"][rows]) - x).pow(2).mean()

    def meta(self, *, step):
        training = TrainingMeta(step=step, run=self.config.run.name, task=self.name)
        return ModelMeta(autoencoder={"layers": "one 3x3 convolution"}).with_sections(training=training)

    def preview(self, module, path, *, step, device, autocast):
        return save_png(path, make_grid(module.weight.detach().clamp(-1, 1), nrow=1))

    def metrics(self, module):
        return {"weight_norm": float(module.weight.norm())}


def test_the_task_factory_refuses_an_unknown_task_or_a_class_that_is_no_task(tmp_path):
    assert set(tasks.TASKS) == set(TASKS)  # every run.task a config accepts has its task, and no other
    cfg = tiny_config(tmp_path, "x")
    cfg.run.task = "gan"
    with pytest.raises(ValueError, match=r"run.task = 'gan' has no training task registered \(known: "
                       r"autoencoder, contrastive, diffusion, unclip_prior\).*register_task"):
        make_task(cfg)
    with pytest.raises(TypeError, match="subclass of ddpm.training.Task"):
        register_task("gan", object)
    with pytest.raises(ValueError, match="'diffusion' is already registered"):
        register_task("diffusion", _Denoise)


def test_a_registered_task_trains_resumes_and_exports_through_the_unchanged_loop(tmp_path, monkeypatch):
    monkeypatch.setattr(tasks, "TASKS", dict(tasks.TASKS))
    monkeypatch.setattr(config_run, "TASKS", (*TASKS, _Denoise.name))  # what a new task adds to choices.py
    register_task(_Denoise.name, _Denoise)
    opts = [f"run.task={_Denoise.name}", "train.steps=4", "train.grad_accum=2", "train.sample_every=2",
            "train.checkpoint_every=0", "train.lr=1e-2"]
    straight = train(tiny_config(tmp_path, "straight", *opts), progress=False)
    resumed = train(tiny_config(tmp_path, "resumed", *opts), progress=False, stop_after=2)
    assert load_checkpoint(resumed).step == 2
    train(None, resume=resumed, progress=False)
    assert_same_checkpoint(load_checkpoint(straight), load_checkpoint(resumed))
    columns = lambda run: [(r["step"], r["loss"], r["weight_norm"]) for r in metrics(run)]  # noqa: E731
    assert columns(resumed) == columns(straight) and [c[0] for c in columns(resumed)] == ["1", "2", "3", "4"]
    assert (resumed / "samples" / "step-4.png").is_file()
    tensors, meta = load_model_file(export_model(resumed, tmp_path / "denoise.safetensors"))
    assert sorted(tensors) == ["bias", "weight"] and meta["training"]["task"] == _Denoise.name
