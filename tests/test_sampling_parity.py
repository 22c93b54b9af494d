"""Parity with diffusers (a test-only dependency): same model function, same x_T, same settings -> same x0.

diffusers' scheduler loop is run as its pipelines run it: latents = x_T * init_noise_sigma, then
scale_model_input, model, step. Known, deliberate differences (see ddpm/sampling/ddim.py, plms.py):
- DDIMScheduler and PNDMScheduler step to t - T // steps instead of the next grid point (diffusers issues
  #9261, #11347, #12633), which leaves the grid for `linspace` and for `trailing` when steps does not divide
  T. We step to the next grid point; there the reference is diffusers' DDIM with that one index corrected.
- PNDMScheduler combines raw v outputs instead of eps (diffusers issue #14816); we combine eps, so a v model
  samples like its eps twin. The v reference is diffusers' PLMS on the model's outputs converted to eps.
"""

from __future__ import annotations

import pytest
import torch

import ddpm
from ddpm import schedules
from ddpm.sampling import sampler_grid

diffusers = pytest.importorskip("diffusers")
from diffusers import (  # noqa: E402
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)

diffusers.utils.logging.set_verbosity_error()
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # numpy 2 notices inside diffusers

SCHEDULES = {
    "linear": (schedules.linear(1000), dict(beta_schedule="linear", beta_start=1e-4, beta_end=0.02)),
    "scaled_linear": (
        schedules.scaled_linear(1000),
        dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
    ),
}
PRED = {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}
NOISE = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
TOL = 1e-4


def model(x, t):
    """A fixed nonlinear function of x and (possibly fractional) t, batch-wise."""
    t = t.float().reshape(-1, *[1] * (x.ndim - 1))
    return torch.tanh(0.7 * x + torch.sin(t / 97.0)) * 0.9 + 0.05 * torch.cos(1.3 * x + t / 300.0)


def run_diffusers(scheduler, steps, *, model=model, generator=None, **step_kw):
    scheduler.set_timesteps(steps)
    x = NOISE * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        out = model(scheduler.scale_model_input(x, t), t.expand(x.shape[0]))
        if generator is not None:
            step_kw["generator"] = generator
        x = scheduler.step(out, t, x, **step_kw).prev_sample
    return x


def rel_error(ours, ref):
    return ((ours - ref).norm() / ref.norm()).item()


def config(schedule, prediction, spacing, steps_offset=0):
    return dict(
        num_train_timesteps=1000,
        prediction_type=PRED[prediction],
        timestep_spacing=spacing,
        steps_offset=steps_offset,
        **SCHEDULES[schedule][1],
    )


GRIDS = [  # (spacing, steps_offset, steps)
    ("leading", 0, 20),
    ("leading", 1, 20),  # Stable Diffusion 1.x
    ("leading", 1, 7),
    ("linspace", 0, 20),
    ("linspace", 0, 7),
    ("trailing", 0, 20),
    ("trailing", 0, 7),
]
# every grid for SD's schedule with eps and v; a few for the DDPM schedule (eps)
CASES = [("scaled_linear", p, *g) for p in ("eps", "v") for g in GRIDS] + [
    ("linear", "eps", *g) for g in (GRIDS[0], GRIDS[4], GRIDS[6])
]

SIGMA_SAMPLERS = [  # (sampler, karras, diffusers scheduler from a config)
    ("euler", False, lambda c: EulerDiscreteScheduler(**c)),
    ("euler", True, lambda c: EulerDiscreteScheduler(use_karras_sigmas=True, **c)),
    ("heun", False, lambda c: HeunDiscreteScheduler(**c)),
    ("heun", True, lambda c: HeunDiscreteScheduler(use_karras_sigmas=True, **c)),
    (
        "dpmpp_2m",
        False,
        lambda c: DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2, **c),
    ),
    (
        "dpmpp_2m",
        True,
        lambda c: DPMSolverMultistepScheduler(
            algorithm_type="dpmsolver++", solver_order=2, use_karras_sigmas=True, **c
        ),
    ),
]


