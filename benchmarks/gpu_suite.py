"""Every GPU figure of the performance issue in one run: ours beside diffusers, same process, same weights.

Rows (full size on CUDA; `--smoke` runs the same code on the CPU with tiny models in seconds, so the script
is exercised by the test suite between GPU runs):

- the card's ceilings: dense bf16 matmul TFLOP/s and device-to-device copy GB/s;
- DDPM CIFAR-10 UNet (35.75M) training step, bf16 autocast, batch 128: images/s, MFU;
- the same UNet, one sampling forward, bf16 weights, batch 256: images/s;
- SD-1.5 UNet fp16 step at 64x64 latents, batch 2 (one guided image) and batch 16: ms, MFU;
- SD VAE decode of one 512x512 image, fp16: ms.

Each cell: the same weights copied across (ours -> diffusers by our key maps), a check that both compute the
same function (fp32, before anything is timed), warm-up excluded, the median of `--iters` timed calls (CUDA
events on a GPU, perf_counter on the CPU). FLOPs per call are counted once with
`torch.utils.flop_counter`, so MFU = achieved FLOP/s over the measured matmul ceiling. Compiled variants
(`torch.compile`, and CUDA graphs via mode="reduce-overhead") run for both libraries where `--compile`.

    .venv/bin/python benchmarks/gpu_suite.py             # on a CUDA machine: the full table (< 8 min)
    .venv/bin/python benchmarks/gpu_suite.py --no-compile
    .venv/bin/python benchmarks/gpu_suite.py --smoke     # CPU, tiny sizes, a few seconds
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ddpm.io.diffusers_configs import vae_config_to_diffusers  # noqa: E402
from ddpm.io.keymaps import diffusers_unet_state_dict, vae_to_diffusers  # noqa: E402
from ddpm.models import UNet, UNetConfig  # noqa: E402
from ddpm.models.autoencoder import AutoencoderKL, AutoencoderKLConfig  # noqa: E402
from sd_step import build_ours, build_theirs  # noqa: E402  (a sibling benchmark: one weight copier)
from train_throughput import check_same_function, diffusers_kwargs  # noqa: E402


@dataclass
class Sizes:
    """Every size the suite uses: the issue's figures, or tiny ones for `--smoke`."""

    cifar: UNetConfig
    cifar_px: int
    train_batch: int
    sample_batch: int
    sd: UNetConfig
    sd_latent: int
    sd_batches: tuple[int, ...]
    context: int
    vae: AutoencoderKLConfig
    vae_px: int
    matmul_n: int
    copy_mib: int
    half: torch.dtype  # SD's precision
    low: torch.dtype  # the CIFAR model's precision


FULL = dict(
    cifar=UNetConfig.ddpm_cifar10(dropout=0.0), cifar_px=32, train_batch=128, sample_batch=256,
    sd=UNetConfig.sd15(), sd_latent=64, sd_batches=(2, 16), context=768,
    vae=AutoencoderKLConfig.sd15(), vae_px=512, matmul_n=8192, copy_mib=1024,
    half=torch.float16, low=torch.bfloat16,
)
SMOKE = dict(
    cifar=UNetConfig.small(in_channels=3, channel_mult=(1, 2)), cifar_px=16, train_batch=4, sample_batch=4,
    sd=UNetConfig.sd15(model_channels=32, channel_mult=(1, 2), attention_resolutions=(1,), num_heads=2,
                       context_dim=32),
    sd_latent=8, sd_batches=(2,), context=32,
    vae=AutoencoderKLConfig.tiny(), vae_px=32, matmul_n=256, copy_mib=16,
    half=torch.float32, low=torch.bfloat16,
)


# ------------------------------------------------------------------------------------------- timing
def median_ms(fn: Callable[[], Any], device: torch.device, iters: int, warmup: int) -> float:
    """Median milliseconds of `fn()` after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize()
        for _ in range(iters):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            torch.cuda.synchronize()
            times.append(a.elapsed_time(b))
    else:
        for _ in range(iters):
            start = time.perf_counter()
            fn()
            times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


def flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call, counted by torch (matmuls and convolutions; 2 per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


def ceilings(device: torch.device, s: Sizes, iters: int) -> dict[str, float]:
    """Dense bf16 matmul TFLOP/s and copy GB/s (read + write) measured on `device`."""
    n = s.matmul_n
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    ms = median_ms(lambda: a @ b, device, iters, warmup=3)
    src = torch.empty(s.copy_mib * 2**20, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    copy_ms = median_ms(lambda: dst.copy_(src), device, iters, warmup=3)
    return {"tflops": 2 * n**3 / ms / 1e9, "copy_gbs": 2 * src.numel() / copy_ms / 1e6}


# ------------------------------------------------------------------------------------------- models
def cifar_pair(cfg: UNetConfig, px: int, device: torch.device) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Our pixel UNet and diffusers' UNet2DModel with the same weights, checked equal in fp32."""
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    theirs = UNet2DModel(**diffusers_kwargs(cfg)).to(device)
    ours = UNet(cfg).to(device)
    ours.load_state_dict(diffusers_unet_state_dict(theirs.state_dict(), cfg))
    check_same_function(ours, theirs, cfg, px, device)
    return ours, theirs


