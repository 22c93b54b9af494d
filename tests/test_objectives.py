"""Tests of ddpm.objectives: L_simple targets, min-SNR weights, the hybrid loss, the discretised decoder, the
variational bound and bits/dim (closed forms, an exact Gaussian model, and bad inputs)."""

from __future__ import annotations

import math

import mpmath
import pytest
import torch
from torch import nn

from ddpm import objectives as obj
from ddpm import schedules
from ddpm.objectives import (
    bits_per_dim,
    discretized_gaussian_log_likelihood,
    min_snr_weight,
    model_log_variance,
    normal_kl,
    p_mean_log_variance,
    prior_bpd,
    sample_timesteps,
    training_loss,
    vlb_term,
    vlb_terms,
)
from ddpm.process import q_sample, target

LN2 = math.log(2.0)
SCHED = schedules.linear(100)  # T = 100 keeps the whole-bound tests fast


@pytest.fixture(autouse=True)
def one_thread():
    """Tensors here are tiny: one thread is faster than two, and immune to a busy machine's scheduling."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def grid_images(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Random 8-bit images on the grid k / 127.5 - 1, including both end values."""
    g = torch.Generator().manual_seed(seed)
    k = torch.randint(0, 256, shape, generator=g)
    k.view(-1)[:2] = torch.tensor([0, 255])
    return (k / 127.5 - 1).to(dtype)


