"""Cold diffusion through the one training loop: `[diffusion] degradation` trains a restoration network with
the same checkpoints, exact resume and model files as Gaussian diffusion (tiny CPU runs on 8x8 digits)."""

from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch

from ddpm.config import load_config
from ddpm.degradations import ChannelMeans, Mask, make_degradation
from ddpm.io.model_file import load_model_file
from ddpm.io.model_meta import ModelMeta
from ddpm.io.run_folder import load_checkpoint, run_model_file
from ddpm.objectives import restoration_loss
from ddpm.training import ColdDiffusionTask, make_task, train
from test_training import assert_same_checkpoint, tiny_config

COLD = ['diffusion.degradation="mask"', 'sample.sampler="cold"',
        "diffusion.degradation_options={levels = 6, centre = \"random\", seed = 3}"]  # fmt: skip
RANDOM = ["data.flip=true", "train.grad_accum=2", "train.steps=4", "train.checkpoint_every=0"]


def test_a_cold_run_resumes_bit_exactly_and_writes_its_degradation_and_start(tmp_path):
    straight = train(tiny_config(tmp_path, "straight", *COLD, *RANDOM), progress=False)
    resumed = train(tiny_config(tmp_path, "resumed", *COLD, *RANDOM), progress=False, stop_after=2)
    train(None, resume=resumed, progress=False)
    assert_same_checkpoint(load_checkpoint(straight), load_checkpoint(resumed))
    _, raw = load_model_file(run_model_file(straight))
    meta = ModelMeta.from_dict(raw)
    assert meta.diffusion.cold and meta.diffusion.prediction == "x0" and meta.sampling.sampler == "cold"
    assert meta.diffusion.degradation == {"name": "mask", **Mask(levels=6, centre="random", seed=3).options()}
    prior = ChannelMeans.from_dict(meta.diffusion.start)
    assert len(prior.mean) == 1 and -1 < prior.mean[0] < 0 and prior.noise == 0.02  # dark digits


def test_the_step_degrades_and_scores_the_restoration(tmp_path):
    task = make_task(tiny_config(tmp_path, "t", *COLD, "train.batch_size=4"))
    assert isinstance(task, ColdDiffusionTask)
    task.prepare()
    task.build()
    draws = task.draws(torch.Generator().manual_seed(0), parts=1)
    assert draws["t"].min() >= 1 and draws["t"].max() <= 6 and draws["seed"].shape == (4,)
    x0 = torch.rand(4, 1, 8, 8) * 2 - 1
    seen = {}

    def forward(x_t, t, batch, drop):
        seen.update(x_t=x_t, t=t)
        return torch.zeros_like(x_t)

    loss = task.loss(forward, {"image": x0}, draws, rows=slice(0, 4), part=0, autocast=nullcontext)
    gens = [torch.Generator().manual_seed(int(s)) for s in draws["seed"]]
    expected = Mask(levels=6, centre="random", seed=3).bind(x0, generator=gens)(x0, draws["t"])
    assert torch.equal(seen["x_t"], expected) and torch.equal(seen["t"], draws["t"])
    assert torch.isclose(loss, restoration_loss(torch.zeros_like(x0), x0).mean())


def test_gaussian_takes_the_runs_schedule_and_mismatched_samplers_are_named(tmp_path):
    task = make_task(tiny_config(tmp_path, "g", 'diffusion.degradation="gaussian"', 'sample.sampler="cold"'))
    task.prepare()
    assert task.degradation.levels == 100  # tiny_config's diffusion.num_timesteps
    with pytest.raises(ValueError, match=r"sample.sampler = 'dpmpp_2m' cannot sample the cold model"):
        load_config(None, ['diffusion.degradation="blur"'])
    with pytest.raises(ValueError, match="diffusion.learned_variance does not apply to cold diffusion"):
        load_config(None, [*COLD, "diffusion.learned_variance=true"])
    assert make_degradation("blur").levels == 20
