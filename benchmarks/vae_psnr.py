"""PSNR of our own small KL autoencoder on held-out real photos after a few minutes of CPU training.

Training data: crops of the photos scikit-image ships (`TRAIN_PHOTOS`) and the 200 `lfw_subset` faces;
measurement: crops of `HELD_OUT_PHOTOS` (coffee, chelsea), never seen in training, reconstructed from the
posterior mean. Objective: L2 reconstruction + 1e-6 KL (no perceptual or adversarial term). For scale the
table also shows a plain resize baseline that keeps 3/4 as many numbers as the latent (bilinear down by f,
then back up), and whole held-out photos decoded at once and in tiles.

The number of steps is calibrated to `--minutes` from a few timed steps (printed, so `--steps N` repeats a
run exactly). One thread by default: on a shared 2-core machine torch's two OpenMP threads spin against
other jobs, and we measured 13 s per step with 2 threads against 0.18 s with 1.

    .venv/bin/python benchmarks/vae_psnr.py                       # ~3 minutes of training
    .venv/bin/python benchmarks/vae_psnr.py --minutes 10 --size 64 --threads 2
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ddpm.data.photos import HELD_OUT_PHOTOS, TRAIN_PHOTOS, face_images, load_photo, photo_crops
from ddpm.data.transforms import resize, resize_shorter_side, to_signed
from ddpm.io.vae_files import save_autoencoder_file
from ddpm.models.autoencoder import AutoencoderKL, AutoencoderKLConfig
from ddpm.training.tasks.autoencoder import estimate_scaling_factor, evaluate_psnr, psnr, vae_loss


def train_autoencoder(
    model: AutoencoderKL,
    images: Tensor,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    kl_weight: float,
    reconstruction: str,
    seed: int,
    eval_images: Tensor,
    eval_every: int,
    report: Callable[[dict[str, Any]], None],
) -> None:
    """The benchmark's fixed recipe, a plain loop rather than `ddpm train` so its numbers stay comparable:
    `vae_loss` and Adam (betas 0.9, 0.99), a cosine learning rate after a short warmup, batches without
    replacement from per-epoch permutations of one generator seeded `seed`, random horizontal flips.
    `report` gets step, loss, per-pixel error, KL, lr and held-out `psnr` every `eval_every` steps (0: at
    the end only)."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.99))
    warmup = max(1, min(100, steps // 20))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    )
    order, pos = torch.randperm(len(images), generator=gen), 0
    model.train()
    for step in range(1, steps + 1):
        if pos + batch_size > len(order):
            order, pos = torch.randperm(len(images), generator=gen), 0
        x = images[order[pos:pos + batch_size]]
        pos += batch_size
        flip = torch.rand(len(x), generator=gen) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        parts = vae_loss(model, x, kl_weight=kl_weight, reconstruction=reconstruction, generator=gen)
        opt.zero_grad(set_to_none=True)
        parts.loss.backward()
        opt.step()
        sched.step()
        if step == steps or (eval_every and step % eval_every == 0):
            report({"step": step, "loss": float(parts.loss.detach()),
                    f"{reconstruction}_per_pixel": float(parts.reconstruction.detach()) / images[0].numel(),
                    "kl": float(parts.kl.detach()), "lr": sched.get_last_lr()[0],
                    "psnr": evaluate_psnr(model, eval_images)})


def machine() -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, load {load:.1f}"


def resize_baseline(images: torch.Tensor, factor: int) -> float:
    """Mean PSNR of bilinear down by `factor` and back up (3 numbers per latent cell, vs the latent's 4)."""
    h, w = images.shape[-2:]
    small = resize(images, (h // factor, w // factor))
    return float(psnr(images, resize(small, (h, w), antialias=False)).mean())


def calibrate(config: AutoencoderKLConfig, images: torch.Tensor, batch_size: int) -> float:
    """Median seconds per training step of a throwaway model over 7 steps after 2 warm-up steps."""
    model = AutoencoderKL(config)
    opt = torch.optim.Adam(model.parameters())
    times = []
    for i in range(9):
        t = time.perf_counter()
        loss = vae_loss(model, images[i * batch_size:(i + 1) * batch_size]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    return statistics.median(times[2:])


@torch.no_grad()
def whole_photos(
    model: AutoencoderKL, *, shorter_side: int, tile: int
) -> list[tuple[str, str, float, float, float]]:
    """(name, size, PSNR whole decode, PSNR tiled decode, PSNR tiled vs whole) for each held-out photo."""
    model.eval()
    f = model.config.downsampling_factor
    rows = []
    for name in HELD_OUT_PHOTOS:
        img = to_signed(resize_shorter_side(load_photo(name), shorter_side)).clamp(-1, 1)
        h, w = img.shape[-2:]
        x = img[None, :, : h // f * f, : w // f * f]
        latents = model.encode(x)
        whole = model.decode(latents)
        tiled = model.decode(latents, tile=tile)
        rows.append((name, f"{x.shape[-1]}x{x.shape[-2]}", float(psnr(x, whole)), float(psnr(x, tiled)),
                     float(psnr(whole, tiled))))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=3.0, help="training budget (steps are calibrated)")
    parser.add_argument("--steps", type=int, default=None, help="fixed number of steps instead of --minutes")
    parser.add_argument("--config", choices=("small", "tiny"), default="small")
    parser.add_argument("--size", type=int, default=32, help="crop size in pixels")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--reconstruction", choices=("l2", "l1"), default="l2")
    parser.add_argument("--kl-weight", type=float, default=1e-6)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--tile", type=int, default=16, help="latent tile for the whole-photo decode")
    parser.add_argument("--save", default=None, help="write the trained model file here (.safetensors)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    config = getattr(AutoencoderKLConfig, args.config)()
    f = config.downsampling_factor
    train = torch.cat([photo_crops(TRAIN_PHOTOS, size=args.size), face_images(size=args.size)])
    held = photo_crops(HELD_OUT_PHOTOS, size=args.size)
    if args.steps is None:
        per_step = calibrate(config, train, args.batch_size)
        steps = max(10, int(args.minutes * 60 / per_step))
        print(f"calibration: {per_step:.3f} s per step -> {steps} steps for {args.minutes:g} min")
    else:
        steps = args.steps

    torch.manual_seed(args.seed)
    model = AutoencoderKL(config)
    params = sum(p.numel() for p in model.parameters())
    print(f"machine: {machine()}")
    print(f"model: {args.config} (f={f}, {params:,} parameters), crops {args.size}x{args.size}: "
          f"{len(train)} training (photos + faces), {len(held)} held-out ({', '.join(HELD_OUT_PHOTOS)})")
    before = evaluate_psnr(model, held)
    print(f"step {0:>6}  held-out PSNR {before:6.2f} dB")
    start = time.perf_counter()

    def report(r: dict) -> None:
        err = r[f"{args.reconstruction}_per_pixel"]
        print(f"step {r['step']:>6}  held-out PSNR {r['psnr']:6.2f} dB   {args.reconstruction}/pixel "
              f"{err:.4f}   KL {r['kl']:8.1f}   {time.perf_counter() - start:6.0f} s", flush=True)

    train_autoencoder(model, train, steps=steps, batch_size=args.batch_size, lr=args.lr,
                      kl_weight=args.kl_weight, reconstruction=args.reconstruction, seed=args.seed,
                      eval_images=held, eval_every=args.eval_every, report=report)
    minutes = (time.perf_counter() - start) / 60
    final = evaluate_psnr(model, held)
    model.config.scaling_factor = estimate_scaling_factor(model, train[:512])
    baseline = resize_baseline(held, f)

    print()
    print(f"| measure (held-out {args.size}x{args.size} crops) | PSNR dB |")
    print("| --- | --- |")
    print(f"| ours, untrained | {before:.2f} |")
    run = f"{steps} steps x {args.batch_size}, {args.reconstruction}, {minutes:.1f} min"
    print(f"| ours, trained ({run}) | {final:.2f} |")
    print(f"| bilinear down x{f} and up (3/4 of the latent's numbers) | {baseline:.2f} |")
    print()
    print(f"| whole held-out photo | size | PSNR whole decode | PSNR tiled decode (tile {args.tile}) | "
          "tiled vs whole |")
    print("| --- | --- | --- | --- | --- |")
    for name, size, a, b, c in whole_photos(model, shorter_side=256, tile=args.tile):
        print(f"| {name} | {size} | {a:.2f} | {b:.2f} | {c:.2f} |")
    print(f"\nestimated scaling_factor (1 / latent std): {model.config.scaling_factor:.4f}")
    if args.save:
        path = save_autoencoder_file(args.save, model, meta={"training": {"step": steps, "run": "vae_psnr"}})
        print(f"saved {path}")


if __name__ == "__main__":
    main()