class TinyNet(nn.Module):
    """A random conv net `model(x_t, t, y=None)`; optional class labels shift its output."""

    def __init__(self, channels: int = 3, out_channels: int = 3, num_classes: int = 0, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(channels + 1, out_channels, 3, padding=1)
        self.embed = nn.Embedding(num_classes, out_channels) if num_classes else None

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        tt = (t.float() / 100).view(-1, 1, 1, 1).expand(x.shape[0], 1, *x.shape[2:])
        out = self.conv(torch.cat([x, tt], dim=1))
        if y is not None:
            out = out + self.embed(y)[:, :, None, None]
        return out


def batch(shape=(4, 3, 8, 8), t=(0, 1, 37, 99), seed=0, schedule=SCHED):
    """(x0, x_t, t, eps) with x0 on the 8-bit grid."""
    x0 = grid_images(*shape, seed=seed)
    eps = torch.randn(shape, generator=torch.Generator().manual_seed(seed + 1))
    t = torch.tensor(t, dtype=torch.int64)
    return x0, q_sample(schedule, x0, t, eps), t, eps


def coefs(schedule, t):
    """(alpha_bar, alpha_bar_prev, beta) at integer t, float64 scalars from the schedule arrays."""
    ab = schedule.alphas_cumprod[t].item()
    ab_prev = schedule.alphas_cumprod[t - 1].item() if t > 0 else 1.0
    return ab, ab_prev, schedule.betas[t].item()


# --------------------------------------------------------------------------------------------
# Timesteps, L_simple and min-SNR
# --------------------------------------------------------------------------------------------


def test_sample_timesteps_uniform_and_reproducible():
    t = sample_timesteps(20000, 10, generator=torch.Generator().manual_seed(3))
    assert t.dtype == torch.int64 and t.shape == (20000,)
    assert torch.equal(t, sample_timesteps(20000, 10, generator=torch.Generator().manual_seed(3)))
    counts = torch.bincount(t, minlength=10)
    # Binomial(20000, 0.1): sd = sqrt(20000 * 0.1 * 0.9) ~ 42, so 6 sd is 255.
    assert counts.numel() == 10 and (counts - 2000).abs().max() < 255
    assert sample_timesteps(5, 1, device="cpu").eq(0).all()


def test_sample_timesteps_logit_normal_follows_its_distribution():
    g = torch.Generator().manual_seed(0)
    t = sample_timesteps(40000, 1000, generator=g, distribution="logit_normal", loc=0.5, scale=1.0)
    assert t.dtype == torch.int64 and int(t.min()) >= 0 and int(t.max()) <= 999
    # P(t < 500) = P(u < 0) = Phi(-0.5) = 0.3085; P(t >= 900) = P(u >= logit(0.9)) = 1 - Phi(2.197 - 0.5)
    assert abs((t < 500).double().mean().item() - 0.3085) < 0.01
    assert abs((t >= 900).double().mean().item() - 0.0448) < 0.005
    g = torch.Generator().manual_seed(0)
    again = sample_timesteps(40000, 1000, generator=g, distribution="logit_normal", loc=0.5, scale=1.0)
    assert torch.equal(t, again)
    with pytest.raises(ValueError, match="logit_normal"):
        sample_timesteps(4, 10, distribution="beta")
    with pytest.raises(ValueError, match="positive scale"):
        sample_timesteps(4, 10, distribution="logit_normal", scale=0.0)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_simple_loss_is_mse_to_the_right_target(prediction):
    x0, x_t, t, eps = batch()
    out = torch.randn_like(x0)
    ab = SCHED.alphas_cumprod[t].float().view(-1, 1, 1, 1)
    want = {"eps": eps, "x0": x0, "v": ab.sqrt() * eps - (1 - ab).sqrt() * x0}[prediction]
    loss = training_loss(out, x0=x0, x_t=x_t, t=t, eps=eps, schedule=SCHED, prediction=prediction)
    assert loss.shape == (4,) and loss.dtype == torch.float32
    torch.testing.assert_close(loss, ((out - want) ** 2).mean(dim=(1, 2, 3)))
    # The oracle output scores zero.
    oracle = training_loss(want, x0=x0, x_t=x_t, t=t, eps=eps, schedule=SCHED, prediction=prediction)
    assert oracle.abs().max() < 1e-12


def test_loss_of_a_bf16_output_is_computed_in_float32():
    x0, x_t, t, eps = batch()
    out = torch.randn_like(x0).bfloat16()
    loss = training_loss(out, x0=x0, x_t=x_t, t=t, eps=eps, schedule=SCHED)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, ((out.float() - eps) ** 2).mean(dim=(1, 2, 3)))


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_min_snr_weights_match_the_paper(prediction):
    gamma = 5.0
    t = torch.tensor([0, 10, 30, 60, 99])
    ab = SCHED.alphas_cumprod[t]
    s = ab / (1 - ab)
    assert (s > gamma).any() and (s < gamma).any()  # both sides of the clip are exercised
    want = {
        "eps": torch.minimum(s, torch.tensor(gamma)) / s,
        "x0": torch.minimum(s, torch.tensor(gamma)),
        "v": torch.minimum(s, torch.tensor(gamma)) / (s + 1),
    }[prediction]
    w = min_snr_weight(SCHED, t, gamma=gamma, prediction=prediction)
    torch.testing.assert_close(w, want.float())

    x0, x_t, _, eps = batch(shape=(5, 3, 4, 4), t=t.tolist())
    x_t = q_sample(SCHED, x0, t, eps)
    out = torch.randn_like(x0)
    kw = dict(x0=x0, x_t=x_t, t=t, eps=eps, schedule=SCHED, prediction=prediction)
    torch.testing.assert_close(training_loss(out, **kw, min_snr_gamma=gamma), training_loss(out, **kw) * w)


def test_min_snr_weight_is_finite_at_zero_terminal_snr():
    zt = schedules.linear(50, zero_terminal_snr=True)
    t = torch.tensor([0, 49])
    assert torch.equal(min_snr_weight(zt, t, gamma=5.0, prediction="eps")[1:], torch.ones(1))
    for prediction in ("x0", "v"):
        w = min_snr_weight(zt, t, gamma=5.0, prediction=prediction)
        assert torch.isfinite(w).all() and w[1] == 0


# --------------------------------------------------------------------------------------------
# Learned variance and the hybrid loss
# --------------------------------------------------------------------------------------------