@pytest.mark.parametrize("schedule, prediction, spacing, steps_offset, steps", CASES)
def test_euler_heun_dpmpp(schedule, prediction, spacing, steps_offset, steps):
    errors = {}
    for sampler, karras, make in SIGMA_SAMPLERS:
        ref = run_diffusers(make(config(schedule, prediction, spacing, steps_offset)), steps)
        ours = ddpm.sample(
            model,
            NOISE,
            schedule=SCHEDULES[schedule][0],
            sampler=sampler,
            steps=steps,
            spacing=spacing,
            steps_offset=steps_offset,
            prediction=prediction,
            karras=karras,
        )
        errors[sampler, karras] = rel_error(ours, ref)
    assert max(errors.values()) < TOL, errors


# DDIM and PNDM leave the grid elsewhere (see the module docstring)
DIVIDING = [c for c in CASES if c[2] == "leading" or (c[2] == "trailing" and 1000 % c[4] == 0)]


@pytest.mark.parametrize("schedule, prediction, spacing, steps_offset, steps", DIVIDING)
def test_ddim(schedule, prediction, spacing, steps_offset, steps):
    sched = DDIMScheduler(clip_sample=False, **config(schedule, prediction, spacing, steps_offset))
    ours = ddpm.sample(
        model,
        NOISE,
        schedule=SCHEDULES[schedule][0],
        sampler="ddim",
        steps=steps,
        spacing=spacing,
        steps_offset=steps_offset,
        prediction=prediction,
    )
    assert rel_error(ours, run_diffusers(sched, steps)) < TOL


class GridDDIM(DDIMScheduler):
    """diffusers' DDIM stepping to the next grid point: the stride index t - T // steps is pointed at the
    next grid level for the duration of each step (the one-line fix proposed upstream)."""

    def step(self, model_output, timestep, sample, **kw):
        grid = self.timesteps.tolist()
        i = grid.index(int(timestep))
        stride_prev = int(timestep) - self.config.num_train_timesteps // self.num_inference_steps
        target = self.alphas_cumprod[grid[i + 1]] if i + 1 < len(grid) else self.final_alpha_cumprod
        saved_table, saved_final = self.alphas_cumprod.clone(), self.final_alpha_cumprod
        if stride_prev >= 0:
            self.alphas_cumprod[stride_prev] = target
        else:
            self.final_alpha_cumprod = target
        try:
            return super().step(model_output, timestep, sample, **kw)
        finally:
            self.alphas_cumprod, self.final_alpha_cumprod = saved_table, saved_final


@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("spacing, steps", [("linspace", 20), ("linspace", 7), ("trailing", 7)])
def test_ddim_off_stride_grids(prediction, spacing, steps):
    sched, cfg = SCHEDULES["scaled_linear"][0], config("scaled_linear", prediction, spacing)
    ours = ddpm.sample(
        model, NOISE, schedule=sched, sampler="ddim", steps=steps, spacing=spacing, prediction=prediction
    )
    assert rel_error(ours, run_diffusers(GridDDIM(clip_sample=False, **cfg), steps)) < TOL
    # and the unpatched scheduler really differs there, so the patch is what makes them agree
    assert rel_error(ours, run_diffusers(DDIMScheduler(clip_sample=False, **cfg), steps)) > 1e-3


@pytest.mark.parametrize(
    "schedule, prediction, spacing, steps_offset, steps", [c for c in DIVIDING if c[1] == "eps"]
)
def test_plms(schedule, prediction, spacing, steps_offset, steps):
    cfg = config(schedule, prediction, spacing, steps_offset)
    sched = PNDMScheduler(skip_prk_steps=True, set_alpha_to_one=True, **cfg)
    ours = ddpm.sample(
        model,
        NOISE,
        schedule=SCHEDULES[schedule][0],
        sampler="plms",
        steps=steps,
        spacing=spacing,
        steps_offset=steps_offset,
    )
    assert rel_error(ours, run_diffusers(sched, steps)) < TOL


