"""Training steps per second of our UNet beside diffusers' `UNet2DModel` with the same architecture.

Both models get the same batch, the same eps-prediction loss and an AdamW step, timed in alternating
rounds in one process (so a busy machine slows both alike); the table shows the median of the rounds, by
the wall clock and by CPU time.
The diffusers model is built from our config by `diffusers_kwargs`; its weights are copied into ours and
both are checked to compute the same function before timing. On CPU two small configs are timed in both
memory formats; on CUDA also the DDPM CIFAR-10 config at batch 128 under bf16 autocast and channels_last
(add --compile to time `torch.compile` of ours too).

    .venv/bin/python benchmarks/train_throughput.py                # CPU table (+ CUDA if available)
    .venv/bin/python benchmarks/train_throughput.py --threads 1 --rounds 5
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from ddpm.io.keymaps import diffusers_unet_state_dict
from ddpm.models import UNet, UNetConfig


def diffusers_kwargs(cfg: UNetConfig) -> dict[str, Any]:
    """`UNet2DModel(**kwargs)` with the architecture of our pixel-space `cfg` (no cross-attention)."""
    if cfg.context_dim is not None or cfg.resblock_updown or not cfg.conv_resample:
        raise ValueError("only pixel UNets with conv resampling have a UNet2DModel twin")
    levels = len(cfg.channel_mult)
    attn = [2**i in cfg.attention_resolutions for i in range(levels)]
    if cfg.num_head_channels is None and cfg.num_heads != 1:
        raise ValueError("UNet2DModel fixes the head width; use num_head_channels (or num_heads=1)")
    return dict(
        sample_size=None,
        in_channels=cfg.in_channels,
        out_channels=cfg.output_channels,
        block_out_channels=tuple(cfg.model_channels * m for m in cfg.channel_mult),
        layers_per_block=cfg.num_res_blocks,
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
        attention_head_dim=cfg.num_head_channels,  # None: one head per layer
        norm_num_groups=cfg.norm_groups,
        attn_norm_num_groups=cfg.norm_groups,
        norm_eps=cfg.norm_eps,
        dropout=cfg.dropout,
        resnet_time_scale_shift="scale_shift" if cfg.use_scale_shift_norm else "default",
        flip_sin_to_cos=cfg.flip_sin_to_cos,
        freq_shift=cfg.freq_shift,
        num_class_embeds=None if cfg.num_classes is None else cfg.num_classes + 1,
    )


def check_same_function(ours, theirs, cfg: UNetConfig, image_size: int, device: torch.device) -> None:
    """Raise unless both models give the same output (fp32, eval mode) on a random input."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, cfg.in_channels, image_size, image_size, generator=g).to(device)
    t = torch.tensor([3, 700], device=device)
    y = None if cfg.num_classes is None else torch.tensor([0, cfg.num_classes], device=device)
    ours.eval(), theirs.eval()
    with torch.no_grad():
        diff = (ours(x, t, class_labels=y) - theirs(x, t, class_labels=y).sample).abs().max().item()
    ours.train(), theirs.train()
    if diff > 1e-3:
        raise RuntimeError(f"our UNet and its diffusers twin disagree by {diff:.2e}")


def make_step(model: torch.nn.Module, call: Callable, batch: dict[str, torch.Tensor], *, autocast: bool):
    """One training step: eps-prediction MSE at random t, backward, AdamW."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    device = batch["x0"].device

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            out = call(model, batch["x_t"], batch["t"], batch.get("y"))
            loss = F.mse_loss(out.float(), batch["eps"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def timed(step: Callable[[], None], n: int, device: torch.device) -> tuple[float, float]:
    """Steps per second over `n` steps: by the wall clock, and by this process's CPU time (on a shared
    machine the second is the steadier yardstick for single-threaded CPU runs; NaN on CUDA)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(n):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return n / wall, (n / cpu if device.type == "cpu" else float("nan"))


