"""The sampler sweep (ddpm.evaluation.sweep): steps picked by counted NFE, the same seeds per run, scores
from the metric registry, and its CSV, Markdown and PNG; `ddpm eval --sweep`'s argument checks."""

from __future__ import annotations

import csv

import pytest
import torch
from PIL import Image

from ddpm import schedules
from ddpm.cli import main
from ddpm.evaluation import EvalContext, EvalOptions, judge_for_tensors
from ddpm.evaluation.judge import JudgeRecipe
from ddpm.evaluation.sweep import count_calls, steps_for_nfe, sweep
from ddpm.io.model_file import save_model_file
from ddpm.models.unet import UNet, UNetConfig
from ddpm.pipelines import PixelPipeline

SHAPE = (1, 1, 8, 8)


@pytest.mark.parametrize(
    "sampler, target, steps, nfe",
    [("dpmpp_2m", 10, 10, 10), ("unipc", 5, 5, 5), ("heun", 10, 5, 9), ("heun", 5, 3, 5), ("plms", 10, 9, 10),
     ("ddpm", 1000, 1000, 1000)],
)  # fmt: skip
def test_steps_fit_the_nfe_budget_by_counting(sampler, target, steps, nfe):
    """Multistep samplers: steps = NFE; heun: 2 steps - 1 calls (the step into sigma = 0 is one call);
    plms: steps + 1 (its first step evaluates twice)."""
    assert steps_for_nfe(sampler, target, schedules.linear(1000), SHAPE) == (steps, nfe)


def _bars(n, seed):
    """Three classes of 8x8 images: a horizontal bar, a vertical bar, a blob."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    x = torch.full((n, 1, 8, 8), -1.0)
    pos = torch.randint(2, 6, (n,), generator=g)
    for i in range(n):
        p, c = int(pos[i]), int(y[i])
        if c == 0:
            x[i, 0, p, 1:7] = 1
        elif c == 1:
            x[i, 0, 1:7, p] = 1
        else:
            x[i, 0, p - 1 : p + 1, p - 1 : p + 1] = 1
    return (x + 0.2 * torch.randn(x.shape, generator=g)).clamp(-1, 1), y


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A class-conditional 8x8 UNet (random weights, 3 classes, T = 100) and a judge of the bars data."""
    tmp = tmp_path_factory.mktemp("sweep")
    cfg = UNetConfig.small(in_channels=1, model_channels=8, channel_mult=(1, 2), norm_groups=4, num_classes=3)
    torch.manual_seed(0)
    unet = UNet(cfg)
    for p in unet.parameters():
        p.data.normal_(0, 0.05)
    meta = {
        "unet": cfg.to_dict(),
        "diffusion": {"schedule": {"name": "linear", "num_timesteps": 100}, "prediction": "eps",
                      "learned_variance": False},
        "data": {"dataset": "bars", "image_size": 8, "channels": 1, "class_names": None},
        "conditioning": {"type": "class", "num_classes": 3, "text_encoder": None},
        "sampling": {"sampler": "dpmpp_2m", "steps": 5, "guidance_scale": 2.0, "clip_x0": "static"},
        "training": {"step": 0, "run": "tiny"},
    }  # fmt: skip
    tensors = {f"unet.{k}": v for k, v in unet.state_dict().items()}
    path = save_model_file(tmp / "tiny.safetensors", tensors, meta)
    x, y = _bars(60, 0)
    tx, ty = _bars(30, 1)
    recipe = JudgeRecipe(width=4, feature_dim=8, epochs=1, batch_size=32)  # a judge, not a good one
    judge = judge_for_tensors("bars", x, y, tx, ty, num_classes=3, recipe=recipe, cache=tmp)
    return path, judge, (x, y)