def test_learned_range_endpoints_and_fixed_variances():
    x = torch.zeros(3, 2, 4, 4)
    t = torch.tensor([0, 1, 50])
    betas = SCHED.betas
    ab = SCHED.alphas_cumprod
    post = betas[1:] * (1 - ab[:-1]) / (1 - ab[1:])  # beta~_t for t >= 1
    small = torch.cat([post[:1], post])  # beta~_0 = 0, clipped to beta~_1
    lo = model_log_variance(SCHED, t, x, v=-torch.ones_like(x))
    hi = model_log_variance(SCHED, t, x, v=torch.ones_like(x))
    torch.testing.assert_close(lo[:, 0, 0, 0], small[t].log().float())
    torch.testing.assert_close(hi[:, 0, 0, 0], betas[t].log().float())
    mid = model_log_variance(SCHED, t, x, v=torch.zeros_like(x))
    torch.testing.assert_close(mid, (lo + hi) / 2)
    torch.testing.assert_close(
        model_log_variance(SCHED, t, x, variance="fixed_small").flatten(), small[t].log().float()
    )
    large = model_log_variance(SCHED, t, x, variance="fixed_large").flatten()
    torch.testing.assert_close(large, torch.stack([post[0], betas[1], betas[50]]).log().float())


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_hybrid_loss_gradient_does_not_reach_the_mean_channels(prediction):
    x0, x_t, t, eps = batch()
    out = torch.randn(4, 6, 8, 8, requires_grad=True)
    hybrid = training_loss(
        out, x0=x0, x_t=x_t, t=t, eps=eps, schedule=SCHED, prediction=prediction, learned_variance=True
    )
    hybrid.sum().backward()
    mean_grad, var_grad = out.grad[:, :3].clone(), out.grad[:, 3:].clone()

    out.grad = None
    mse = ((out[:, :3] - target(SCHED, x0, t, eps, prediction)) ** 2).mean(dim=(1, 2, 3))
    mse.sum().backward()
    torch.testing.assert_close(mean_grad, out.grad[:, :3])  # only L_simple moves the mean
    assert var_grad.abs().min(dim=1).values.gt(0).float().mean() > 0.9  # the bound moves the variance
    assert torch.all(hybrid > mse.detach())


@pytest.mark.parametrize("v_end", [-1.0, 1.0])
def test_hybrid_vlb_part_equals_the_closed_form_kl(v_end):
    """At t >= 1 with an eps error d and Sigma = S, beta~ (v = -1) or beta (v = +1):
    L_t = 0.5 (log(S / beta~) + beta~ / S - 1) + e^2 / (2 S), where the mean error is
    e = mu_theta - mu~ = -beta / sqrt(alpha (1 - alpha_bar)) d (DDPM Eq. 11)."""
    t_list = [1, 20, 70, 99]
    x0, x_t, t, eps = batch(t=t_list)
    d = 0.1 * torch.randn(x0.shape, generator=torch.Generator().manual_seed(9))
    out = torch.cat([eps + d, torch.full_like(x0, v_end)], dim=1)
    kw = dict(x0=x0, x_t=x_t, t=t, eps=eps, schedule=SCHED, learned_variance=True)
    hybrid = training_loss(out, **kw, vlb_weight=0.5, num_timesteps_for_vlb=7)
    mse = (d**2).mean(dim=(1, 2, 3))
    want = []
    for i, ti in enumerate(t_list):
        ab, ab_prev, beta = coefs(SCHED, ti)
        post = beta * (1 - ab_prev) / (1 - ab)
        S = post if v_end < 0 else beta
        mean_err = beta / math.sqrt((1 - beta) * (1 - ab)) * d[i].double()
        kl = 0.5 * (math.log(S / post) + post / S - 1) + mean_err**2 / (2 * S)
        want.append(kl.mean())
    want = torch.stack(want).float()
    torch.testing.assert_close(hybrid - mse, 0.5 * 7 * want, rtol=1e-4, atol=1e-6)
    if v_end < 0:  # the oracle mean with the true posterior variance has zero bound at t >= 1
        zero = training_loss(torch.cat([eps, -torch.ones_like(x0)], 1), **kw)
        assert zero.abs().max() < 1e-5


