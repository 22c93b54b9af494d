"""Text-to-image on `shapes`: what a training step costs, and what a trained model scores.

python benchmarks/text_train_speed.py speed [--threads 1 2] [--batch 32] [--configs NAME …]
    seconds per optimizer step (UNet + text encoder, forward, backward, AdamW) of candidate UNets at
    32x32, at each thread count; the table prints the machine's load average, since on a shared machine
    it decides the numbers more than the model does.
python benchmarks/text_train_speed.py alignment MODEL [--guidance 1 3 5] [--num 100] [--steps 20]
    per-attribute prompt alignment (`ddpm.evaluation.alignment`) of a text-to-image model on the seen and
    held-out prompt suites, one table per guidance scale, and the same as JSON with --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from ddpm.models.small_text_encoder import SmallTextConfig, SmallTextEncoder
from ddpm.models.unet import UNet, UNetConfig

# Candidate UNets (cross-attention wherever there is attention; context width 64).
CANDIDATES: dict[str, dict] = {
    "c32-124-attn8": dict(model_channels=32, channel_mult=(1, 2, 4), attention_resolutions=(4,)),
    "c32-124-attn16+8": dict(model_channels=32, channel_mult=(1, 2, 4), attention_resolutions=(2, 4)),
    "c16-148-attn8": dict(model_channels=16, channel_mult=(1, 4, 8), attention_resolutions=(4,)),
    "c16-124-attn8": dict(model_channels=16, channel_mult=(1, 2, 4), attention_resolutions=(4,)),
}


def step_seconds(unet_kw: dict, *, batch: int, threads: int, repeats: int = 4) -> float:
    """Mean wall time of one training step of `unet_kw` at 32x32 (after two warm-up steps)."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = UNetConfig(**unet_kw, num_res_blocks=1, num_head_channels=32, norm_groups=8, context_dim=64,
                     channels_last=True)  # fmt: skip
    unet = UNet(cfg)
    enc = SmallTextEncoder(SmallTextConfig(vocab_size=30, width=64, heads=4, mlp_ratio=2))
    opt = torch.optim.AdamW([*unet.parameters(), *enc.parameters()], lr=1e-4)
    x = torch.randn(batch, 3, 32, 32)
    t = torch.randint(0, 1000, (batch,))
    ids = torch.randint(0, 30, (batch, 16))

    def step() -> None:
        out = unet(x, t, context=enc(ids))
        (out - x).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()

    step()
    step()
    t0 = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - t0) / repeats


def speed(args: argparse.Namespace) -> None:
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}"
    )
    print(f"{'config':<20} {'params':>7} {'threads':>7} {'s/step':>7} {'img/s':>6} {'load':>5}")
    for name in args.configs:
        n = sum(p.numel() for p in UNet(UNetConfig(**CANDIDATES[name], num_res_blocks=1, num_head_channels=32,
                                                   norm_groups=8, context_dim=64)).parameters())  # fmt: skip
        for threads in args.threads:
            s = step_seconds(CANDIDATES[name], batch=args.batch, threads=threads)
            load = os.getloadavg()[0]
            print(
                f"{name:<20} {n / 1e6:>6.2f}M {threads:>7} {s:>7.2f} {args.batch / s:>6.1f} {load:>5.1f}",
                flush=True,
            )


def alignment(args: argparse.Namespace) -> None:
    from ddpm.evaluation.alignment import evaluate_generator
    from ddpm.pipelines.text import TextToImagePipeline

    torch.set_num_threads(args.threads)
    pipe = TextToImagePipeline.load(args.model, device="cpu")
    results = {}
    for g in args.guidance:
        t0 = time.perf_counter()

        def generate(prompts: list[str], seed: int, g: float = g) -> torch.Tensor:
            images, _ = pipe.generate(
                len(prompts), prompts=prompts, seed=seed, guidance_scale=g, sampler=args.sampler,
                steps=args.steps, batch_size=args.batch,
            )  # fmt: skip
            return images

        report = evaluate_generator(generate, num=args.num, seed=args.seed, batch_size=args.batch)
        print(f"\nguidance {g:g}  ({args.sampler}, {args.steps} steps, {args.num} prompts per suite, "
              f"{time.perf_counter() - t0:.0f} s)\n{report.table()}", flush=True)  # fmt: skip
        results[str(g)] = report.to_dict()
    if args.out:
        Path(args.out).write_text(json.dumps({"model": str(args.model), "results": results}, indent=1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("speed")
    s.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    s.add_argument("--batch", type=int, default=32)
    s.add_argument("--configs", nargs="+", default=list(CANDIDATES), choices=list(CANDIDATES))
    s.set_defaults(func=speed)
    a = sub.add_parser("alignment")
    a.add_argument("model")
    a.add_argument("--guidance", type=float, nargs="+", default=[1.0, 3.0, 5.0])
    a.add_argument("--num", type=int, default=100, help="prompts per suite (seen, held-out)")
    a.add_argument("--steps", type=int, default=20)
    a.add_argument("--sampler", default="dpmpp_2m")
    a.add_argument("--batch", type=int, default=50)
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--threads", type=int, default=1)
    a.add_argument("--out")
    a.set_defaults(func=alignment)
    args = p.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
