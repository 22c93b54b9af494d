"""The metric registry and the built-in metrics: Fréchet distance beside its floor, class accuracy of
conditional samples judged by the project's classifier, and bits/dim on the held-out split.

A metric is one `Metric` entry: a name, a function of the shared `EvalContext`, and a test that says why
it does not apply to a model (or None). Adding a metric is one `register_metric(Metric(...))` call.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from .context import EvalContext
from .frechet import frechet_distance
from .reference import reference_draws

__all__ = ["Metric", "MetricResult", "METRICS", "register_metric"]


@dataclass
class MetricResult:
    """One metric's headline `value`, a one-line `note` putting it in context, and the numbers behind it."""

    name: str
    value: float
    note: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "note": self.note, **self.details}


@dataclass(frozen=True)
class Metric:
    """A named metric: `compute(ctx)` and `unavailable(ctx)` -> None, or the reason it does not apply;
    `reads_samples`: whether it scores the generated samples (a sampler sweep skips those that do not)."""

    name: str
    compute: Callable[[EvalContext], MetricResult]
    description: str
    unavailable: Callable[[EvalContext], str | None] = lambda ctx: None
    reads_samples: bool = True


METRICS: dict[str, Metric] = {}


def register_metric(metric: Metric) -> None:
    """Add `metric` to the registry under `metric.name` (a new name, letters, digits and '_')."""
    if not metric.name.replace("_", "").isalnum():
        raise ValueError(f"metric names use letters, digits and '_', got {metric.name!r}")
    if metric.name in METRICS:
        raise ValueError(f"a metric named {metric.name!r} is already registered")
    METRICS[metric.name] = metric


# ----------------------------------------------------------------------------------------------
# Fréchet distance
# ----------------------------------------------------------------------------------------------


def _fd(ctx: EvalContext) -> MetricResult:
    samples, labels = ctx.samples()
    split = ctx.options.fd_split
    real_x, real_y = ctx.real(split)
    if labels is not None and real_y is None:
        labels = None  # an unlabelled reference cannot be stratified
    draws = reference_draws(
        len(samples),
        real_y,
        sample_labels=labels,
        num_real=len(real_x),
        repeats=ctx.options.fd_repeats,
        seed=ctx.options.seed,
    )
    f_samples = ctx.features("samples", samples)
    f_real = ctx.features(f"real:{split}", real_x)
    fds, floors = [], []
    for d in draws:
        fds.append(frechet_distance(f_samples[d.sample_idx], f_real[d.a]))
        floors.append(frechet_distance(f_real[d.b], f_real[d.a]))
    fd, floor = sum(fds) / len(fds), sum(floors) / len(floors)
    n = len(draws[0].sample_idx)
    ratio = fd / floor if floor > 0 else math.inf
    strat = "class-matched " if labels is not None else ""
    note = (
        f"floor {floor:.4g} (two disjoint {strat}real sets of {n}, {split} split), ratio {ratio:.2f}; "
        f"mean of {len(draws)} draws"
    )
    details = {
        "floor": floor,
        "ratio": ratio,
        "num": n,
        "repeats": len(draws),
        "split": split,
        "stratified": bool(strat),
        "features": ctx.feature_name,
        "per_draw": fds,
        "floor_per_draw": floors,
    }
    return MetricResult("fd", fd, note, details)


def _fd_unavailable(ctx: EvalContext) -> str | None:
    if ctx.conditioning not in ("none", "class"):
        return f"fd compares generated and real images; {ctx.conditioning}-conditional sampling needs prompts"
    if not ctx.has_extractor and ctx.real("train")[1] is None:
        return (
            f"fd uses the features of a judge trained on class labels, and {ctx.dataset_name!r} has none; "
            "pass a feature_extractor to EvalContext"
        )
    return None


# ----------------------------------------------------------------------------------------------
# Class accuracy
# ----------------------------------------------------------------------------------------------


def _accuracy(ctx: EvalContext) -> MetricResult:
    samples, labels = ctx.samples()
    judge = ctx.judge()
    pred = judge.predict(samples)
    hit = (pred == labels).float()
    k = int(labels.max()) + 1
    per_class = [float(hit[labels == c].mean()) if (labels == c).any() else None for c in range(k)]
    note = f"judge's accuracy on {judge.info['num_test']} real test images: {judge.test_accuracy:.3f}"
    details = {
        "num": len(samples),
        "judge_test_accuracy": judge.test_accuracy,
        "per_class": per_class,
        "judge": judge.info["key"],
    }
    return MetricResult("accuracy", float(hit.mean()), note, details)