def test_hybrid_vlb_part_at_t0_is_the_discretised_decoder_nll():
    x0, x_t, t, eps = batch(t=(0, 0, 0, 0))
    out = torch.cat([eps + 0.01 * torch.randn_like(eps), torch.zeros_like(eps)], dim=1)
    hybrid = training_loss(out, x0=x0, x_t=x_t, t=t, eps=eps, schedule=SCHED, learned_variance=True)
    mse = ((out[:, :3] - eps) ** 2).mean(dim=(1, 2, 3))
    ab, _, beta = coefs(SCHED, 0)
    x0_hat = (x_t.double() - math.sqrt(1 - ab) * out[:, :3].double()) / math.sqrt(ab)
    _, _, beta1 = coefs(SCHED, 1)
    post1 = beta1 * (1 - SCHED.alphas_cumprod[0].item()) / (1 - SCHED.alphas_cumprod[1].item())
    sd = math.sqrt(math.sqrt(beta * post1))  # v = 0: geometric mean of beta_0 and beta~_1
    x = x0.double()
    hi = torch.where(x > 1 - 1e-3, torch.tensor(math.inf, dtype=x.dtype), x + 1 / 255)
    lo = torch.where(x < -1 + 1e-3, torch.tensor(-math.inf, dtype=x.dtype), x - 1 / 255)
    p = torch.special.ndtr((hi - x0_hat) / sd) - torch.special.ndtr((lo - x0_hat) / sd)
    nll = -p.log().mean(dim=(1, 2, 3))
    torch.testing.assert_close(hybrid - mse, (0.001 * 100 * nll).float(), rtol=1e-4, atol=1e-6)


def test_hybrid_loss_learns_the_optimal_variance_for_gaussian_data():
    """Gaussian data x0 ~ N(0, s^2) and the exact denoiser as the mean: minimising the hybrid loss over a
    per-timestep v must reach Var(x_{t-1} | x_t) = beta~_t + coef_x0^2 Var(x0 | x_t), the true reverse
    variance (the minimiser of E KL over Sigma given the exact mean)."""
    s, ts = 0.5, [5, 40, 90]
    g = torch.Generator().manual_seed(0)
    v = torch.zeros(len(ts), requires_grad=True)
    opt = torch.optim.Adam([v], lr=0.05)
    t = torch.tensor(ts).repeat_interleave(128)
    ab = SCHED.alphas_cumprod[t].view(-1, 1).float()
    for _ in range(200):
        x0 = s * torch.randn(len(t), 16, generator=g)
        eps = torch.randn(len(t), 16, generator=g)
        x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
        x0_mean = ab.sqrt() * s**2 / (ab * s**2 + 1 - ab) * x_t  # E[x0 | x_t]
        eps_hat = (x_t - ab.sqrt() * x0_mean) / (1 - ab).sqrt()
        out = torch.cat([eps_hat, v.repeat_interleave(128)[:, None].expand_as(eps_hat)], dim=1)
        # 1-D data `[B, D]`: the channel split is over dim 1.
        loss = training_loss(out, x0=x0, x_t=x_t, t=t, eps=eps, schedule=SCHED, learned_variance=True)
        opt.zero_grad()
        loss.mean().backward()
        opt.step()
    learned = model_log_variance(SCHED, torch.tensor(ts), torch.zeros(3, 1), v=v.detach()[:, None]).exp()
    for i, ti in enumerate(ts):
        ab_t, ab_prev, beta = coefs(SCHED, ti)
        var_x0 = s**2 * (1 - ab_t) / (ab_t * s**2 + 1 - ab_t)
        true = beta * (1 - ab_prev) / (1 - ab_t) + (beta * math.sqrt(ab_prev) / (1 - ab_t)) ** 2 * var_x0
        assert learned[i].item() == pytest.approx(true, rel=0.03)


