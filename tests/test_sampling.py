"""ddpm.sample: the call contract, reproducibility across batch size and order, and its error messages."""

from __future__ import annotations

import pytest
import torch

import ddpm
from ddpm import schedules
from ddpm.sampling import GAUSSIAN_SAMPLERS, discrete_grid, dpm_grid, dynamic_threshold, randn, sigma_grid

SCHEDULE = schedules.linear(1000)
SHAPE = (8, 2, 4, 4)
GRIDS = dict(
    ddpm=discrete_grid,
    ddim=discrete_grid,
    plms=discrete_grid,
    euler=sigma_grid,
    euler_a=sigma_grid,
    heun=sigma_grid,
    dpmpp_2m=dpm_grid,
    dpmpp_3m=dpm_grid,
    dpmpp_2m_sde=dpm_grid,
    unipc=dpm_grid,
    unipc_3=dpm_grid,
    lms=sigma_grid,
)
STOCHASTIC = [("ddpm", {}), ("ddim", {"eta": 1.0}), ("euler_a", {}), ("dpmpp_2m_sde", {})]


def model(x, t, **cond):
    """Batch-invariant and rational (no transcendental functions), so results are bit-exact per row."""
    tt = t.to(x.dtype).reshape(-1, *[1] * (x.ndim - 1)) / 1000
    out = 0.5 * x / (1 + 0.1 * x * x) + 0.1 * tt
    if "label" in cond:
        out = out + 0.01 * cond["label"].to(x.dtype).reshape(-1, *[1] * (x.ndim - 1))
    return out


class Recorder:
    def __init__(self, fn=model):
        self.fn, self.calls = fn, []

    def __call__(self, x, t, **cond):
        self.calls.append((x.clone(), t.clone(), cond))
        return self.fn(x, t, **cond)