def test_sweep_writes_the_table_and_plot_with_counted_nfe(tiny, tmp_path):
    path, judge, real = tiny
    pipe = PixelPipeline.load(path, device="cpu")
    ctx = EvalContext(pipe, EvalOptions(num=6, batch_size=4, fd_repeats=1), judge=judge)
    ctx._real = {"train": real, "test": real}  # the stand-in dataset, instead of load_dataset
    seen = []
    real_generate = pipe.generate

    def spy(num, **kw):  # every run draws the same seeds and classes
        seen.append((num, kw["options"].seed, kw["class_labels"].tolist(), kw["options"].sampler))
        return real_generate(num, **kw)

    pipe.generate = spy
    result = sweep(ctx, samplers=["dpmpp_2m", "heun"], nfes=[3, 6], reference=("ddpm", 20), out=tmp_path,
                   log=None)  # fmt: skip
    runs = {(r.sampler, r.target_nfe): r for r in result.runs}
    assert set(runs) == {("dpmpp_2m", 3), ("dpmpp_2m", 6), ("heun", 3), ("heun", 6), ("ddpm", 20)}
    # measured by the counting wrapper around the UNet: 2 batches (4 + 2 images), guided (one stacked call)
    assert [(runs[k].steps, runs[k].nfe) for k in sorted(runs)] == [
        (20, 20), (3, 3), (6, 6), (2, 3), (3, 5)]  # fmt: skip
    # each run draws images 0-5 (seeds 0-5, classes 0,0,1,1,2,2), in chunks of the batch size
    runs_drawn, current = [], []
    for n, seed, y, _ in seen:
        current += [(seed + i, c) for i, c in enumerate(y)]
        assert len(y) == n
        if len(current) == 6:
            runs_drawn.append(current)
            current = []
    assert not current and len(runs_drawn) == 5
    assert all(run == [(0, 0), (1, 0), (2, 1), (3, 1), (4, 2), (5, 2)] for run in runs_drawn)
    assert result.metrics == ["accuracy", "fd"]  # bpd does not depend on the sampler
    for r in result.runs:
        assert 0 <= r.results["accuracy"].value <= 1 and r.results["fd"].details["floor"] > 0

    files = result.files
    assert sorted(files) == ["csv", "md", "png"] and all(p.parent == tmp_path for p in files.values())
    with open(files["csv"]) as f:
        rows = list(csv.DictReader(f))
    assert [(r["sampler"], r["target_nfe"], r["nfe"]) for r in rows][-1] == ("ddpm", "20", "20")
    assert {"accuracy", "fd", "fd_floor", "fd_ratio", "steps", "seconds"} <= set(rows[0])
    md = files["md"].read_text()
    assert "| heun |" in md and "NFE 6" in md and "(5)" in md and "ddpm at 20 steps (NFE 20)" in md
    with Image.open(files["png"]) as im:
        assert im.format == "PNG" and im.size[0] > 600


def test_count_calls_counts_forward_calls_and_lets_go():
    net = torch.nn.Linear(2, 2)
    with count_calls(net) as calls:
        net(torch.zeros(1, 2))
        net(torch.zeros(3, 2))
    net(torch.zeros(1, 2))
    assert calls == [2] and not net._forward_pre_hooks


def test_sweep_checks_its_arguments(tiny):
    path, judge, real = tiny
    pipe = PixelPipeline.load(path, device="cpu")
    ctx = EvalContext(pipe, EvalOptions(num=4), judge=judge)
    ctx._real = {"train": real, "test": real}
    with pytest.raises(ValueError, match="unknown sampler cold"):
        sweep(ctx, samplers=["cold"], log=None)
    with pytest.raises(ValueError, match="positive integers"):
        sweep(ctx, samplers=["ddim"], nfes=[0], log=None)
    with pytest.raises(ValueError, match="cannot be swept: it does not depend on the sampler"):
        sweep(ctx, samplers=["ddim"], nfes=[2], metrics="bpd", log=None)
    with pytest.raises(ValueError, match="unknown metric"):
        sweep(ctx, samplers=["ddim"], nfes=[2], metrics="fid_typo", log=None)


def test_cli_sweep_refuses_sampler_and_steps(tiny, capsys):
    path, _, _ = tiny
    assert main(["eval", "--model", str(path), "--sweep", "--sampler", "ddim"]) == 2
    assert "--sweep-samplers" in capsys.readouterr().err
    assert main(["eval", "--model", str(path), "--sweep", "--sweep-nfe", "5,ten"]) == 2
    assert "comma-separated integers" in capsys.readouterr().err