def compare(
    name: str, cfg: UNetConfig, *, image_size: int, batch_size: int, device: torch.device, autocast: bool,
    channels_last: bool, compile_ours: bool, steps: int, rounds: int, warmup: int,
    compile_mode: str | None = None,
) -> list[dict[str, Any]]:
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    ours = UNet(cfg.replace(channels_last=channels_last)).to(device).train()
    theirs = UNet2DModel(**diffusers_kwargs(cfg)).to(device).train()
    if channels_last:
        theirs = theirs.to(memory_format=torch.channels_last)
    n_ours = sum(p.numel() for p in ours.parameters())
    n_theirs = sum(p.numel() for p in theirs.parameters())
    if n_ours != n_theirs:
        raise RuntimeError(f"architectures differ: {n_ours} vs {n_theirs} parameters")
    # Same weights in both, and proof that they compute the same function.
    weights = diffusers_unet_state_dict(theirs.state_dict(), cfg)
    if "label_emb.weight" in weights:
        # The twin's table already has our K+1 rows (null class included); drop the row the converter adds.
        weights["label_emb.weight"] = weights["label_emb.weight"][:-1]
    ours.load_state_dict(weights)
    check_same_function(ours, theirs, cfg, image_size, device)

    g = torch.Generator().manual_seed(0)
    c, s = cfg.in_channels, image_size
    batch = {
        "x0": torch.randn(batch_size, c, s, s, generator=g),
        "x_t": torch.randn(batch_size, c, s, s, generator=g),
        "eps": torch.randn(batch_size, cfg.output_channels, s, s, generator=g),
        "t": torch.randint(0, 1000, (batch_size,), generator=g),
    }
    if cfg.num_classes is not None:
        batch["y"] = torch.randint(0, cfg.num_classes + 1, (batch_size,), generator=g)
    batch = {k: v.to(device) for k, v in batch.items()}
    if channels_last:
        batch["x_t"] = batch["x_t"].contiguous(memory_format=torch.channels_last)

    def call_ours(m, x, t, y):
        return m(x, t, class_labels=y)

    def call_theirs(m, x, t, y):
        return m(x, t, class_labels=y).sample

    runs = {"ours": make_step(ours, call_ours, batch, autocast=autocast),
            "diffusers": make_step(theirs, call_theirs, batch, autocast=autocast)}
    if compile_ours:
        compiled = torch.compile(ours, mode=compile_mode)
        runs["ours+compile"] = make_step(compiled, call_ours, batch, autocast=autocast)
    rates: dict[str, list[tuple[float, float]]] = {k: [] for k in runs}
    for step in runs.values():
        for _ in range(warmup):
            step()
    for _ in range(rounds):
        for k, step in runs.items():
            rates[k].append(timed(step, steps, device))

    def med(k: str, i: int) -> float:
        return statistics.median(r[i] for r in rates[k])

    rows = []
    for k in runs:
        if k == "diffusers":
            continue
        rows.append(dict(config=name, model=k, params=n_ours, ours=med(k, 0), diffusers=med("diffusers", 0),
                         ratio=med(k, 0) / med("diffusers", 0), cpu_ratio=med(k, 1) / med("diffusers", 1),
                         ms_cpu_ours=1000 / med(k, 1), ms_cpu_diffusers=1000 / med("diffusers", 1)))
    return rows


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, load {load:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    parser.add_argument("--steps", type=int, default=5, help="steps per timed round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64, help="CPU batch size")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile(ours)")
    parser.add_argument("--compile-mode", default=None, help="torch.compile mode, e.g. max-autotune")
    parser.add_argument("--cpu-only", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    rows = []
    cpu = torch.device("cpu")
    cpu_configs = [
        ("small digits 16x16 (class)", UNetConfig.small(in_channels=1, num_classes=10), 16),
        ("small 32x32 rgb", UNetConfig.small(in_channels=3, channel_mult=(1, 2, 2, 2)), 32),
    ]
    for name, cfg, size in cpu_configs:
        for channels_last in (False, True):
            for r in compare(name, cfg, image_size=size, batch_size=args.batch, device=cpu, autocast=False,
                             channels_last=channels_last, compile_ours=args.compile, steps=args.steps,
                             rounds=args.rounds, warmup=args.warmup):
                layout = "channels_last" if channels_last else "NCHW"
                rows.append({**r, "machine": machine(cpu), "batch": args.batch, "dtype": f"fp32 {layout}"})
    if torch.cuda.is_available() and not args.cpu_only:
        gpu = torch.device("cuda")
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        for r in compare("DDPM CIFAR-10 32x32", UNetConfig.ddpm_cifar10(), image_size=32, batch_size=128,
                         device=gpu, autocast=True, channels_last=True, compile_ours=args.compile,
                         steps=max(args.steps, 20), rounds=args.rounds, warmup=max(args.warmup, 5),
                         compile_mode=args.compile_mode):
            rows.append({**r, "machine": machine(gpu), "batch": 128, "dtype": "bf16 autocast channels_last"})

    header = ["machine", "config", "params", "batch", "precision", "model", "ours it/s", "diffusers it/s",
              "ratio", "CPU ms/step ours / diffusers", "ratio by CPU time"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print(f"| {r['machine']} | {r['config']} | {r['params'] / 1e6:.2f}M | {r['batch']} | {r['dtype']} | "
              f"{r['model']} | {r['ours']:.2f} | {r['diffusers']:.2f} | {r['ratio']:.2f}x | "
              f"{r['ms_cpu_ours']:.0f} / {r['ms_cpu_diffusers']:.0f} | {r['cpu_ratio']:.2f}x |")


if __name__ == "__main__":
    main()