def generators(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


@pytest.mark.parametrize("sampler", list(GAUSSIAN_SAMPLERS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_every_sampler_returns_x0_like_the_noise(sampler, dtype):
    noise = torch.randn(SHAPE, dtype=dtype, generator=torch.Generator().manual_seed(0))
    out = ddpm.sample(
        model, noise, schedule=SCHEDULE, sampler=sampler, steps=10, generator=generators(range(8))
    )
    assert out.shape == noise.shape and out.dtype == dtype
    assert torch.isfinite(out).all()


def test_default_sampler_is_dpmpp_2m_on_20_trailing_steps():
    rec = Recorder()
    noise = torch.randn(SHAPE)
    out = ddpm.sample(rec, noise, schedule=SCHEDULE)
    assert torch.equal(out, ddpm.sample(model, noise, schedule=SCHEDULE, sampler="dpmpp_2m", steps=20))
    assert [int(t[0]) for _, t, _ in rec.calls] == dpm_grid(SCHEDULE, 20, "trailing").timesteps.tolist()


@pytest.mark.parametrize("sampler", list(GAUSSIAN_SAMPLERS))
def test_model_sees_grid_timesteps(sampler):
    rec = Recorder()
    noise = torch.randn(SHAPE)
    n = 10
    ddpm.sample(rec, noise, schedule=SCHEDULE, sampler=sampler, steps=n, generator=torch.Generator())
    grid = GRIDS[sampler](SCHEDULE, n, "trailing")
    calls = {"plms": n + 1, "heun": 2 * n - 1}.get(sampler, n)
    assert len(rec.calls) == calls
    float_t = sampler in ("euler", "euler_a", "heun", "lms")
    for x, t, _ in rec.calls:
        assert t.shape == (SHAPE[0],) and t.device == noise.device
        assert t.dtype == (torch.float32 if float_t else torch.int64)
        assert x.shape == noise.shape and x.dtype == noise.dtype
    seen = [float(t[0]) for _, t, _ in rec.calls]
    assert sorted(set(seen), reverse=True) == grid.timesteps.double().tolist()


def test_steps_offset_and_karras_grids():
    rec = Recorder()
    ddpm.sample(
        rec,
        torch.randn(SHAPE),
        schedule=SCHEDULE,
        sampler="ddim",
        steps=20,
        spacing="leading",
        steps_offset=1,
    )
    assert [int(t[0]) for _, t, _ in rec.calls] == list(range(951, 0, -50))
    for sampler in GAUSSIAN_SAMPLERS:  # every sampler accepts a Karras and an exponential grid
        for grid in ({"karras": True}, {"exponential": True}):
            out = ddpm.sample(model, torch.randn(SHAPE), schedule=SCHEDULE, sampler=sampler, steps=8,
                              generator=torch.Generator(), **grid)  # fmt: skip
            assert torch.isfinite(out).all()
    with pytest.raises(ValueError, match="choose one of them"):
        ddpm.sample(model, torch.randn(SHAPE), schedule=SCHEDULE, karras=True, exponential=True)


@pytest.mark.parametrize("sampler", list(GAUSSIAN_SAMPLERS))
@pytest.mark.parametrize("extra", [{}, {"clip_x0": "dynamic"}, {"guidance_scale": 3.0}])
def test_bit_identical_across_batch_size_and_order(sampler, extra):
    seeds = [11, 12, 13, 14, 15, 16, 17, 18]
    kw = dict(schedule=SCHEDULE, sampler=sampler, steps=8, **extra)
    if sampler == "ddim":
        kw["eta"] = 1.0
    if "guidance_scale" in extra:
        kw["cond"] = {"label": torch.arange(8)}
        kw["uncond"] = {"label": torch.full((8,), 10)}

    def run(order):
        noise = randn((len(order), *SHAPE[1:]), generator=generators([seeds[i] for i in order]))
        cond = {k: {"label": v["label"][order]} for k, v in kw.items() if k in ("cond", "uncond")}
        return ddpm.sample(model, noise, generator=generators([seeds[i] for i in order]), **(kw | cond))

    batch = run(list(range(8)))
    for i in range(8):
        assert torch.equal(run([i])[0], batch[i])
    order = [5, 2, 7, 0, 3, 6, 1, 4]
    assert torch.equal(run(order), batch[order])


@pytest.mark.parametrize("sampler, extra", STOCHASTIC)
def test_stochastic_samplers_follow_their_generator(sampler, extra):
    noise = torch.randn(SHAPE)
    kw = dict(schedule=SCHEDULE, sampler=sampler, steps=10, **extra)
    a = ddpm.sample(model, noise, generator=torch.Generator().manual_seed(1), **kw)
    b = ddpm.sample(model, noise, generator=torch.Generator().manual_seed(1), **kw)
    c = ddpm.sample(model, noise, generator=torch.Generator().manual_seed(2), **kw)
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_randn_draws_row_i_from_generator_i_on_the_cpu():
    x = randn((3, 2, 5), generator=generators([1, 2, 3]), dtype=torch.float64)
    for i, s in enumerate([1, 2, 3]):
        row = torch.randn((1, 2, 5), generator=torch.Generator().manual_seed(s))
        assert torch.equal(x[i : i + 1], row.double())
    whole = randn((3, 2, 5), generator=torch.Generator().manual_seed(4))
    assert torch.equal(whole, torch.randn((3, 2, 5), generator=torch.Generator().manual_seed(4)))


def test_low_precision_noise_runs_the_model_in_its_dtype():
    rec = Recorder()
    noise = torch.randn(SHAPE).to(torch.bfloat16)
    out = ddpm.sample(rec, noise, schedule=SCHEDULE, sampler="euler", steps=5)
    assert out.dtype == torch.bfloat16
    assert all(x.dtype == torch.bfloat16 for x, _, _ in rec.calls)


@pytest.mark.parametrize("sampler", list(GAUSSIAN_SAMPLERS))
def test_img2img_starts_from_the_noised_image(sampler):
    """strength s runs the last int(steps * s) steps from x_t = sqrt(ab) init + sqrt(1 - ab) noise."""
    rec = Recorder()
    noise, init = torch.randn(SHAPE, dtype=torch.float64), torch.rand(SHAPE, dtype=torch.float64) * 2 - 1
    steps, strength = 10, 0.55
    ddpm.sample(
        rec,
        noise,
        schedule=SCHEDULE,
        sampler=sampler,
        steps=steps,
        init=init,
        strength=strength,
        generator=torch.Generator(),
    )
    grid = GRIDS[sampler](SCHEDULE, steps, "trailing")
    start = steps - 5
    x_first, t_first, _ = rec.calls[0]
    assert float(t_first[0]) == float(grid.timesteps[start])
    ab = float(grid.alpha_bars[start])
    torch.testing.assert_close(x_first, ab**0.5 * init + (1 - ab) ** 0.5 * noise)
    calls = {"plms": 6, "heun": 9}.get(sampler, 5)
    assert len(rec.calls) == calls


def test_learned_variance_output():
    def learned(x, t):
        return torch.cat([model(x, t), torch.full_like(x, 0.5)], dim=1)

    noise = torch.randn(SHAPE)
    # every sampler reads the first half; ddpm also the second (auto: learned)
    assert torch.equal(
        ddpm.sample(learned, noise, schedule=SCHEDULE, sampler="ddim", steps=6),
        ddpm.sample(model, noise, schedule=SCHEDULE, sampler="ddim", steps=6),
    )
    kw = dict(schedule=SCHEDULE, sampler="ddpm", steps=6)
    auto = ddpm.sample(learned, noise, generator=torch.Generator().manual_seed(0), **kw)
    explicit = ddpm.sample(
        learned, noise, generator=torch.Generator().manual_seed(0), variance="learned", **kw
    )
    small = ddpm.sample(
        learned, noise, generator=torch.Generator().manual_seed(0), variance="fixed_small", **kw
    )
    assert torch.equal(auto, explicit) and not torch.allclose(auto, small)
    with pytest.raises(ValueError, match="twice the input channels"):
        ddpm.sample(model, noise, variance="learned", generator=torch.Generator(), **kw)


def test_clip_x0_keeps_the_output_in_range():
    def wild(x, t):
        return 5 * x  # eps far too large: x0_hat far outside [-1, 1]

    noise = torch.randn(SHAPE)
    for sampler in ("ddim", "dpmpp_2m", "euler"):
        assert ddpm.sample(wild, noise, schedule=SCHEDULE, sampler=sampler, steps=10).abs().max() > 1.5
        for mode in ("static", "dynamic"):
            out = ddpm.sample(wild, noise, schedule=SCHEDULE, sampler=sampler, steps=10, clip_x0=mode)
            assert out.abs().max() <= 1.0 + 1e-6


def test_dynamic_threshold():
    """Imagen: s = max(1, 99.5th percentile of |x0|) per sample; clamp to [-s, s], divide by s."""
    x = torch.stack([torch.linspace(-4, 4, 201), torch.linspace(-0.5, 0.5, 201)]).reshape(2, 1, 201)
    out = dynamic_threshold(x)
    s = torch.quantile(x[0].abs(), 0.995)
    torch.testing.assert_close(out[0], x[0].clamp(-s, s) / s)
    assert torch.equal(out[1], x[1])  # within [-1, 1]: s = 1, unchanged


def test_progress_bar(capsys):
    ddpm.sample(model, torch.randn(SHAPE), schedule=SCHEDULE, sampler="ddim", steps=3, progress=True)
    assert "sampling" in capsys.readouterr().err


def test_nan_in_model_output_names_the_step():
    def breaks_late(x, t):
        out = model(x, t)
        return torch.where(t.reshape(-1, 1, 1, 1) < 500, torch.nan, out)

    grid = discrete_grid(SCHEDULE, 10, "trailing")
    first_bad = next(i for i, t in enumerate(grid.timesteps.tolist()) if t < 500)
    with pytest.raises(ValueError) as err:
        ddpm.sample(breaks_late, torch.randn(SHAPE), schedule=SCHEDULE, sampler="ddim", steps=10)
    msg = str(err.value)
    assert f"step {first_bad + 1} of 10" in msg and f"t={int(grid.timesteps[first_bad])}" in msg
    assert "clip_x0" in msg and "guidance_scale" in msg


def test_eps_model_at_zero_terminal_snr():
    zsnr = schedules.linear(1000, zero_terminal_snr=True)
    noise = torch.randn(SHAPE)
    with pytest.raises(ValueError, match="v-prediction"):
        ddpm.sample(model, noise, schedule=zsnr, sampler="ddim", steps=10)
    for sampler in ("ddim", "dpmpp_2m", "euler"):  # v works from alpha_bar = 0 (sigma samplers use 2^-24)
        assert torch.isfinite(
            ddpm.sample(model, noise, schedule=zsnr, sampler=sampler, steps=10, prediction="v")
        ).all()


BAD_INPUTS = [
    (dict(sampler="dpm_adaptive"), "unknown sampler 'dpm_adaptive'; choose one of \\['ddpm', 'ddim'"),
    (
        dict(spacing="uniform"),
        "unknown spacing 'uniform'; choose one of \\['leading', 'linspace', 'trailing'\\]",
    ),
    (dict(steps=0), "between 1 and the schedule length 1000"),
    (dict(steps=1001), "between 1 and the schedule length 1000"),
    (dict(steps=2.5), "between 1 and the schedule length"),
    (dict(prediction="score"), "unknown prediction 'score'"),
    (dict(clip_x0="clamp"), "unknown clip_x0 'clamp'"),
    (dict(sampler="euler", eta=0.5), "eta applies to the ddim sampler only"),
    (dict(sampler="ddim", eta=1.5), "eta must lie in \\[0, 1\\]"),
    (dict(sampler="ddim", variance="fixed_large"), "variance applies to the ddpm sampler only"),
    (dict(sampler="ddpm", variance="wide"), "unknown variance 'wide'"),
    (dict(sampler="ddpm", final_sigma="sigma_min"), "ddpm needs final_sigma='zero'"),
    (dict(final_sigma="one"), "unknown final_sigma 'one'"),
    (dict(generator=generators([1, 2, 3])), "got 3 generators for a batch of 8; pass exactly one per sample"),
    (dict(generator=1234), "generator must be a torch.Generator or a list"),
    (dict(cond={"label": torch.arange(3)}), "cond\\['label'\\] has batch 3 but the noise has batch 8"),
    (dict(cond=torch.arange(8)), "cond must be a dict of model keyword arguments"),
    (dict(guidance_scale=2.0, cond={"label": torch.arange(8)}), "needs uncond="),
    (dict(init=torch.zeros(2, 2, 4, 4)), "init has shape \\(2, 2, 4, 4\\) but noise has \\(8, 2, 4, 4\\)"),
    (dict(init=torch.zeros(SHAPE), strength=0.01), "leaves no step out of 20"),
    (dict(init=torch.zeros(SHAPE), strength=1.5), "strength must lie in \\(0, 1\\]"),
    (dict(strength=0.5), "strength=0.5 needs init="),
    (dict(schedule="linear"), "schedule must be a ddpm.schedules.DiscreteSchedule"),
    (dict(steps=1000, spacing="leading", steps_offset=1), "repeats a noise level"),
]


@pytest.mark.parametrize("kwargs, message", BAD_INPUTS)
def test_bad_input_says_what_to_do(kwargs, message):
    kw = dict(schedule=SCHEDULE, steps=20) | kwargs
    with pytest.raises(ValueError, match=message):
        ddpm.sample(model, torch.randn(SHAPE), **kw)


def test_bad_model_or_noise():
    with pytest.raises(ValueError, match="floating-point tensor"):
        ddpm.sample(model, torch.zeros(SHAPE, dtype=torch.long), schedule=SCHEDULE)
    with pytest.raises(ValueError, match="expected the input's shape with 2 channels, or 4"):
        ddpm.sample(lambda x, t: x[:, :1], torch.randn(SHAPE), schedule=SCHEDULE)
    with pytest.raises(ValueError, match="not a tensor; wrap it"):
        ddpm.sample(lambda x, t: (x,), torch.randn(SHAPE), schedule=SCHEDULE)
    with pytest.raises(ValueError, match="model must be callable"):
        ddpm.sample(None, torch.randn(SHAPE), schedule=SCHEDULE)


class _Stop(Exception):
    pass


@pytest.mark.parametrize("sampler", list(GAUSSIAN_SAMPLERS))
def test_callback_reports_each_step_without_changing_the_result(sampler):
    """`callback(step, steps, x0_hat)` once per sampler step (img2img: only the steps run), the same
    result bit for bit as without it; an exception it raises stops the run (the server's cancel)."""
    noise = torch.randn(SHAPE, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    kw = dict(schedule=SCHEDULE, sampler=sampler, steps=6, generator=generators(range(8)))
    plain = ddpm.sample(model, noise, **kw)
    seen = []
    kw["generator"] = generators(range(8))  # the same draws again
    watched = ddpm.sample(model, noise, **kw, callback=lambda s, n, x0: seen.append((s, n, x0.clone())))
    torch.testing.assert_close(watched, plain, rtol=0, atol=0)
    assert [(s, n) for s, n, _ in seen] == [(s, 6) for s in range(1, 7)]
    assert all(x0.shape == SHAPE for _, _, x0 in seen)
    if sampler not in ("ddpm", "euler_a"):  # deterministic: the last x0_hat is where the run ends up
        assert (seen[-1][2] - plain).abs().max() < (seen[0][2] - plain).abs().max()
    init = torch.zeros(SHAPE, dtype=torch.float64)
    steps_run = []
    ddpm.sample(model, noise, **{**kw, "generator": generators(range(8))}, init=init, strength=0.5,
                callback=lambda s, n, x0: steps_run.append((s, n)))  # fmt: skip
    assert steps_run == [(1, 3), (2, 3), (3, 3)]

    def stop(s, n, x0):
        if s == 2:
            raise _Stop

    rec = Recorder()
    with pytest.raises(_Stop):
        ddpm.sample(rec, noise, **{**kw, "generator": generators(range(8))}, callback=stop)
    assert len(rec.calls) <= 4  # stopped after step 2 (heun and plms evaluate twice in a step)
