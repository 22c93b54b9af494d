"""ddpm.degradations: the protocol (level 0 is the image, levels 0 … T, deterministic, differentiable, any
dtype), each built-in against an independent reading of its definition, the registry and the start prior."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ddpm import process, schedules
from ddpm.config import choices
from ddpm.degradations import (
    DEGRADATIONS,
    Blur,
    ChannelMeans,
    Downsample,
    Fade,
    Gaussian,
    Mask,
    check_degradation,
    degradation_config,
    make_degradation,
    start,
)

SHAPE = (4, 3, 16, 16)


def builtins():
    return [
        Blur(),
        Blur(levels=6, sigma=2.0, schedule="constant", kernel_size=5),
        Mask(),
        Mask(centre="random", seed=3, fill=-1.0),
        Downsample(),
        Fade(target=0.5),
        Gaussian(schedules.cosine(50)),
    ]


def images(shape=SHAPE, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1).to(dtype)


@pytest.mark.parametrize("D", builtins(), ids=repr)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_level_zero_is_the_image_and_every_level_keeps_shape_and_dtype(D, dtype):
    x0 = images(dtype=dtype)
    assert torch.equal(D(x0, 0), x0)
    for t in (1, D.levels // 2, D.levels):
        y = D(x0, t)
        assert y.shape == x0.shape and y.dtype == dtype and torch.isfinite(y).all()
    assert not torch.allclose(D(x0, D.levels).float(), x0.float(), atol=1e-2)
    assert check_degradation(D, like=x0) == D.levels


@pytest.mark.parametrize("D", builtins(), ids=repr)
def test_per_image_levels_deterministic_and_differentiable(D):
    x0 = images()
    t = torch.tensor([0, 1, D.levels // 2, D.levels])
    y = D(x0, t)
    for i in range(4):
        assert torch.allclose(y[i : i + 1], D(x0[i : i + 1], int(t[i])), atol=1e-6)
    assert torch.equal(y, D(x0.clone(), t.clone()))  # the same (x0, t), the same output
    x = x0.clone().requires_grad_(True)
    D(x, D.levels // 2).square().sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("bad", [-1, 10**6, torch.tensor([0, 1, 2, 99]), torch.tensor([-3, 0, 0, 0])])
def test_a_level_outside_0_to_T_is_an_error_naming_the_range(bad):
    D = Fade(levels=20)
    with pytest.raises(ValueError, match=r"outside 0 … 20"):
        D(images(), bad)
    with pytest.raises(ValueError, match="integer tensor"):
        D(images(), torch.tensor([1.0, 2.0, 3.0, 4.0]))
    with pytest.raises(ValueError, match=r"LongTensor \[B\]"):
        D(images(), torch.tensor([1, 2]))


def _blur_once(x, kernel_1d):
    """One 2D Gaussian blur with reflect padding, written as a plain depthwise conv2d."""
    k2 = torch.outer(kernel_1d, kernel_1d).to(x)
    pad = k2.shape[-1] // 2
    c = x.shape[1]
    return F.conv2d(F.pad(x, (pad,) * 4, mode="reflect"), k2.expand(c, 1, *k2.shape), groups=c)


def test_blur_is_t_successive_reflect_padded_gaussian_blurs():
    D = Blur(levels=8, sigma=0.6, schedule="exponential", growth=1.3, kernel_size=7)
    assert D.sigmas == pytest.approx([0.6 * 1.3**k for k in range(8)])
    x0 = images(dtype=torch.float64)
    x = x0
    for k in range(1, 9):
        x = _blur_once(x, D.kernel(k))
        assert torch.allclose(D(x0, k), x, atol=1e-12)
    assert Blur(schedule="constant", sigma=2.0).sigmas == [2.0] * 20


def test_blur_ends_near_flat_and_keeps_constant_images():
    x0 = images()
    y = Blur()(x0, 20)
    spread = (y - y.mean((2, 3), keepdim=True)).std() / (x0 - x0.mean((2, 3), keepdim=True)).std()
    assert spread < 0.05
    flat = torch.full(SHAPE, 0.3)
    assert torch.allclose(Blur()(flat, 20), flat, atol=1e-6)
    with pytest.raises(ValueError, match="kernel_size"):
        Blur(kernel_size=11)(images((1, 1, 4, 4)), 1)


def test_mask_grows_from_its_centre_towards_fill():
    D = Mask(levels=10, fill=-1.0)
    x0 = torch.ones(1, 1, 16, 16)
    keep = [D(x0, t)[0, 0] for t in range(11)]
    for a, b in zip(keep, keep[1:]):
        assert (b <= a + 1e-7).all()  # masked pixels stay masked
    last = keep[-1]
    assert last[7:9, 7:9].max() < -0.99 and last[0, 0] > last[8, 8]
    # seeded random centres: fixed by the seed, per image when bound to per-image generators
    R = Mask(levels=10, centre="random", seed=1)
    assert torch.equal(R(x0, 10), Mask(levels=10, centre="random", seed=1)(x0, 10))
    assert not torch.equal(R(x0, 10), Mask(levels=10, centre="random", seed=2)(x0, 10))
    gens = [torch.Generator().manual_seed(s) for s in (5, 6)]
    pair = R.bind(torch.ones(2, 1, 16, 16), generator=gens)(torch.ones(2, 1, 16, 16), 10)
    alone = R.bind(x0, generator=[torch.Generator().manual_seed(6)])(x0, 10)
    assert torch.equal(pair[1:], alone) and not torch.equal(pair[0], pair[1])


def test_downsample_averages_blocks_of_two_to_the_t():
    D = Downsample(levels=3)
    x0 = images(dtype=torch.float64)
    for t in range(1, 4):
        k = 2**t
        y = D(x0, t)
        assert torch.allclose(F.avg_pool2d(y, k), F.avg_pool2d(x0, k))
        assert torch.equal(y, F.interpolate(F.avg_pool2d(x0, k), scale_factor=k, mode="nearest"))
    with pytest.raises(ValueError, match="divisible by 8"):
        D(images((1, 1, 12, 12)), 1)


def test_fade_reaches_its_target_and_gaussian_is_the_forward_process():
    assert torch.allclose(Fade(target=0.25)(images(), 20), torch.full(SHAPE, 0.25))
    S = schedules.linear(100)
    G = Gaussian(S)
    x0, eps = images(), images(seed=1)
    bound = G.bind(x0, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([1, 5, 50, 100])
    assert torch.allclose(bound(x0, t), process.q_sample(S, x0, t - 1, bound.noise))
    # with the noise re-estimated from (x_t, x0_hat), D(x0_hat, t) is x_t again
    x_t = process.q_sample(S, x0, t - 1, eps)
    x0_hat = images(seed=2)
    assert torch.allclose(G.with_estimate(x_t=x_t, x0=x0_hat, t=t)(x0_hat, t), x_t, atol=1e-5)
    assert torch.equal(G(x0, 7), G(x0, 7))  # unbound: the seeded noise, the same every call


def test_registry_round_trip_and_errors():
    assert tuple(DEGRADATIONS) == choices.DEGRADATION_NAMES
    for D in builtins():
        again = make_degradation(**degradation_config(D))
        assert type(again) is type(D) and again.options() == D.options()
        assert torch.equal(again(images(), again.levels), D(images(), D.levels))
    with pytest.raises(ValueError, match="choose one of"):
        make_degradation("snow")
    with pytest.raises(ValueError, match="takes the options"):
        make_degradation("blur", radius=3)


class Shift:
    """A user's own degradation: no base class, just `levels` and `__call__`."""

    levels = 4

    def __init__(self, at_zero=0.0):
        self.at_zero = at_zero

    def __call__(self, x0, t):
        t = torch.as_tensor(t).reshape(-1, 1, 1, 1).to(x0)
        return x0 + 0.1 * t + self.at_zero