def vae_pair(cfg: AutoencoderKLConfig, device: torch.device) -> tuple[torch.nn.Module, torch.nn.Module]:
    import diffusers

    torch.manual_seed(0)
    ours = AutoencoderKL(cfg).eval()
    theirs = diffusers.AutoencoderKL.from_config(vae_config_to_diffusers(cfg))
    theirs.load_state_dict(vae_to_diffusers(ours.state_dict()))
    return ours.to(device).requires_grad_(False), theirs.eval().to(device).requires_grad_(False)


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float(), b.float()
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def require_same(name: str, a: torch.Tensor, b: torch.Tensor, limit: float = 1e-4) -> float:
    rel = relative(a, b)
    if not rel < limit:
        raise RuntimeError(f"{name}: ours and diffusers disagree by {rel:.2e} relative (limit {limit})")
    return rel


# ------------------------------------------------------------------------------------------- rows
def train_row(s: Sizes, device: torch.device, iters: int, compile_: bool) -> list[dict[str, Any]]:
    ours, theirs = cifar_pair(s.cifar, s.cifar_px, device)
    g = torch.Generator().manual_seed(0)
    B, C, P = s.train_batch, s.cifar.in_channels, s.cifar_px
    x = torch.randn(B, C, P, P, generator=g).to(device)
    eps = torch.randn(B, C, P, P, generator=g).to(device)
    t = torch.randint(0, 1000, (B,), generator=g).to(device)
    fused = device.type == "cuda"

    def stepper(model: torch.nn.Module, call: Callable) -> Callable[[], None]:
        model = model.train().to(memory_format=torch.channels_last) if fused else model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused or None)
        xin = x.contiguous(memory_format=torch.channels_last) if fused else x

        def step() -> None:
            with torch.autocast(device.type, dtype=s.low):
                loss = F.mse_loss(call(model, xin, t).float(), eps)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return step

    fwd = flops(lambda: ours(x[:1], t[:1]))
    runs = {"ours": (ours, lambda m, a, b: m(a, b)), "diffusers": (theirs, lambda m, a, b: m(a, b).sample)}
    rows = []
    for impl, (model, call) in runs.items():
        variants = [("eager", model)] + ([("compiled", torch.compile(model))] if compile_ else [])
        for mode, m in variants:
            ms = median_ms(stepper(m, call), device, iters, warmup=5 if mode == "compiled" else 2)
            rows.append(dict(row=f"CIFAR-10 UNet training, {dtype_name(s.low)}, batch {B}", impl=impl,
                             mode=mode, ms=ms, images_s=1000 * B / ms, flop=3 * fwd * B))
    return rows


def sample_row(s: Sizes, device: torch.device, iters: int) -> list[dict[str, Any]]:
    ours, theirs = cifar_pair(s.cifar, s.cifar_px, device)
    B, P = s.sample_batch, s.cifar_px
    x = torch.randn(B, s.cifar.in_channels, P, P, generator=torch.Generator().manual_seed(2)).to(device)
    t = torch.full((B,), 500, device=device)
    fwd = flops(lambda: ours.eval()(x[:1], t[:1]))
    rows = []
    xl = x.to(s.low)
    pairs = (("ours", ours, lambda m: m(xl, t)), ("diffusers", theirs, lambda m: m(xl, t).sample))
    for impl, model, call in pairs:
        model = model.eval().to(s.low).requires_grad_(False)

        def run(model=model, call=call) -> Any:
            with torch.no_grad():
                return call(model)

        ms = median_ms(run, device, iters, warmup=2)
        rows.append(dict(row=f"CIFAR-10 UNet sampling step, {dtype_name(s.low)}, batch {B}", impl=impl,
                         mode="eager", ms=ms, images_s=1000 * B / ms, flop=fwd * B))
    return rows