# --------------------------------------------------------------------------------------------
# KL and the discretised decoder
# --------------------------------------------------------------------------------------------


def test_normal_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    m1, m2 = (
        torch.randn(50, generator=g, dtype=torch.float64),
        torch.randn(50, generator=g, dtype=torch.float64),
    )
    lv1, lv2 = (
        torch.randn(50, generator=g, dtype=torch.float64),
        torch.randn(50, generator=g, dtype=torch.float64),
    )
    want = torch.distributions.kl_divergence(
        torch.distributions.Normal(m1, (0.5 * lv1).exp()), torch.distributions.Normal(m2, (0.5 * lv2).exp())
    )
    torch.testing.assert_close(normal_kl(m1, lv1, m2, lv2), want)
    assert torch.equal(normal_kl(m1, lv1, m1, lv1), torch.zeros(50, dtype=torch.float64))


def test_discretised_likelihood_is_a_distribution_over_the_256_values():
    x = torch.arange(256, dtype=torch.float64) / 127.5 - 1
    for mean, sd in [(0.0, 0.01), (0.3, 0.2), (-0.999, 0.003), (1.7, 0.5), (0.1, 30.0)]:
        logp = discretized_gaussian_log_likelihood(
            x,
            mean=torch.tensor(mean, dtype=torch.float64),
            log_scale=torch.tensor(math.log(sd), dtype=torch.float64),
        )
        assert torch.all(logp <= 0)
        assert logp.exp().sum().item() == pytest.approx(1.0, abs=1e-12)


def _mp_log_mass(x: float, mean: float, sd: float) -> float:
    """log P(bin of x) with 50-digit arithmetic (end bins open), as the reference for the float code."""
    mpmath.mp.dps = 50
    lo, hi = mpmath.mpf(x) - mpmath.mpf(1) / 255, mpmath.mpf(x) + mpmath.mpf(1) / 255
    lo = -mpmath.inf if x < -1 + 1e-3 else (lo - mean) / sd
    hi = mpmath.inf if x > 1 - 1e-3 else (hi - mean) / sd
    if x > mean:  # mirror to the lower tail, where the two CDFs differ in leading digits
        lo, hi = -hi, -lo
    return float(mpmath.log(mpmath.ncdf(hi) - mpmath.ncdf(lo)))


@pytest.mark.parametrize(
    "x, mean, sd",
    [
        (0.0, 0.0, 0.01),  # a typical decoder bin
        (0.5, 0.0, 0.01),  # 50 sd out: the naive difference of CDFs is 0 here
        (-0.5, 0.2, 0.004),  # 175 sd out, lower side
        (1.0, 0.0, 0.02),  # the open top bin, far away
        (-1.0, 0.9, 0.05),  # the open bottom bin, far away
        (0.2, 0.1, 50.0),  # a bin narrow against the scale: midpoint branch
        (0.2, -3000.0, 100.0),  # narrow bin, 30 sd out
        (0.3, 0.0, 3000.0),  # so narrow that float32 CDFs differ in their last digits
        (1 - 2 / 255, 0.4, 0.3),  # the last interior bin
    ],
)
def test_discretised_likelihood_matches_high_precision(x, mean, sd):
    want = _mp_log_mass(x, mean, sd)
    for dtype, rel in [(torch.float64, 1e-9), (torch.float32, 2e-4)]:
        xt = torch.tensor([x], dtype=dtype, requires_grad=False)
        m = torch.tensor([mean], dtype=dtype, requires_grad=True)
        ls = torch.tensor([math.log(sd)], dtype=dtype, requires_grad=True)
        got = discretized_gaussian_log_likelihood(xt, mean=m, log_scale=ls)
        assert got.item() == pytest.approx(want, rel=rel, abs=1e-5 if dtype == torch.float32 else 1e-12)
        got.sum().backward()
        assert torch.isfinite(m.grad).all() and torch.isfinite(ls.grad).all()


