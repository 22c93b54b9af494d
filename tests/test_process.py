"""The forward process, its posterior and the eps/x0/v conversions against their definitions."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ddpm import process, schedules

SCHEDULES = {"linear": schedules.linear(1000), "cosine": schedules.cosine(1000)}


def _ab(schedule, t, like):
    return schedule.alphas_cumprod[t].reshape(-1, *[1] * (like.ndim - 1))


@settings(max_examples=40, deadline=None)
@given(
    name=st.sampled_from(list(SCHEDULES)),
    t=st.lists(st.integers(0, 999), min_size=1, max_size=6),
    seed=st.integers(0, 2**31 - 1),
)
def test_round_trips_eps_x0_v(name, t, seed):
    """eps -> x0 -> eps, x0 -> v -> x0 and v -> eps -> v are exact to 1e-6 in float64, at every t."""
    s = SCHEDULES[name]
    g = torch.Generator().manual_seed(seed)
    t = torch.tensor(t)
    x0 = torch.rand(len(t), 3, 4, generator=g, dtype=torch.float64) * 2 - 1
    eps = torch.randn(len(t), 3, 4, generator=g, dtype=torch.float64)
    x_t = process.q_sample(s, x0, t, eps)
    v = process.v_from_eps(s, x0, t, eps)
    tol = dict(rtol=0, atol=1e-6)
    torch.testing.assert_close(process.x0_from_eps(s, x_t, t, eps), x0, **tol)
    torch.testing.assert_close(process.eps_from_x0(s, x_t, t, x0), eps, **tol)
    torch.testing.assert_close(process.x0_from_v(s, x_t, t, v), x0, **tol)
    torch.testing.assert_close(process.eps_from_v(s, x_t, t, v), eps, **tol)
    for prediction, out in (("eps", eps), ("x0", x0), ("v", v)):
        torch.testing.assert_close(process.target(s, x0, t, eps, prediction), out, **tol)
        got_x0, got_eps = process.to_x0_eps(s, x_t, t, out, prediction)
        torch.testing.assert_close(got_x0, x0, **tol)
        torch.testing.assert_close(got_eps, eps, **tol)


def test_q_sample_formula_and_moments():
    """x_t = sqrt(ab) x0 + sqrt(1 - ab) eps (DDPM Eq. 4): mean sqrt(ab) x0, variance 1 - ab."""
    s = SCHEDULES["linear"]
    t = torch.full((20000,), 300)
    x0 = torch.full((20000, 1), 0.7, dtype=torch.float64)
    eps = torch.randn(20000, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x_t = process.q_sample(s, x0, t, eps)
    ab = float(s.alphas_cumprod[300])
    torch.testing.assert_close(x_t, ab**0.5 * x0 + (1 - ab) ** 0.5 * eps)
    assert abs(x_t.mean().item() - ab**0.5 * 0.7) < 4 * (1 - ab) ** 0.5 / 20000**0.5
    assert abs(x_t.var().item() / (1 - ab) - 1) < 0.03


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_posterior_is_the_gaussian_product(name):
    """q(x_{t-1} | x_t, x0) ∝ q(x_t | x_{t-1}) q(x_{t-1} | x0): precision-weighted mean, summed precision."""
    s = SCHEDULES[name]
    t = torch.tensor([1, 10, 500, 998])
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(4, 2, generator=g, dtype=torch.float64)
    x_t = torch.randn(4, 2, generator=g, dtype=torch.float64)
    beta, alpha = s.betas[t].reshape(-1, 1), s.alphas[t].reshape(-1, 1)
    ab_prev = s.alphas_cumprod_prev[t].reshape(-1, 1)
    precision = alpha / beta + 1 / (
        1 - ab_prev
    )  # from x_t = sqrt(alpha) x_{t-1} + sqrt(beta) z and the prior
    mean = (alpha.sqrt() * x_t / beta + ab_prev.sqrt() * x0 / (1 - ab_prev)) / precision
    post = process.q_posterior(s, x0, x_t, t)
    torch.testing.assert_close(post.mean, mean)
    torch.testing.assert_close(post.variance, 1 / precision)
    torch.testing.assert_close(post.log_variance_clipped, (1 / precision).log())


def test_posterior_at_t0_is_x0_with_clipped_log_variance():
    s = SCHEDULES["linear"]
    x0, x_t = torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)
    post = process.q_posterior(s, x0, x_t, torch.tensor([0, 0]))
    torch.testing.assert_close(post.mean, x0)
    assert torch.all(post.variance == 0)
    torch.testing.assert_close(
        post.log_variance_clipped, process.q_posterior(s, x0, x_t, torch.tensor([1, 1])).log_variance_clipped
    )


def test_snr_and_dtypes():
    s = SCHEDULES["linear"]
    t = torch.tensor([0, 999])
    ab = s.alphas_cumprod[t]
    torch.testing.assert_close(process.snr(s, t), ab / (1 - ab))
    x = torch.randn(2, 3, dtype=torch.float16)
    assert process.x0_from_eps(s, x, t, x).dtype == torch.float16


def test_unknown_prediction():
    s = SCHEDULES["linear"]
    x, t = torch.zeros(1, 2), torch.tensor([5])
    with pytest.raises(ValueError, match=r"unknown prediction 'score'; choose one of \['eps', 'x0', 'v'\]"):
        process.to_x0_eps(s, x, t, x, "score")
    with pytest.raises(ValueError, match="unknown prediction"):
        process.target(s, x, t, x, "score")