def test_plms_v_model_matches_eps_reference():
    sched = SCHEDULES["scaled_linear"][0]
    ab = sched.alphas_cumprod.float()

    def as_eps(x, t):  # the v model's output read as eps: eps = sqrt(1 - ab) x + sqrt(ab) v
        a = ab[t.long()].reshape(-1, 1, 1, 1)
        return (1 - a).sqrt() * x + a.sqrt() * model(x, t)

    cfg = config("scaled_linear", "eps", "leading", 1)
    ref = run_diffusers(PNDMScheduler(skip_prk_steps=True, set_alpha_to_one=True, **cfg), 20, model=as_eps)
    ours = ddpm.sample(
        model,
        NOISE,
        schedule=sched,
        sampler="plms",
        steps=20,
        spacing="leading",
        steps_offset=1,
        prediction="v",
    )
    assert rel_error(ours, ref) < TOL


@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("spacing", ["leading", "linspace", "trailing"])
def test_euler_ancestral_with_the_same_generator(prediction, spacing):
    cfg = config("scaled_linear", prediction, spacing)
    ref = run_diffusers(
        EulerAncestralDiscreteScheduler(**cfg), 20, generator=torch.Generator().manual_seed(1)
    )
    ours = ddpm.sample(
        model,
        NOISE,
        schedule=SCHEDULES["scaled_linear"][0],
        sampler="euler_a",
        steps=20,
        spacing=spacing,
        prediction=prediction,
        generator=torch.Generator().manual_seed(1),
    )
    assert rel_error(ours, ref) < TOL


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
@pytest.mark.parametrize("spacing", ["leading", "linspace"])
def test_ddpm_with_per_sample_generators(variance, spacing):
    """Per-sample generators draw row by row, as diffusers' randn_tensor does with a list of generators."""
    cfg = config("linear", "eps", spacing)
    gens = lambda: [torch.Generator().manual_seed(10 + i) for i in range(NOISE.shape[0])]  # noqa: E731
    ref = run_diffusers(DDPMScheduler(clip_sample=False, variance_type=variance, **cfg), 20, generator=gens())
    ours = ddpm.sample(
        model,
        NOISE,
        schedule=SCHEDULES["linear"][0],
        sampler="ddpm",
        steps=20,
        spacing=spacing,
        variance=variance,
        generator=gens(),
    )
    assert rel_error(ours, ref) < TOL


def test_ddpm_learned_range_and_ddim_eta():
    def learned(x, t):  # Improved-DDPM layout: eps, then the learned-range v in [-1, 1]
        return torch.cat([model(x, t), torch.tanh(0.5 * x + t.float().reshape(-1, 1, 1, 1) / 500)], dim=1)

    cfg = config("linear", "eps", "leading")
    ref = run_diffusers(
        DDPMScheduler(clip_sample=False, variance_type="learned_range", **cfg),
        20,
        model=learned,
        generator=torch.Generator().manual_seed(2),
    )
    ours = ddpm.sample(
        learned,
        NOISE,
        schedule=SCHEDULES["linear"][0],
        sampler="ddpm",
        steps=20,
        spacing="leading",
        generator=torch.Generator().manual_seed(2),
    )
    assert rel_error(ours, ref) < TOL

    ref = run_diffusers(
        DDIMScheduler(clip_sample=False, **cfg), 20, generator=torch.Generator().manual_seed(2), eta=0.5
    )
    ours = ddpm.sample(
        model,
        NOISE,
        schedule=SCHEDULES["linear"][0],
        sampler="ddim",
        steps=20,
        spacing="leading",
        eta=0.5,
        generator=torch.Generator().manual_seed(2),
    )
    assert rel_error(ours, ref) < TOL


