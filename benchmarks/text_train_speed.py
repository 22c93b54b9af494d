"""Text-to-image on `shapes`: what a training step costs, and what a trained model scores.

python benchmarks/text_train_speed.py speed [--threads 1 2] [--configs NAME …]
    one optimizer step (UNet + text encoder, forward, backward, AdamW) at 32x32 for our UNets and for the
    peer, a diffusers UNet2DConditionModel as a new user would set it up for this task (5.50M parameters,
    cross-attention at 16x16 and 8x8, batch 48); prints s/step, images/s and each design's images/s as a
    ratio to the peer's at the same thread count, beside the machine's load average (on a shared machine
    the load decides the numbers more than the model does).
python benchmarks/text_train_speed.py alignment MODEL [--guidance 1 3 5] [--num 100] [--steps 20]
    per-attribute prompt alignment (`ddpm.evaluation.alignment`) of a text-to-image model on the seen and
    held-out prompt suites, one table per guidance scale, and the same as JSON with --out.
python benchmarks/text_train_speed.py relations MODEL [--t 950 850 700] [--num 32]
    whether the model tells the four relation words apart: its mean x0 prediction from pure noise at step t
    for "a red circle <relation> a blue square", reduced to how far red outweighs blue on the left half
    (minus the right) and on the top half (minus the bottom). A model that reads the relation shows opposite
    signs for "to the left of" / "to the right of" and for "above" / "below".
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from ddpm.config import load_config
from ddpm.models.small_text_encoder import SmallTextConfig, SmallTextEncoder
from ddpm.models.unet import UNet, UNetConfig

REPO = Path(__file__).resolve().parents[1]
CONTEXT_DIM = 64
Forward = Callable[[Tensor, Tensor, Tensor], Tensor]


def _ours(model: dict) -> tuple[nn.Module, Forward]:
    unet = UNet(UNetConfig(**{**model, "context_dim": CONTEXT_DIM}))
    return unet, lambda x, t, ctx: unet(x, t, context=ctx)


def shapes_config() -> tuple[nn.Module, Forward]:
    """The UNet of configs/shapes_txt2img.toml (patches of 2, pooled text, attention at 8x8 and 4x4)."""
    model = load_config(REPO / "configs" / "shapes_txt2img.toml").model.to_dict()
    return _ours({k: v for k, v in model.items() if v is not None and k != "context_dim"})


def first_design() -> tuple[nn.Module, Forward]:
    """The first shapes UNet: full 32x32 resolution, width 16, channel_mult (1, 4, 8), attention at 8x8."""
    return _ours(dict(model_channels=16, channel_mult=(1, 4, 8), num_res_blocks=1, attention_resolutions=(4,),
                      num_head_channels=32, norm_groups=8, channels_last=True))  # fmt: skip


def peer_diffusers() -> tuple[nn.Module, Forward]:
    """diffusers' UNet2DConditionModel, 5.50M parameters, cross-attention in the 16x16 and 8x8 blocks."""
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel(
        sample_size=32, in_channels=3, out_channels=3, block_out_channels=(64, 96, 128), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=CONTEXT_DIM, attention_head_dim=8, norm_num_groups=16,
    )  # fmt: skip
    return unet, lambda x, t, ctx: unet(x, t, encoder_hidden_states=ctx).sample


# name -> (builder, batch size): the peer at the batch the new user ran, ours at the config's.
DESIGNS: dict[str, tuple[Callable[[], tuple[nn.Module, Forward]], int]] = {
    "diffusers-5.5M (peer)": (peer_diffusers, 48),
    "ddpm shapes_txt2img": (shapes_config, 32),
    "ddpm first design": (first_design, 32),
}