def test_check_degradation_accepts_duck_types_and_names_the_fix():
    assert check_degradation(Shift(), like=images()) == 4
    with pytest.raises(ValueError, match=r"\(x0, 0\) is not x0.*level 0 must be the clean image"):
        check_degradation(Shift(at_zero=0.5), like=images())
    with pytest.raises(ValueError, match="needs `levels`"):
        check_degradation(lambda x, t: x)


def test_start_prior_fits_channel_means_and_draws_per_image():
    data = images((200, 3, 8, 8)) * 0.2 + torch.tensor([-0.5, 0.0, 0.5]).view(1, 3, 1, 1)
    prior = ChannelMeans.fit(data, noise=0.0)
    assert prior.mean == pytest.approx([-0.5, 0.0, 0.5], abs=0.02)
    assert ChannelMeans.from_dict(prior.to_dict()) == prior
    D = Blur(levels=20)
    gens = [torch.Generator().manual_seed(s) for s in range(3)]
    _, x = start(D, prior, (3, 3, 16, 16), generator=gens)
    assert torch.allclose(x, x.mean((2, 3), keepdim=True).expand_as(x), atol=1e-6)  # flat at T
    _, alone = start(D, prior, (1, 3, 16, 16), generator=[torch.Generator().manual_seed(2)])
    assert torch.equal(alone, x[2:])
    means = start(D, prior, (4000, 3, 16, 16))[1].mean((2, 3))
    assert means.mean(0).tolist() == pytest.approx(list(prior.mean), abs=0.02)
    cov = torch.tensor(prior.cov, dtype=torch.float64)
    assert torch.allclose(torch.cov(means.T).double(), cov, atol=5e-4)
