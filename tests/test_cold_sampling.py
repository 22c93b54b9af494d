"""Cold sampling through `ddpm.sample` (Bansal et al. 2022, Algorithms 1 and 2, direct restoration): the
paper's additive-degradation argument, oracle restorers for every built-in, DDIM as Algorithm 2 with
Gaussian noising, grids, per-image reproducibility, and the errors for mixing the two worlds."""

from __future__ import annotations

import pytest
import torch

import ddpm
from ddpm import schedules
from ddpm.degradations import Blur, ChannelMeans, Downsample, Fade, Gaussian, Mask, bind, start

SHAPE = (4, 1, 8, 8)


def dyadic(shape, seed):
    """Values k / 8 with small integers k: sums and differences of them are exact in float32."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-16, 17, shape, generator=g).float() / 8


class Additive:
    """D(x, t) = x + t e (the paper's Sec. 3.2 example), with a fixed dyadic e."""

    levels = 10

    def __init__(self):
        self.e = dyadic(SHAPE[1:], 99)

    def __call__(self, x0, t):
        t = torch.as_tensor(t).reshape(-1, 1, 1, 1).to(x0)
        return x0 + t * self.e


class Recorder:
    def __init__(self, fn):
        self.fn, self.calls = fn, []

    def __call__(self, x, t):
        self.calls.append((x.clone(), t.clone()))
        return self.fn(x, t)


def test_algorithm_2_inverts_an_additive_degradation_whatever_the_restorer_says():
    D, x0 = Additive(), dyadic(SHAPE, 0)
    x_T = D(x0, D.levels)
    wrong = Recorder(lambda x, t: dyadic(x.shape, int(t[0])))  # a restorer that knows nothing
    out = ddpm.sample(wrong, x_T, degradation=D, sampler="cold")
    assert torch.equal(out, x0)
    for x_s, t in wrong.calls:  # every state on the way is D(x0, s) exactly
        assert torch.equal(x_s, D(x0, int(t[0])))
    naive = ddpm.sample(wrong, x_T, degradation=D, sampler="cold_naive")
    assert (naive - x0).abs().max() > 0.5  # Algorithm 1 is only as right as the restorer


def oracle_cases():
    random_mask = Mask(centre="random", seed=4)
    return [Blur(), Mask(), random_mask, Downsample(), Fade(), Gaussian(schedules.linear(40))]


@pytest.mark.parametrize("D", oracle_cases(), ids=repr)
@pytest.mark.parametrize("sampler", ["cold", "cold_naive"])
@pytest.mark.parametrize("steps", [None, 3])
def test_an_oracle_restorer_returns_x0_for_every_builtin(D, sampler, steps):
    x0 = torch.rand(SHAPE, generator=torch.Generator().manual_seed(1)) * 2 - 1
    D = bind(D, x0, generator=[torch.Generator().manual_seed(s) for s in range(4)])
    oracle = Recorder(lambda x, t: x0)
    out = ddpm.sample(oracle, D(x0, D.levels), degradation=D, sampler=sampler, steps=steps)
    assert torch.allclose(out, x0, atol=1e-5)
    assert len(oracle.calls) == (steps or D.levels)
    for x_s, t in oracle.calls:  # the walk visits D(x0, s) at each of its levels
        assert torch.allclose(x_s, D(x0, int(t[0])), atol=1e-5)


@pytest.mark.parametrize("steps", [10, 1000])
def test_algorithm_2_with_gaussian_noising_is_ddim(steps):
    S = schedules.linear(1000)
    x_T = torch.randn(SHAPE, generator=torch.Generator().manual_seed(2))

    def net(x, t):  # any x0-prediction network, given the schedule's timestep
        return torch.tanh(0.8 * x + 1e-3 * t.to(x).view(-1, 1, 1, 1))

    ddim = ddpm.sample(net, x_T, schedule=S, sampler="ddim", steps=steps, prediction="x0")
    cold = ddpm.sample(lambda x, level: net(x, level - 1), x_T, degradation=Gaussian(S), sampler="cold",
                       steps=steps)  # fmt: skip
    assert (cold - ddim).abs().max() < 1e-5


def test_fewer_levels_follow_the_schedules_grid_and_start_level_restores_partway():
    D, x0 = Fade(levels=20), torch.rand(SHAPE)
    rec = Recorder(lambda x, t: x0)
    ddpm.sample(rec, D(x0, 20), degradation=D, sampler="cold", steps=4)
    assert [int(t[0]) for _, t in rec.calls] == (schedules.timesteps(20, 4) + 1).tolist() == [20, 15, 10, 5]
    rec.calls.clear()
    out = ddpm.sample(rec, D(x0, 7), degradation=D, sampler="cold", start_level=7)
    assert [int(t[0]) for _, t in rec.calls] == list(range(7, 0, -1)) and torch.allclose(out, x0)
    rec.calls.clear()
    ddpm.sample(rec, D(x0, 20), degradation=D, sampler="cold", steps=3, spacing="linspace")
    assert [int(t[0]) for _, t in rec.calls][0] == 20


def test_direct_restoration_is_one_call_at_the_top_level():
    D, x_T = Blur(levels=6), torch.rand(SHAPE)
    rec = Recorder(lambda x, t: x * 0.5)
    out = ddpm.sample(rec, x_T, degradation=D, sampler="cold_direct")
    assert len(rec.calls) == 1 and int(rec.calls[0][1][0]) == 6 and torch.equal(out, x_T * 0.5)
    with pytest.raises(ValueError, match="one model call; leave steps out"):
        ddpm.sample(rec, x_T, degradation=D, sampler="cold_direct", steps=3)


def test_generation_is_per_image_whatever_the_batch():
    D = Mask(levels=8, centre="random")
    prior = ChannelMeans(mean=(0.1,), cov=((0.04,),), noise=0.05)

    def net(x, t):
        return x / (1 + 0.1 * x * x) + 0.01 * t.to(x).view(-1, 1, 1, 1)

    def generate(seeds):
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        bound, x_T = start(D, prior, (len(seeds), *SHAPE[1:]), generator=gens)
        return ddpm.sample(net, x_T, degradation=bound, sampler="cold", generator=gens)

    batch = generate([3, 4, 5, 6])
    for i, s in enumerate([3, 4, 5, 6]):
        assert torch.allclose(generate([s]), batch[i : i + 1], atol=1e-6)
    assert not torch.allclose(batch[0], batch[1])


def test_mixing_gaussian_and_cold_sampling_names_the_fix():
    S, x = schedules.linear(100), torch.rand(SHAPE)
    with pytest.raises(ValueError, match=r"Gaussian diffusion.*sampler= one of \['cold'"):
        ddpm.sample(lambda x, t: x, x, schedule=S, sampler="ddim", degradation=Blur())
    with pytest.raises(ValueError, match=r"pass degradation=.*sampled with one of \['ddpm'"):
        ddpm.sample(lambda x, t: x, x, sampler="cold")
    with pytest.raises(ValueError, match="schedule= applies to the Gaussian samplers only"):
        ddpm.sample(lambda x, t: x, x, sampler="cold", degradation=Blur(), schedule=S)
    with pytest.raises(ValueError, match="prediction='eps' does not apply"):
        ddpm.sample(lambda x, t: x, x, sampler="cold", degradation=Blur(), prediction="eps")
    with pytest.raises(ValueError, match="spacing"):
        ddpm.sample(lambda x, t: x, x, sampler="cold", degradation=Blur(), spacing="leading")
    with pytest.raises(ValueError, match=r"steps must be None \(every level\) or an int in 1 … 20"):
        ddpm.sample(lambda x, t: x, x, sampler="cold", degradation=Blur(), steps=21)
    with pytest.raises(ValueError, match="schedule must be"):
        ddpm.sample(lambda x, t: x, x, sampler="ddim")


def test_bad_degradations_and_models_are_caught():
    x = torch.rand(SHAPE)

    class NotIdentity(Additive):
        def __call__(self, x0, t):
            return super().__call__(x0, t) + 0.25

    with pytest.raises(ValueError, match=r"is not x0.*make D return x0 unchanged where t == 0"):
        ddpm.sample(lambda x, t: x, x, sampler="cold", degradation=NotIdentity())
    with pytest.raises(ValueError, match="shaped like its input"):
        ddpm.sample(lambda x, t: x[:, :, :4], x, sampler="cold", degradation=Blur(levels=3, kernel_size=3))
    with pytest.raises(ValueError, match="not finite.*cold step 1 of 3"):
        ddpm.sample(lambda x, t: x / 0, x, sampler="cold", degradation=Fade(levels=3))


def test_trajectory_holds_the_path_from_x_T_to_x_0_for_either_world():
    D, x0 = Fade(levels=5), torch.rand(SHAPE)
    path: list[torch.Tensor] = []
    out = ddpm.sample(lambda x, t: x0, D(x0, 5), degradation=D, sampler="cold", trajectory=path)
    assert len(path) == 6 and torch.equal(path[-1], out)
    for s, x_s in zip(range(5, -1, -1), path):
        assert torch.allclose(x_s, D(x0, s), atol=1e-6)
    path.clear()
    noise = torch.randn(SHAPE)
    out = ddpm.sample(lambda x, t: 0.5 * x, noise, schedule=schedules.linear(100), sampler="ddim", steps=4,
                      trajectory=path)  # fmt: skip
    assert len(path) == 5 and torch.equal(path[0], noise) and torch.equal(path[-1], out)
