"""What one Imagic step costs on the full-size SD 1.x UNet (random weights, 860M parameters) at 512 px:
latents `[1, 4, 64, 64]`, CLIP context `[1, 77, 768]`, float32 on the CPU (or the GPU if there is one).

- stage A (embedding): forward + backward to the context only (the UNet frozen), one Adam step on e;
- stage B (LoRA, rank 4 on every attention projection): forward + backward, Adam on the adapters;
- stage C (sampling): one guided step, a forward on the stacked (uncond, cond) batch of 2, no gradients.

Each is timed over `--iters` calls after one warm-up; the peak resident memory is read after each phase
(the process's high-water mark, so it only grows). Full fine-tuning is not run: its weights, gradients and
two Adam moments alone are 4 x 3.44 GB in float32. The per-stage time of an edit is this step time times the
stage's steps (Imagic's published SD settings: 500 embedding, 1,000 fine-tuning, 50 sampling steps).

    .venv/bin/python benchmarks/editing_sd_step.py --threads 1 --iters 2
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import time

import torch

from ddpm.models.unet import UNet, UNetConfig
from ddpm.nn.lora import add_lora, lora_parameters


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def timed(fn, iters: int) -> float:
    fn()  # warm-up
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / iters


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--iters", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    unet = UNet(UNetConfig.sd15()).to(dev).eval().requires_grad_(False)
    n = sum(p.numel() for p in unet.parameters())
    x = torch.randn(1, 4, 64, 64, device=dev)
    ctx = torch.randn(1, 77, 768, device=dev)
    t = torch.tensor([500], device=dev)
    rows = []

    @torch.no_grad()
    def sample_step():
        unet(x.expand(2, -1, -1, -1), t.expand(2), context=ctx.expand(2, -1, -1))

    rows.append(("C: sampling (guided, batch 2)", timed(sample_step, args.iters), peak_gb(), 0))

    e = ctx.clone().requires_grad_(True)
    opt_e = torch.optim.Adam([e], lr=1e-3)

    def embedding_step():
        loss = unet(x, t, context=e).pow(2).mean()
        opt_e.zero_grad()
        loss.backward()
        opt_e.step()

    rows.append(("A: embedding (backward to e)", timed(embedding_step, args.iters), peak_gb(), e.numel()))

    add_lora(unet, rank=4)
    params = lora_parameters(unet)
    opt = torch.optim.Adam(params, lr=1e-4)

    def lora_step():
        loss = unet(x, t, context=ctx).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    count = sum(p.numel() for p in params)
    rows.append(("B: LoRA rank 4 fine-tuning", timed(lora_step, args.iters), peak_gb(), count))
    machine = (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {args.threads} thread(s)"
    )
    print(f"# full-size SD 1.x UNet ({n / 1e6:.1f}M parameters, random weights), 512 px, float32 on {dev} "
          f"({machine}), torch {torch.__version__}, mean of {args.iters} after 1 warm-up")  # fmt: skip
    print("| stage step | seconds | peak RSS so far (GB) | trained values |")
    print("| --- | --- | --- | --- |")
    for name, sec, mem, k in rows:
        print(f"| {name} | {sec:.2f} | {mem:.1f} | {k:,} |")
    a, b, c = rows[1][1], rows[2][1], rows[0][1]
    print(
        f"# a 512 px Imagic edit at the published settings: A 500 x {a:.1f} s = {500 * a / 60:.0f} min, "
        f"B 1000 x {b:.1f} s = {1000 * b / 60:.0f} min, C 50 steps x {c:.1f} s = {50 * c / 60:.1f} min "
        "per image"
    )


if __name__ == "__main__":
    main()