def step_seconds(build: Callable[[], tuple[nn.Module, Forward]], *, batch: int, threads: int,
                 repeats: int = 6) -> tuple[float, int]:  # fmt: skip
    """Mean wall time of one training step at 32x32 (after two warm-up steps), and the UNet's size."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    unet, forward = build()
    enc = SmallTextEncoder(SmallTextConfig(vocab_size=30, width=CONTEXT_DIM, heads=4, mlp_ratio=2))
    opt = torch.optim.AdamW([*unet.parameters(), *enc.parameters()], lr=1e-4)
    x = torch.randn(batch, 3, 32, 32)
    t = torch.randint(0, 1000, (batch,))
    ids = torch.randint(0, 30, (batch, 16))

    def step() -> None:
        out = forward(x, t, enc(ids))
        (out - x).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()

    step()
    step()
    t0 = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - t0) / repeats, sum(p.numel() for p in unet.parameters())


def speed(args: argparse.Namespace) -> None:
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}"
    )
    head = ("design", "params", "batch", "threads", "s/step", "img/s", "vs peer", "load")
    print(f"{head[0]:<24} " + " ".join(f"{h:>{w}}" for h, w in zip(head[1:], (7, 5, 7, 7, 6, 7, 5))))
    peer_rate: dict[int, float] = {}
    for threads in args.threads:
        for name in args.configs:
            build, batch = DESIGNS[name]
            s, n = step_seconds(build, batch=batch, threads=threads)
            rate = batch / s
            peer_rate.setdefault(threads, rate)  # the first design listed is the reference
            print(
                f"{name:<24} {n / 1e6:>6.2f}M {batch:>5} {threads:>7} {s:>7.3f} {rate:>6.1f} "
                f"{rate / peer_rate[threads]:>6.2f}x {os.getloadavg()[0]:>5.1f}",
                flush=True,
            )


def alignment(args: argparse.Namespace) -> None:
    from ddpm.evaluation.alignment import evaluate_generator
    from ddpm.pipelines import PixelPipeline, SamplingOptions

    torch.set_num_threads(args.threads)
    pipe = PixelPipeline.load(args.model, device="cpu")
    results = {}
    for g in args.guidance:
        t0 = time.perf_counter()

        def generate(prompts: list[str], seed: int, g: float = g) -> torch.Tensor:
            options = SamplingOptions(seed=seed, guidance_scale=g, sampler=args.sampler, steps=args.steps)
            images, _ = pipe.generate(len(prompts), prompts=prompts, batch_size=args.batch, options=options)
            return images

        report = evaluate_generator(generate, num=args.num, seed=args.seed, batch_size=args.batch)
        print(f"\nguidance {g:g}  ({args.sampler}, {args.steps} steps, {args.num} prompts per suite, "
              f"{time.perf_counter() - t0:.0f} s)\n{report.table()}", flush=True)  # fmt: skip
        results[str(g)] = report.to_dict()
    if args.out:
        Path(args.out).write_text(json.dumps({"model": str(args.model), "results": results}, indent=1))


def relations(args: argparse.Namespace) -> None:
    from ddpm.data.shapes import RELATIONS
    from ddpm.pipelines import PixelPipeline
    from ddpm.process import to_x0_eps

    torch.set_num_threads(args.threads)
    pipe = PixelPipeline.load(args.model, device="cpu")
    prediction = pipe.meta.diffusion.prediction
    size = pipe.image_size
    noise = torch.randn(args.num, 3, size, size, generator=torch.Generator().manual_seed(0))
    print(f"{'t':>5} {'relation':<16} {'red left-right':>15} {'red top-bottom':>15}")
    for step in args.t:
        t = torch.full((args.num,), step, dtype=torch.long)
        x_t = noise * (1 - pipe.schedule.alphas_cumprod[step]).sqrt().float()  # q(x_t | x0 = 0)
        for rel in RELATIONS:
            with torch.no_grad():
                context = pipe.encode([f"a red circle {rel} a blue square"] * args.num, warn=False)
                out = pipe.unet(x_t, t, context=context)
            x0, _ = to_x0_eps(pipe.schedule, x_t, t, out, prediction)
            red = (x0[:, 0] - x0[:, 2]).mean(0)  # [H, W], > 0 where red outweighs blue
            h = size // 2
            lr = float(red[:, :h].mean() - red[:, h:].mean())
            tb = float(red[:h].mean() - red[h:].mean())
            print(f"{step:>5} {rel:<16} {lr:>+15.3f} {tb:>+15.3f}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("speed")
    s.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    s.add_argument("--configs", nargs="+", default=list(DESIGNS), choices=list(DESIGNS),
                   help="designs to time; the first is the reference of the ratio column")
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
    r = sub.add_parser("relations")
    r.add_argument("model")
    r.add_argument("--t", type=int, nargs="+", default=[950, 850, 700])
    r.add_argument("--num", type=int, default=32, help="noise draws averaged per prompt")
    r.add_argument("--threads", type=int, default=1)
    r.set_defaults(func=relations)
    args = p.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