def sd_rows(s: Sizes, device: torch.device, iters: int, compile_: bool) -> list[dict[str, Any]]:
    base = build_ours(s.sd)
    theirs32 = build_theirs(base)
    g = torch.Generator().manual_seed(1)
    rows = []
    cl = device.type == "cuda"
    for B in s.sd_batches:
        x = torch.randn(B, 4, s.sd_latent, s.sd_latent, generator=g)
        t = torch.full((B,), 801)
        ctx = torch.randn(B, 77, s.context, generator=g)
        with torch.no_grad():  # equality in fp32 on the CPU, once per batch size
            require_same(f"SD UNet batch {B}", base(x, t, context=ctx),
                         theirs32(x, t, encoder_hidden_states=ctx).sample)
        ours = copy.deepcopy(base).to(device, s.half)
        theirs = copy.deepcopy(theirs32).to(device, s.half)
        if cl:
            ours = ours.to(memory_format=torch.channels_last)
            theirs = theirs.to(memory_format=torch.channels_last)
        xd = x.to(device, s.half)
        xd = xd.contiguous(memory_format=torch.channels_last) if cl else xd
        td, cd = t.to(device), ctx.to(device, s.half)
        calls = {"ours": lambda o=ours, x=xd, t=td, c=cd: o(x, t, context=c),
                 "diffusers": lambda d=theirs, x=xd, t=td, c=cd: d(x, t, encoder_hidden_states=c,
                                                                   return_dict=False)[0]}
        fwd = flops(calls["ours"])
        modes = [("eager", None)] + ([("compiled", "default"), ("compiled + CUDA graphs", "reduce-overhead")]
                                     if compile_ else [])
        for mode, cmode in modes:
            for impl, fn in calls.items():
                torch._dynamo.reset()
                call = torch.compile(fn, mode=cmode) if cmode else fn

                def run(call=call) -> Any:
                    with torch.no_grad():
                        return call()

                ms = median_ms(run, device, iters, warmup=5 if cmode else 2)
                rows.append(dict(row=f"SD-1.5 UNet step, {dtype_name(s.half)}, batch {B}", impl=impl,
                                 mode=mode, ms=ms, images_s=1000 * B / ms, flop=fwd))
        del ours, theirs
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def vae_row(s: Sizes, device: torch.device, iters: int) -> list[dict[str, Any]]:
    ours, theirs = vae_pair(s.vae, torch.device("cpu"))
    f = s.vae.downsampling_factor
    g = torch.Generator().manual_seed(3)
    z = torch.randn(1, s.vae.latent_channels, s.vae_px // f, s.vae_px // f, generator=g)
    with torch.no_grad():
        require_same("VAE decode", ours.decode_raw(z), theirs.decode(z).sample)
    ours, theirs = ours.to(device, s.half), theirs.to(device, s.half)
    zd = z.to(device, s.half)
    fwd = flops(lambda: ours.decode_raw(zd))
    rows = []
    for impl, fn in (("ours", lambda: ours.decode_raw(zd)), ("diffusers", lambda: theirs.decode(zd).sample)):
        def run(fn=fn) -> Any:
            with torch.no_grad():
                return fn()

        ms = median_ms(run, device, iters, warmup=2)
        rows.append(dict(row=f"SD VAE decode {s.vae_px}x{s.vae_px}, {dtype_name(s.half)}", impl=impl,
                         mode="eager", ms=ms, images_s=1000 / ms, flop=fwd))
    return rows


# ------------------------------------------------------------------------------------------- report
def dtype_name(dtype: torch.dtype) -> str:
    return {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}[dtype]


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    return f"{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def table(rows: list[dict[str, Any]], peak_tflops: float) -> str:
    """One line per (row, mode): ours, diffusers, diffusers/ours time ratio (>1: ours faster), MFU."""
    out = ["| figure | mode | ours ms | diffusers ms | speed-up over diffusers | ours img/s | ours MFU |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
    keys = list(dict.fromkeys((r["row"], r["mode"]) for r in rows))
    for key in keys:
        cell = {r["impl"]: r for r in rows if (r["row"], r["mode"]) == key}
        o, d = cell.get("ours"), cell.get("diffusers")
        mfu = o["flop"] / (o["ms"] / 1000) / (peak_tflops * 1e12)
        out.append(f"| {key[0]} | {key[1]} | {o['ms']:.2f} | {d['ms']:.2f} | {d['ms'] / o['ms']:.2f}x | "
                   f"{o['images_s']:,.0f} | {100 * mfu:.1f}% |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="CPU, tiny sizes: checks the script in seconds")
    p.add_argument("--iters", type=int, default=None, help="timed calls per cell (default 20; smoke 2)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile / CUDA-graph rows")
    p.add_argument("--only", nargs="*", choices=("train", "sample", "sd", "vae"), default=None)
    args = p.parse_args(argv)
    if not args.smoke and not torch.cuda.is_available():
        print("no CUDA device here: nothing measured (run with --smoke to exercise the script on the CPU)")
        return
    device = torch.device("cpu" if args.smoke else "cuda")
    s = Sizes(**(SMOKE if args.smoke else FULL))
    iters = args.iters or (2 if args.smoke else 20)
    compile_ = not args.no_compile and not args.smoke
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    started = time.perf_counter()
    print(f"machine: {machine(device)}", flush=True)
    peak = ceilings(device, s, iters)
    print(f"ceilings: bf16 matmul {peak['tflops']:.1f} TFLOP/s, copy {peak['copy_gbs']:.1f} GB/s", flush=True)
    only = set(args.only or ("train", "sample", "sd", "vae"))
    rows: list[dict[str, Any]] = []
    if "train" in only:
        rows += train_row(s, device, iters, compile_)
    if "sample" in only:
        rows += sample_row(s, device, iters)
    if "sd" in only:
        rows += sd_rows(s, device, iters, compile_)
    if "vae" in only:
        rows += vae_row(s, device, iters)
    print(table(rows, peak["tflops"]))
    print(f"total {time.perf_counter() - started:.0f} s; MFU against the measured bf16 matmul ceiling")


if __name__ == "__main__":
    main()