def _accuracy_unavailable(ctx: EvalContext) -> str | None:
    if ctx.conditioning != "class":
        return "accuracy scores class-conditional samples; this model is " + (
            "unconditional" if ctx.conditioning == "none" else f"{ctx.conditioning}-conditional"
        )
    return None


# ----------------------------------------------------------------------------------------------
# Bits per dimension
# ----------------------------------------------------------------------------------------------

# The fixed reverse variance used in the bound for models that do not learn one. beta_t ("fixed_large"), as
# both DDPM reference codes use for likelihoods: the true p(x_{t-1} | x_t) is wider than beta~_t because x0 is
# uncertain given x_t. Measured on 8-bit Gaussian data (s=0.25) with the exact reverse mean, T=1000: the
# bound exceeds the true NLL by 0.09-0.13 bits/dim with fixed_large and by 0.65-0.76 with fixed_small.
BPD_VARIANCE = "fixed_large"
_BPD_CHUNK, _BPD_T_BATCH = 8, 64  # 512 inputs per model call


def _bpd(ctx: EvalContext) -> MetricResult:
    from ..objectives import bits_per_dim

    x, y = ctx.real("test")
    n = min(ctx.options.bpd_num, len(x))
    # A seeded subset, so a small bpd_num still spans the classes of a class-sorted split.
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(ctx.options.seed))[:n].sort().values
    # The bound is defined for 8-bit data: put the images on the grid k / 127.5 - 1 a PNG of them would hold.
    x = ((x[idx] + 1) * 127.5).round().clamp(0, 255) / 127.5 - 1
    y = y[idx] if y is not None else None
    diffusion = ctx.meta.diffusion
    learned = diffusion.learned_variance
    pipe = ctx.pipe
    gen = torch.Generator().manual_seed(ctx.options.seed)
    conditional = ctx.conditioning == "class" and y is not None
    values = []
    # Fixed chunks of images (each model call sees _BPD_CHUNK images at _BPD_T_BATCH timesteps), so the
    # noise drawn from `gen`, and thus the number, does not depend on --batch-size.
    chunks = range(0, n, _BPD_CHUNK)
    if ctx.options.progress:
        from tqdm import tqdm

        chunks = tqdm(
            chunks, desc=f"bits/dim ({n} images x {pipe.schedule.num_timesteps} steps)", leave=False
        )
    with torch.no_grad():
        for i in chunks:
            xb = x[i : i + _BPD_CHUNK].to(pipe.device)
            cond = {"class_labels": y[i : i + _BPD_CHUNK].to(pipe.device)} if conditional else None
            bpd = bits_per_dim(
                pipe.unet, xb, schedule=pipe.schedule, prediction=diffusion.prediction,
                learned_variance=learned, cond=cond, generator=gen, t_batch=_BPD_T_BATCH,
                variance=BPD_VARIANCE, clip_x0=True,
            )  # fmt: skip
            values.append(bpd.detach().double().cpu())
    v = torch.cat(values)
    mean = float(v.mean())
    sem = float(v.std() / math.sqrt(len(v))) if len(v) > 1 else float("nan")
    what = "given the true class" if conditional else "unconditional"
    note = f"± {sem:.3f} (s.e.), {n} held-out test images, {what}"
    details = {
        "num": n, "stderr": sem, "split": "test", "conditional": conditional,
        "variance": "learned" if learned else BPD_VARIANCE, "clip_x0": True,
    }  # fmt: skip
    return MetricResult("bpd", mean, note, details)


def _bpd_unavailable(ctx: EvalContext) -> str | None:
    if ctx.conditioning not in ("none", "class"):
        return f"bpd of {ctx.conditioning}-conditional models needs the held-out captions"
    if ctx.meta.diffusion is not None and ctx.meta.diffusion.cold:
        return "bpd is the bound of Gaussian diffusion; a cold-diffusion model has none"
    return None


register_metric(
    Metric("accuracy", _accuracy, "class accuracy of conditional samples (judge)", _accuracy_unavailable)
)
register_metric(
    Metric("fd", _fd, "Fréchet distance in judge features, beside its real-data floor", _fd_unavailable)
)
register_metric(Metric("bpd", _bpd, "bits/dim (variational bound) on held-out real images", _bpd_unavailable,
                       reads_samples=False))  # fmt: skip