@pytest.mark.parametrize("sampler", ["ddim", "plms", "euler", "dpmpp_2m"])
def test_final_sigma_min(sampler):
    """diffusers' set_alpha_to_one=False (SD 1.x's DDIM/PNDM configs) and final_sigmas_type='sigma_min'."""
    cfg = config("scaled_linear", "eps", "leading", 1)
    make = {
        "ddim": lambda: DDIMScheduler(clip_sample=False, set_alpha_to_one=False, **cfg),
        "plms": lambda: PNDMScheduler(skip_prk_steps=True, set_alpha_to_one=False, **cfg),
        "euler": lambda: EulerDiscreteScheduler(final_sigmas_type="sigma_min", **cfg),
        "dpmpp_2m": lambda: DPMSolverMultistepScheduler(final_sigmas_type="sigma_min", **cfg),
    }[sampler]
    ours = ddpm.sample(
        model,
        NOISE,
        schedule=SCHEDULES["scaled_linear"][0],
        sampler=sampler,
        steps=20,
        spacing="leading",
        steps_offset=1,
        final_sigma="sigma_min",
    )
    assert rel_error(ours, run_diffusers(make(), 20)) < TOL


# ------------------------------------------------------------------ UniPC, DPM-Solver++ 3M / 2M SDE, LMS
def dpm3(c, **kw):
    return DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=3, **c, **kw)


MULTISTEP = {  # sampler -> diffusers scheduler from a config (and extra settings)
    "unipc": lambda c, **kw: UniPCMultistepScheduler(solver_type="bh2", solver_order=2, **c, **kw),
    "unipc_3": lambda c, **kw: UniPCMultistepScheduler(solver_type="bh2", solver_order=3, **c, **kw),
    "dpmpp_3m": dpm3,
    "lms": lambda c, **kw: LMSDiscreteScheduler(**c, **kw),
}
# each spacing once with eps at 7 steps (under 15: diffusers' lower-order last steps) and SD's grid at 20;
# v and the DDPM schedule on one grid each
MULTISTEP_CASES = (
    [("scaled_linear", "eps", *g) for g in (GRIDS[1], GRIDS[2], GRIDS[4], GRIDS[6])]
    + [("scaled_linear", "v", *GRIDS[6]), ("linear", "eps", *GRIDS[5])]
)


@pytest.mark.parametrize("schedule, prediction, spacing, steps_offset, steps", MULTISTEP_CASES)
def test_unipc_dpmpp_3m_lms(schedule, prediction, spacing, steps_offset, steps):
    errors = {}
    for sampler, make in MULTISTEP.items():
        ref = run_diffusers(make(config(schedule, prediction, spacing, steps_offset)), steps)
        ours = ddpm.sample(
            model,
            NOISE,
            schedule=SCHEDULES[schedule][0],
            sampler=sampler,
            steps=steps,
            spacing=spacing,
            steps_offset=steps_offset,
            prediction=prediction,
        )
        errors[sampler] = rel_error(ours, ref)
    assert max(errors.values()) < TOL, errors


@pytest.mark.parametrize("steps", [7])
def test_multistep_karras_and_sigma_min(steps):
    cfg = config("scaled_linear", "eps", "leading", 1)
    errors = {}
    for sampler, make in MULTISTEP.items():
        ref = run_diffusers(make(cfg, use_karras_sigmas=True), steps)
        ours = ddpm.sample(model, NOISE, schedule=SCHEDULES["scaled_linear"][0], sampler=sampler, steps=steps,
                           spacing="leading", steps_offset=1, karras=True)  # fmt: skip
        errors[sampler, "karras"] = rel_error(ours, ref)
        if sampler != "lms":  # LMSDiscreteScheduler always ends at sigma = 0
            ref = run_diffusers(make(cfg, final_sigmas_type="sigma_min"), steps)
            ours = ddpm.sample(model, NOISE, schedule=SCHEDULES["scaled_linear"][0], sampler=sampler,
                               steps=steps, spacing="leading", steps_offset=1,
                               final_sigma="sigma_min")  # fmt: skip
            errors[sampler, "sigma_min"] = rel_error(ours, ref)
    assert max(errors.values()) < TOL, errors


