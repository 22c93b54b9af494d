"""No host synchronisation inside the sampling loop: the number of times a sampler reads a tensor's value
back to Python (`.item()`, `bool()`, `float()`, `.tolist()`, …) must not grow with the number of steps. On a
GPU each such read waits for every queued kernel, so a read per step would serialise the loop; here the
reads are counted on the CPU through a TorchFunctionMode, for every registered sampler."""

import pytest
import torch
from torch.overrides import TorchFunctionMode

import ddpm
from ddpm import schedules
from ddpm.degradations import Blur
from ddpm.sampling.api import COLD_SAMPLERS, SAMPLERS

READS = {"item", "__bool__", "__float__", "__int__", "__index__", "tolist", "numpy"}


class HostReads(TorchFunctionMode):
    """Counts tensor -> Python value reads made while active."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in READS:
            self.count += 1
        return func(*args, **(kwargs or {}))


def reads(sampler: str, steps: int) -> int:
    noise = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    generators = [torch.Generator().manual_seed(i) for i in range(2)]
    if sampler in COLD_SAMPLERS:
        kwargs = dict(degradation=Blur(levels=20), steps=steps)
        model = lambda x, t: 0.9 * x  # noqa: E731  (a restorer)
    else:
        kwargs = dict(schedule=schedules.linear(1000), steps=steps, generator=generators)
        model = lambda x, t: 0.1 * x  # noqa: E731  (an eps model)
    with HostReads() as counter:
        out = ddpm.sample(model, noise, sampler=sampler, **kwargs)
    assert torch.isfinite(out).all()
    return counter.count


def test_the_counter_sees_a_read_per_step():
    """The probe itself: a model that calls .item() each step is caught."""

    def chatty(x, t):
        float(x.abs().max())
        return 0.1 * x

    noise = torch.randn(1, 1, 4, 4)
    with HostReads() as few:
        ddpm.sample(chatty, noise, schedule=schedules.linear(1000), sampler="ddim", steps=3)
    with HostReads() as many:
        ddpm.sample(chatty, noise, schedule=schedules.linear(1000), sampler="ddim", steps=9)
    assert many.count - few.count == 6


@pytest.mark.parametrize("sampler", sorted(set(SAMPLERS) - {"cold_direct"}))  # that one has no loop
def test_host_reads_do_not_grow_with_the_number_of_steps(sampler):
    few, many = reads(sampler, 4), reads(sampler, 12)
    assert many == few, f"{sampler}: {few} host reads at 4 steps, {many} at 12 (a read inside the loop)"
