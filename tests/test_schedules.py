"""Schedules against their defining formulas, step grids against the named spacings, and their properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ddpm import schedules
from ddpm.schedules import (
    DiscreteSchedule,
    alpha_bar_from_sigma,
    exponential_sigmas,
    karras_sigmas,
    sigma_at,
    timestep_at,
    timesteps,
)

ALL = {
    "linear": schedules.linear(1000),
    "scaled_linear": schedules.scaled_linear(1000),
    "cosine": schedules.cosine(1000),
    "sigmoid": schedules.sigmoid(1000),
}


def test_linear_and_scaled_linear_formulas():
    T = 1000
    ref = np.linspace(1e-4, 0.02, T)
    np.testing.assert_allclose(schedules.linear(T).betas.numpy(), ref, rtol=0, atol=1e-15)
    ref = np.linspace(0.00085**0.5, 0.012**0.5, T) ** 2
    np.testing.assert_allclose(schedules.scaled_linear(T).betas.numpy(), ref, rtol=1e-12)


def test_cosine_formula():
    """Improved DDPM Eq. 17: alpha_bar(t) = f(t) / f(0), f(t) = cos^2(((t/T + s)/(1 + s)) pi / 2); beta capped
    at 0.999."""
    T, s = 1000, 0.008

    def f(t):
        return math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2

    betas = [min(1 - f(t + 1) / f(t), 0.999) for t in range(T)]
    np.testing.assert_allclose(schedules.cosine(T).betas.numpy(), betas, rtol=1e-10)
    # where no beta is capped, alpha_bar is the closed form itself
    ab = schedules.cosine(T).alphas_cumprod.numpy()
    np.testing.assert_allclose(ab[:-1], [f(t + 1) / f(0) for t in range(T - 1)], rtol=1e-9)


def test_sigmoid_formula():
    x = np.linspace(-6, 6, 1000)
    ref = 1 / (1 + np.exp(-x)) * (0.02 - 1e-4) + 1e-4
    np.testing.assert_allclose(schedules.sigmoid(1000).betas.numpy(), ref, rtol=1e-12)


@pytest.mark.parametrize("name", list(ALL))
def test_schedule_properties(name):
    s = ALL[name]
    assert s.betas.dtype == torch.float64 and s.alphas_cumprod.shape == (1000,)
    ab = s.alphas_cumprod
    assert torch.all((ab > 0) & (ab < 1))
    assert torch.all(ab[1:] < ab[:-1])
    assert torch.all(s.sigmas[1:] > s.sigmas[:-1])
    assert torch.all(s.log_snr[1:] < s.log_snr[:-1])
    torch.testing.assert_close(s.alphas_cumprod_prev[1:], ab[:-1])
    assert s.alphas_cumprod_prev[0] == 1
    torch.testing.assert_close(s.alphas_cumprod, torch.cumprod(1 - s.betas, 0))


@pytest.mark.parametrize("name", list(ALL))
def test_zero_terminal_snr(name):
    base = ALL[name]
    z = schedules.from_config({"name": name, "zero_terminal_snr": True})
    assert z.alphas_cumprod[-1] == 0
    torch.testing.assert_close(z.alphas_cumprod[0], base.alphas_cumprod[0])
    assert torch.all(z.alphas_cumprod[1:] < z.alphas_cumprod[:-1])


@pytest.mark.parametrize("name", list(ALL))
def test_config_round_trip(name):
    s = ALL[name]
    back = schedules.from_config(s.to_config())
    assert torch.equal(back.betas, s.betas) and back.name == name
    custom = DiscreteSchedule(torch.linspace(0.001, 0.2, 10))
    assert torch.equal(schedules.from_config(custom.to_config()).betas, custom.betas)


def test_bad_schedules():
    with pytest.raises(ValueError, match="positive integer"):
        schedules.linear(0)
    with pytest.raises(ValueError, match="unknown schedule 'quadratic'; choose one of"):
        schedules.from_config("quadratic")
    with pytest.raises(ValueError, match=r"betas must lie in \(0, 1\]"):
        DiscreteSchedule(torch.tensor([0.1, 1.5]))


@pytest.mark.parametrize(
    "spacing, offset, expected",
    [
        ("leading", 0, [900, 800, 700, 600, 500, 400, 300, 200, 100, 0]),
        ("leading", 1, [901, 801, 701, 601, 501, 401, 301, 201, 101, 1]),
        ("linspace", 0, [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]),
        ("trailing", 0, [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]),
    ],
)
def test_named_spacings(spacing, offset, expected):
    """Lin et al. 2024, Table 2 (T = 1000, 10 steps)."""
    assert timesteps(1000, 10, spacing, steps_offset=offset).tolist() == expected


@pytest.mark.parametrize("spacing", ["leading", "linspace", "trailing"])
@pytest.mark.parametrize("steps", [1, 7, 20, 30, 50, 333, 1000])
def test_grids_match_diffusers(spacing, steps):
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DDIMScheduler(num_train_timesteps=1000, timestep_spacing=spacing, steps_offset=0)
    sched.set_timesteps(steps)
    assert timesteps(1000, steps, spacing).tolist() == sched.timesteps.tolist()


@settings(max_examples=200, deadline=None)
@given(
    T=st.integers(1, 2000), frac=st.floats(0, 1), spacing=st.sampled_from(["leading", "linspace", "trailing"])
)
def test_grid_properties(T, frac, spacing):
    steps = max(1, round(frac * T))
    t = timesteps(T, steps, spacing)
    assert t.dtype == torch.int64 and t.shape == (steps,)
    assert int(t.min()) >= 0 and int(t.max()) <= T - 1
    assert torch.all(t[1:] < t[:-1])  # strictly descending: no level visited twice
    if spacing == "trailing" or (spacing == "linspace" and steps > 1):
        assert int(t[0]) == T - 1  # start at the last timestep (a 1-point linspace is [0], as in numpy)


def test_bad_grids():
    with pytest.raises(
        ValueError, match=r"unknown spacing 'even'; choose one of \['leading', 'linspace', 'trailing'\]"
    ):
        timesteps(1000, 10, "even")
    for steps in (0, 1001, 2.5):
        with pytest.raises(ValueError, match="between 1 and the schedule length 1000"):
            timesteps(1000, steps)


def test_karras_sigmas():
    """Karras et al. 2022, Eq. 5: sigma_i^(1/rho) is linear in i between the ends."""
    sig = karras_sigmas(0.03, 14.6, 12)
    assert sig[0].item() == pytest.approx(14.6) and sig[-1].item() == pytest.approx(0.03)
    inv = sig ** (1 / 7)
    torch.testing.assert_close(
        inv[1:] - inv[:-1], torch.full((11,), float(inv[1] - inv[0]), dtype=torch.float64)
    )
    with pytest.raises(ValueError):
        karras_sigmas(1.0, 0.5, 4)


def test_exponential_sigmas():
    """log sigma evenly spaced between the ends (k-diffusion's get_sigmas_exponential without the final 0)."""
    sig = exponential_sigmas(0.03, 14.6, 12)
    assert sig[0].item() == pytest.approx(14.6) and sig[-1].item() == pytest.approx(0.03)
    ratio = sig[1:] / sig[:-1]
    torch.testing.assert_close(ratio, torch.full((11,), (0.03 / 14.6) ** (1 / 11), dtype=torch.float64))
    assert exponential_sigmas(0.5, 2.0, 1).tolist() == [pytest.approx(2.0)]
    with pytest.raises(ValueError):
        exponential_sigmas(1.0, 0.5, 4)


def test_sigma_at_interpolates_linearly_and_clamps():
    table = ALL["scaled_linear"].sigmas
    t = torch.tensor([0.0, 17.0, 17.25, 999.0, -3.0, 1200.0], dtype=torch.float64)
    expected = [table[0], table[17], 0.75 * table[17] + 0.25 * table[18], table[999], table[0], table[999]]
    torch.testing.assert_close(sigma_at(table, t), torch.stack(expected))


def test_timestep_at_is_the_log_linear_inverse():
    table = ALL["linear"].sigmas
    t = torch.tensor([0.0, 5.0, 123.0, 999.0], dtype=torch.float64)
    torch.testing.assert_close(timestep_at(table, table[t.long()]), t)
    geo = (table[40] * table[41]).sqrt()  # midway in log sigma
    assert timestep_at(table, geo).item() == pytest.approx(40.5, abs=1e-9)
    assert (
        timestep_at(table, torch.tensor(1e-6)).item() == 0
        and timestep_at(table, torch.tensor(1e9)).item() == 999
    )


def test_timestep_at_matches_diffusers():
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.EulerDiscreteScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012
    )
    log_table = np.log(ALL["scaled_linear"].sigmas.numpy())
    sig = karras_sigmas(0.03, 14.6, 25)
    ref = [sched._sigma_to_t(np.array(s), log_table) for s in sig.numpy()]
    np.testing.assert_allclose(
        timestep_at(ALL["scaled_linear"].sigmas, sig).numpy(), ref, rtol=1e-10, atol=1e-9
    )


def test_alpha_bar_from_sigma_inverts_sigmas():
    s = ALL["cosine"]
    torch.testing.assert_close(alpha_bar_from_sigma(s.sigmas), s.alphas_cumprod, rtol=1e-12, atol=0)
    assert alpha_bar_from_sigma(0.0).item() == 1.0 and alpha_bar_from_sigma(math.inf).item() == 0.0