@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("steps", [7, 20])
def test_dpmpp_2m_sde_with_per_sample_generators(prediction, steps):
    """diffusers' sde-dpmsolver++ draws its noise with randn_tensor, row i from generator i, as we do."""
    cfg = config("scaled_linear", prediction, "trailing")
    gens = lambda: [torch.Generator().manual_seed(20 + i) for i in range(NOISE.shape[0])]  # noqa: E731
    sched = DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++", solver_order=2, **cfg)
    ref = run_diffusers(sched, steps, generator=gens())
    ours = ddpm.sample(model, NOISE, schedule=SCHEDULES["scaled_linear"][0], sampler="dpmpp_2m_sde",
                       steps=steps, prediction=prediction, generator=gens())  # fmt: skip
    assert rel_error(ours, ref) < TOL
    other = ddpm.sample(model, NOISE, schedule=SCHEDULES["scaled_linear"][0], sampler="dpmpp_2m_sde",
                        steps=steps, prediction=prediction,
                        generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert rel_error(other, ref) > 1e-3  # the noise matters: another generator gives another sample


# ------------------------------------------------------------------------------- exponential sigmas
class RoundedTimesteps:
    """A DPM-Solver / UniPC scheduler whose exponential grid gives the network rounded timesteps: diffusers
    truncates them there (astype(int64) of the fractional t; its Karras branch rounds), we round both."""

    def __init__(self, scheduler):
        self.scheduler = scheduler

    def set_timesteps(self, steps):
        s = self.scheduler
        s.set_timesteps(steps)
        table = ((1 - s.alphas_cumprod) / s.alphas_cumprod).sqrt().double()
        t = schedules.timestep_at(table, s.sigmas[:-1].double())
        self.truncated = s.timesteps.clone()
        s.timesteps = t.round().to(torch.int64)

    def __getattr__(self, name):
        return getattr(self.scheduler, name)


@pytest.mark.parametrize("sampler", ["euler", "heun", "lms", "dpmpp_2m", "unipc", "dpmpp_3m"])
def test_exponential_sigmas(sampler):
    cfg = config("scaled_linear", "eps", "trailing")
    kw = dict(use_exponential_sigmas=True)
    make = {
        "euler": lambda: EulerDiscreteScheduler(**cfg, **kw),
        "heun": lambda: HeunDiscreteScheduler(**cfg, **kw),
        "dpmpp_2m": lambda: RoundedTimesteps(DPMSolverMultistepScheduler(**cfg, **kw)),
        **{k: (lambda k=k: RoundedTimesteps(MULTISTEP[k](cfg, **kw))) for k in ("unipc", "dpmpp_3m")},
        "lms": lambda: MULTISTEP["lms"](cfg, **kw),
    }[sampler]
    sched = make()
    ref = run_diffusers(sched, 12)
    grid = sampler_grid(sampler, SCHEDULES["scaled_linear"][0], 12, "trailing", exponential=True)
    levels = torch.unique_consecutive(sched.sigmas.double())  # heun lists each inner level twice
    torch.testing.assert_close(grid.sigmas, levels, rtol=TOL, atol=0)  # theirs from float32 alpha_bars
    log_sig = grid.sigmas[:-1].log()  # the formula: log sigma evenly spaced from sigma_max to sigma_min
    torch.testing.assert_close(log_sig.diff(), log_sig.diff()[:1].expand(11), rtol=1e-9, atol=1e-12)
    ours = ddpm.sample(model, NOISE, schedule=SCHEDULES["scaled_linear"][0], sampler=sampler, steps=12,
                       exponential=True)  # fmt: skip
    assert rel_error(ours, ref) < TOL
    if isinstance(sched, RoundedTimesteps):  # and diffusers' truncation is a real difference
        assert not torch.equal(sched.truncated, sched.timesteps)
