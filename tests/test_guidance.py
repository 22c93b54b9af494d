"""Classifier-free guidance: one batched forward, out_0 + s (out_c - out_0); s = 1 is the cond model alone."""

from __future__ import annotations

import pytest
import torch

import ddpm
from ddpm import schedules
from ddpm.guidance import check_conditions, classifier_free_guidance

B, C = 4, 3


class CountingModel:
    """out = tanh(x) + 0.1 * label + context.mean; records the batch of each call."""

    def __init__(self, learned_variance=False):
        self.batches, self.learned_variance = [], learned_variance

    def __call__(self, x, t, *, label=None, context=None, flag=None):
        self.batches.append(x.shape[0])
        out = torch.tanh(x) + 0.001 * t.to(x.dtype).reshape(-1, 1, 1, 1)
        if label is not None:
            out = out + 0.1 * label.to(x.dtype).reshape(-1, 1, 1, 1)
        if context is not None:
            out = out + context.mean(dim=(1, 2)).reshape(-1, 1, 1, 1)
        if self.learned_variance:
            out = torch.cat([out, torch.sin(x) + (0 if label is None else label.reshape(-1, 1, 1, 1))], dim=1)
        return out


X = torch.randn(B, C, 4, 4)
T = torch.full((B,), 500)
COND = {"label": torch.tensor([1, 2, 3, 4])}
UNCOND = {"label": torch.full((B,), 10)}


def test_scale_one_is_the_conditional_model_alone():
    m = CountingModel()
    out = classifier_free_guidance(m, guidance_scale=1.0, cond=COND, uncond=UNCOND)(X, T)
    assert m.batches == [B]
    assert torch.equal(out, CountingModel()(X, T, **COND))


def test_one_batched_forward_and_the_guidance_formula():
    m = CountingModel()
    s = 7.5
    out = classifier_free_guidance(m, guidance_scale=s, cond=COND, uncond=UNCOND)(X, T)
    assert m.batches == [2 * B]
    c, u = CountingModel()(X, T, **COND), CountingModel()(X, T, **UNCOND)
    torch.testing.assert_close(out, u + s * (c - u))


def test_scale_zero_is_the_unconditional_model():
    m = CountingModel()
    out = classifier_free_guidance(m, guidance_scale=0.0, cond=COND, uncond=UNCOND)(X, T)
    assert m.batches == [B] and torch.equal(out, CountingModel()(X, T, **UNCOND))


def test_negative_conditioning_through_uncond():
    """A negative prompt is an uncond: guidance pushes away from it (out = neg + s (pos - neg))."""
    pos, neg = torch.randn(B, 5, 8), torch.randn(B, 5, 8)
    out = classifier_free_guidance(
        CountingModel(), guidance_scale=4.0, cond={"context": pos}, uncond={"context": neg}
    )
    c, n = CountingModel()(X, T, context=pos), CountingModel()(X, T, context=neg)
    torch.testing.assert_close(out(X, T), n + 4.0 * (c - n))


def test_learned_variance_half_comes_from_the_conditional_branch():
    m = CountingModel(learned_variance=True)
    out = classifier_free_guidance(m, guidance_scale=3.0, cond=COND, uncond=UNCOND)(X, T)
    c, u = CountingModel(True)(X, T, **COND), CountingModel(True)(X, T, **UNCOND)
    torch.testing.assert_close(out[:, :C], u[:, :C] + 3.0 * (c[:, :C] - u[:, :C]))
    torch.testing.assert_close(out[:, C:], c[:, C:])


def test_unbatched_values_pass_through_when_equal():
    m = CountingModel()
    fn = classifier_free_guidance(
        m, guidance_scale=2.0, cond=COND | {"flag": True}, uncond=UNCOND | {"flag": True}
    )
    fn(X, T)
    with pytest.raises(ValueError, match="differ but are not batched tensors"):
        classifier_free_guidance(
            m, guidance_scale=2.0, cond=COND | {"flag": True}, uncond=UNCOND | {"flag": False}
        )


@pytest.mark.parametrize(
    "cond, uncond, scale, message",
    [
        (COND, None, 2.0, "needs uncond="),
        (COND, {"context": torch.zeros(B, 1, 1)}, 2.0, "same keys"),
        ({"label": torch.arange(3)}, None, 1.0, "has batch 3 but the noise has batch 4"),
        (COND, {"label": torch.arange(5)}, 2.0, "uncond\\['label'\\] has batch 5"),
        ([1, 2], None, 1.0, "must be a dict"),
    ],
)
def test_bad_conditions(cond, uncond, scale, message):
    with pytest.raises(ValueError, match=message):
        classifier_free_guidance(
            CountingModel(), guidance_scale=scale, cond=cond, uncond=uncond, batch_size=B
        )


def test_check_conditions_accepts_unbatched_and_none():
    check_conditions(None, None, B)
    check_conditions({"label": torch.arange(B), "scale": torch.tensor(2.0), "flag": None}, None, B)


def test_sample_makes_one_forward_per_step_and_skips_uncond_at_scale_one():
    schedule = schedules.linear(1000)
    noise = torch.randn(B, C, 4, 4)
    m = CountingModel()
    ddpm.sample(m, noise, schedule=schedule, sampler="ddim", steps=5, cond=COND, uncond=UNCOND)
    assert m.batches == [B] * 5
    m = CountingModel()
    guided = ddpm.sample(
        m, noise, schedule=schedule, sampler="ddim", steps=5, guidance_scale=5.0, cond=COND, uncond=UNCOND
    )
    assert m.batches == [2 * B] * 5

    def combined(x, t):  # the guided model written out by hand
        c, u = CountingModel()(x, t, **COND), CountingModel()(x, t, **UNCOND)
        return u + 5.0 * (c - u)

    torch.testing.assert_close(
        guided, ddpm.sample(combined, noise, schedule=schedule, sampler="ddim", steps=5)
    )
