"""Training our own small KL autoencoders, and measuring them on held-out real photos.

| symbol   | code          | meaning                                                                  |
| -------- | ------------- | ------------------------------------------------------------------------ |
| x, x_hat | `x`, `x_hat`  | images `[B, 3, H, W]` in [-1, 1] and their reconstructions from z ~ q(z|x) |
| L_rec    | `reconstruction` | sum over pixels of (x - x_hat)^2 (L2) or |x - x_hat| (L1), mean over B |
| L_KL     | `kl`          | KL(q(z|x) || N(0, I)) summed over latent elements, mean over B           |
| lambda   | `kl_weight`   | L = L_rec + lambda L_KL; 1e-6 as in LDM's kl-f8 (Rombach et al. 2022, App. G) |

LDM trains with L1 plus a perceptual (LPIPS) term and a patch discriminator; this objective has neither
of the latter, so reconstructions are blurrier than Stable Diffusion's at equal PSNR. Without them L2 is
the default: it optimises PSNR directly. On the benchmark's held-out crops (`benchmarks/vae_psnr.py` data,
a 32-64-64-channel f=4 model, Adam 1e-3, 600 steps of 16) L2 reached 20.8 dB where L1 reached 17.9 dB.

The real photos it is measured on are the built-in dataset "photos" (`ddpm.data.photos`). PSNR is on the
[0, 1] scale: 10 log10(1 / MSE).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor

from .autoencoder import AutoencoderKL

__all__ = [
    "VAELoss",
    "vae_loss",
    "psnr",
    "evaluate_psnr",
    "estimate_scaling_factor",
    "train_autoencoder",
]

class VAELoss(NamedTuple):
    """The training objective and its parts (all scalars, means over the batch)."""

    loss: Tensor
    reconstruction: Tensor
    kl: Tensor


def vae_loss(
    model: AutoencoderKL,
    x: Tensor,
    *,
    kl_weight: float = 1e-6,
    reconstruction: str = "l2",
    generator: torch.Generator | None = None,
) -> VAELoss:
    """L_rec + lambda KL(q(z|x) || N(0, I)) for images `[B, 3, H, W]` in [-1, 1], x_hat decoded from a draw
    z ~ q(z|x) (the reparameterised ELBO, Kingma & Welling 2014 Eq. 10, with LDM's weighting)."""
    if reconstruction not in ("l1", "l2"):
        raise ValueError(f"reconstruction must be 'l1' or 'l2'; got {reconstruction!r}")
    if kl_weight < 0:
        raise ValueError(f"kl_weight must be >= 0; got {kl_weight}")
    x_hat, posterior = model(x, sample=True, generator=generator)
    err = x_hat.float() - x.float()
    per_image = (err.abs() if reconstruction == "l1" else err.pow(2)).flatten(1).sum(1)
    rec = per_image.mean()
    kl = posterior.kl().float().mean()
    return VAELoss(rec + kl_weight * kl, rec, kl)


def psnr(x: Tensor, y: Tensor) -> Tensor:
    """Peak signal-to-noise ratio in dB per image `[B]` between `[B, C, H, W]` images in [-1, 1], measured
    on the [0, 1] scale after clipping `y` to the valid range: 10 log10(1 / MSE)."""
    if x.shape != y.shape:
        raise ValueError(f"psnr needs images of the same shape; got {tuple(x.shape)} and {tuple(y.shape)}")
    a = (x.float().clamp(-1, 1) + 1) / 2
    b = (y.float().clamp(-1, 1) + 1) / 2
    mse = (a - b).pow(2).flatten(1).mean(1).clamp_min(1e-12)
    return -10.0 * torch.log10(mse)


# ---------------------------------------------------------------------------------------------- measure
@torch.no_grad()
def evaluate_psnr(model: AutoencoderKL, images: Tensor, *, batch_size: int = 64) -> float:
    """Mean PSNR (dB) of reconstructions decoded from the posterior mean of held-out `images`."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    scores = []
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size].to(device)
        x_hat, _ = model(x, sample=False)
        scores.append(psnr(x, x_hat).cpu())
    model.train(was_training)
    return float(torch.cat(scores).mean())


@torch.no_grad()
def estimate_scaling_factor(model: AutoencoderKL, images: Tensor, *, batch_size: int = 64) -> float:
    """1 / std of raw latents z ~ q(z|x) over `images`: the factor that gives diffusion unit-variance
    latents (LDM §4.3.2 and App. D.1; 0.18215 for SD 1.x). Store it in `model.config.scaling_factor`."""
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(0)
    zs = [model.encode_posterior(images[i:i + batch_size].to(device)).sample(generator=gen).float().cpu()
          for i in range(0, len(images), batch_size)]
    return float(1.0 / torch.cat(zs).std())


# ------------------------------------------------------------------------------------------------ train
def train_autoencoder(
    model: AutoencoderKL,
    images: Tensor,
    *,
    steps: int,
    batch_size: int = 32,
    lr: float = 2e-3,
    kl_weight: float = 1e-6,
    reconstruction: str = "l2",
    seed: int = 0,
    flip: bool = True,
    eval_images: Tensor | None = None,
    eval_every: int = 0,
    callback: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Train `model` in place on `images [N, 3, H, W]` in [-1, 1] with `vae_loss` and Adam, a cosine learning
    rate after a short warmup; returns one record per evaluation: step, loss, per-pixel L1 or L2 error,
    KL, and `psnr` on `eval_images` (posterior mean) when given.

    Batches are drawn without replacement from a per-epoch permutation of `generator(seed)`, with random
    horizontal flips; the same seed and initial weights give the same run on the CPU.
    """
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be positive; got steps={steps}, batch_size={batch_size}")
    if images.ndim != 4 or images.shape[1] != model.config.in_channels or len(images) == 0:
        raise ValueError(f"images must be [N, {model.config.in_channels}, H, W] with N > 0; "
                         f"got {tuple(images.shape)}")
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.99))
    warmup = max(1, min(100, steps // 20))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    )
    pixels = images[0].numel()
    history: list[dict[str, Any]] = []
    order, pos = torch.randperm(len(images), generator=gen), 0
    model.train()
    for step in range(1, steps + 1):
        if pos + batch_size > len(order):
            order, pos = torch.randperm(len(images), generator=gen), 0
        idx = order[pos:pos + batch_size]
        pos += batch_size
        x = images[idx]
        if flip:
            mask = torch.rand(len(x), generator=gen) < 0.5
            x = torch.where(mask[:, None, None, None], x.flip(-1), x)
        parts = vae_loss(model, x.to(device), kl_weight=kl_weight, reconstruction=reconstruction,
                         generator=gen)
        opt.zero_grad(set_to_none=True)
        parts.loss.backward()
        opt.step()
        sched.step()
        if step == steps or (eval_every and step % eval_every == 0):
            record: dict[str, Any] = {
                "step": step,
                "loss": float(parts.loss.detach()),
                f"{reconstruction}_per_pixel": float(parts.reconstruction.detach()) / pixels,
                "kl": float(parts.kl.detach()),
                "lr": sched.get_last_lr()[0],
            }
            if eval_images is not None:
                record["psnr"] = evaluate_psnr(model, eval_images)
            history.append(record)
            if callback is not None:
                callback(record)
    return history