# --------------------------------------------------------------------------------------------
# The variational bound
# --------------------------------------------------------------------------------------------


def test_prior_term_is_below_1e4_bits_for_linear_1000():
    sched = schedules.linear(1000)
    x0 = torch.cat(
        [torch.ones(1, 3, 4, 4), -torch.ones(1, 3, 4, 4), torch.zeros(1, 3, 4, 4), grid_images(2, 3, 4, 4)]
    )
    prior = prior_bpd(x0, schedule=sched)
    assert torch.all(prior >= 0) and torch.all(prior < 1e-4)
    # KL(N(sqrt(ab) x, 1 - ab) || N(0, 1)) = 0.5 (ab x^2 - ab - log(1 - ab)), per dimension.
    ab = sched.alphas_cumprod[-1].item()
    for i in range(3):
        x = x0[i, 0, 0, 0].item()
        assert prior[i].item() == pytest.approx(0.5 * (ab * x * x - ab - math.log1p(-ab)) / LN2, rel=1e-9)


@pytest.mark.parametrize("learned", [False, True])
def test_vlb_terms_of_a_random_model_are_non_negative(learned):
    model = TinyNet(out_channels=6 if learned else 3).eval()
    x0 = grid_images(2, 3, 8, 8)
    terms = vlb_terms(
        model, x0, schedule=SCHED, learned_variance=learned, t_batch=25,
        noise_generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert terms.shape == (2, 100) and terms.dtype == torch.float64
    assert torch.isfinite(terms).all() and torch.all(terms >= 0)
    assert torch.all(terms[:, 0] > 0)  # the decoder NLL of a random model is positive


def test_one_timestep_term_matches_a_hand_computation():
    """L_t for t >= 1 with the fixed-large variance, written out from DDPM Eq. 6-7 and 11 alone."""
    model = TinyNet().eval()
    x0 = grid_images(3, 3, 8, 8, dtype=torch.float64)
    ti = 42
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    ab, ab_prev, beta = coefs(SCHED, ti)
    x_t = math.sqrt(ab) * x0 + math.sqrt(1 - ab) * eps
    t = torch.full((3,), ti)
    eps_hat = model.double()(x_t, t)
    x0_hat = (x_t - math.sqrt(1 - ab) * eps_hat) / math.sqrt(ab)
    c0, ct = beta * math.sqrt(ab_prev) / (1 - ab), (1 - ab_prev) * math.sqrt(1 - beta) / (1 - ab)
    post_var = beta * (1 - ab_prev) / (1 - ab)
    kl = 0.5 * (math.log(beta / post_var) + post_var / beta - 1) + (c0 * (x0 - x0_hat)) ** 2 / (2 * beta)
    want = kl.mean(dim=(1, 2, 3)) / LN2
    got = vlb_term(eps_hat, x0=x0, x_t=x_t, t=t, schedule=SCHED, variance="fixed_large")
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert ct > 0  # (the x_t coefficient cancels in the mean difference)


def test_bits_per_dim_is_the_sum_of_terms_computed_one_by_one():
    model = TinyNet(out_channels=6, num_classes=4).eval()
    x0 = grid_images(3, 3, 8, 8)
    y = torch.tensor([0, 3, 1])
    seed = 11
    bpd = bits_per_dim(
        model, x0, schedule=SCHED, learned_variance=True, cond={"y": y}, t_batch=7,
        generator=torch.Generator().manual_seed(seed),
    )  # fmt: skip
    g = torch.Generator().manual_seed(seed)
    total = prior_bpd(x0, schedule=SCHED)
    with torch.no_grad():
        for ti in range(SCHED.num_timesteps):
            eps = torch.randn(x0.shape, generator=g)  # the documented order: one [B, ...] draw per timestep
            t = torch.full((3,), ti)
            x_t = q_sample(SCHED, x0, t, eps)
            out = model(x_t, t, y=y)
            total = total + vlb_term(out, x0=x0, x_t=x_t, t=t, schedule=SCHED, learned_variance=True)
    torch.testing.assert_close(bpd, total, rtol=1e-12, atol=1e-12)
    # The same seed gives the same terms whatever the number of timesteps per model call.
    one = vlb_terms(model, x0, schedule=SCHED, learned_variance=True, cond={"y": y},
                    noise_generator=torch.Generator().manual_seed(seed))  # fmt: skip
    torch.testing.assert_close(one.sum(1) + prior_bpd(x0, schedule=SCHED), bpd, rtol=1e-12, atol=1e-12)


def test_bits_per_dim_of_the_exact_model_of_gaussian_data_is_the_analytic_nll():
    """Data: N(0, s^2) per dimension rounded to the 8-bit grid. Model: the exact reverse process of the
    continuous Gaussian, p(x_{t-1}|x_t) = N(c0 E[x0|x_t] + ct x_t, beta~_t + c0^2 Var(x0|x_t)), through the
    eps output and the learned-range v channel. Its discretised likelihood is exactly the Gaussian mass of
    each bin, so the expected bound exceeds the analytic NLL only by the bound's gap, and the estimate
    differs from it by Monte Carlo noise:

    - gap: KL(q(x_1 | x0) || p(x_1 | x0's bin)), the first latent seen from the bin's centre and from the
      whole bin. Inside [-1, 1] that is KL(N(0, beta_0) || N(0, beta_0 + w^2/12)) = 0.00089 bits (w = 2/255,
      beta_0 = 1e-4; a quadrature of the exact mixture agrees); the two open end bins hold a mass of
      2 Phi(-1/s) = 7e-5 here and add at most 5e-4. So 0 <= gap < 0.0014.
    - noise: one draw per term; the sum has a standard deviation of 1.3 to 1.7 bits per dimension here
      (measured over 6 noise seeds), so over N = 16 * 64 * 64 dimensions the standard error is at most
      1.7 / 256 = 0.0066, and 4 of them make 0.026.

    Hence |bpd - NLL - 0.0007| < 0.027. Measured: +0.0039 with this seed (mean +0.0030 over 6 seeds). For
    scale: the fixed-large variance in place of the exact one gives +0.19, a wrong bin width about 1 bit.
    """
    s = 0.25
    sched = schedules.linear(40, beta_start=1e-4, beta_end=0.5)  # alpha_bar_{T-1} ~ 1e-6: prior ~ 0
    ab = sched.alphas_cumprod
    betas = sched.betas
    ab_prev = sched.alphas_cumprod_prev
    c0 = betas * ab_prev.sqrt() / (1 - ab)
    post = betas * (1 - ab_prev) / (1 - ab)
    log_lo = torch.cat([post[1:2], post[1:]]).log()
    log_hi = betas.log()

    def exact_model(x_t, t):
        a, b2 = ab[t].sqrt().view(-1, 1, 1, 1), (1 - ab[t]).view(-1, 1, 1, 1)
        x0_mean = a * s**2 / (a**2 * s**2 + b2) * x_t
        x0_var = s**2 * b2 / (a**2 * s**2 + b2)
        reverse_var = post[t].view(-1, 1, 1, 1) + c0[t].view(-1, 1, 1, 1) ** 2 * x0_var
        lo, hi = log_lo[t].view(-1, 1, 1, 1), log_hi[t].view(-1, 1, 1, 1)
        v = 2 * (reverse_var.log() - lo) / (hi - lo) - 1
        eps_hat = (x_t - a * x0_mean) / b2.sqrt()
        return torch.cat([eps_hat, v.expand_as(eps_hat)], dim=1)

    g = torch.Generator().manual_seed(4)
    x = s * torch.randn(16, 1, 64, 64, generator=g, dtype=torch.float64)
    x0 = ((x + 1) * 127.5).round().clamp(0, 255) / 127.5 - 1
    bpd = bits_per_dim(exact_model, x0, schedule=sched, learned_variance=True, t_batch=10,
                       generator=torch.Generator().manual_seed(0))  # fmt: skip
    hi = torch.where(x0 > 1 - 1e-3, torch.tensor(math.inf, dtype=x0.dtype), x0 + 1 / 255)
    lo = torch.where(x0 < -1 + 1e-3, torch.tensor(-math.inf, dtype=x0.dtype), x0 - 1 / 255)
    nll = -(torch.special.ndtr(hi / s) - torch.special.ndtr(lo / s)).log().mean(dim=(1, 2, 3)) / LN2
    # The entropy of N(0, s^2) on bins of 2/255: 0.5 log2(2 pi e s^2) + log2(127.5) = 7.041 bits.
    assert nll.mean().item() == pytest.approx(7.041, abs=0.02)
    assert abs((bpd - nll).mean().item() - 0.0007) < 0.027


# --------------------------------------------------------------------------------------------
# Bad inputs
# --------------------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_value_errors():
    x0, x_t, t, eps = batch()
    kw = dict(x0=x0, x_t=x_t, t=t, eps=eps, schedule=SCHED)
    model = TinyNet().eval()
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        bits_per_dim(model, x0 * 2, schedule=SCHED)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        prior_bpd(x0 + 5, schedule=SCHED)
    with pytest.raises(ValueError, match="unknown prediction 'epsilon'"):
        training_loss(eps, **kw, prediction="epsilon")
    with pytest.raises(ValueError, match="unknown prediction"):
        bits_per_dim(model, x0, schedule=SCHED, prediction="noise")
    with pytest.raises(ValueError, match="twice the channels"):
        training_loss(eps, **kw, learned_variance=True)
    with pytest.raises(ValueError, match="pass learned_variance=True"):
        training_loss(torch.cat([eps, eps], 1), **kw)
    with pytest.raises(ValueError, match="twice the channels"):
        bits_per_dim(model, x0, schedule=SCHED, learned_variance=True)
    with pytest.raises(ValueError, match="integer timesteps"):
        training_loss(eps, **{**kw, "t": t.float()})
    with pytest.raises(ValueError, match=r"\[0, 99\]"):
        training_loss(eps, **{**kw, "t": t + 1})
    with pytest.raises(ValueError, match="min_snr_gamma"):
        training_loss(eps, **kw, min_snr_gamma=-1.0)
    with pytest.raises(ValueError, match="vlb_weight"):
        training_loss(torch.cat([eps, eps], 1), **kw, learned_variance=True, vlb_weight=-0.1)
    with pytest.raises(ValueError, match="batch size"):
        bits_per_dim(TinyNet(num_classes=2), x0, schedule=SCHED, cond={"y": torch.tensor([0, 1])})
    with pytest.raises(ValueError, match="t_batch"):
        bits_per_dim(model, x0, schedule=SCHED, t_batch=0)
    with pytest.raises(ValueError, match="unknown variance"):
        bits_per_dim(model, x0, schedule=SCHED, variance="large")
    with pytest.raises(ValueError, match="num_timesteps"):
        sample_timesteps(4, 0)


def test_clip_x0_keeps_the_models_x0_in_range():
    x0, x_t, t, _ = batch()
    wild = 50 * torch.randn_like(x0)
    p = p_mean_log_variance(wild, x_t=x_t, t=t, schedule=SCHED, prediction="x0", clip_x0=True)
    assert p.x0_hat.abs().max() <= 1
    assert p_mean_log_variance(wild, x_t=x_t, t=t, schedule=SCHED, prediction="x0").x0_hat.abs().max() > 1


def test_public_names_are_exported():
    for name in obj.__all__:
        assert hasattr(obj, name)
