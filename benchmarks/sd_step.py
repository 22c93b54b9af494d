"""One guided SD-1.5 UNet step (random weights): ours beside diffusers' UNet2DConditionModel.

A "step" is what one image costs per sampling step with classifier-free guidance: one UNet forward on the
stacked (uncond, cond) batch of 2 latents `[2, 4, 64, 64]` (512x512 pixels) with CLIP context `[2, 77, 768]`.
Both UNets hold the same weights (ours converted to the diffusers layout) and are checked to compute the same
function before anything is timed.

    .venv/bin/python benchmarks/sd_step.py            # CPU: small size, full size, full txt2img; + GPU if any
    .venv/bin/python benchmarks/sd_step.py --gpu-only # the GPU table only
    .venv/bin/python benchmarks/sd_step.py --cpu-only

GPU modes, for ours and diffusers alike: eager fp16, eager fp16 channels_last, bf16 channels_last,
`torch.compile` (fp16, channels_last) and compiled with CUDA graphs (`mode="reduce-overhead"`: graphs
captured over static input buffers). Each cell is the median of `--iters` CUDA-event-timed calls after
warm-up. CPU phases run in child processes so each reports its own peak RSS.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

from ddpm.io.diffusers_configs import unet_config_to_diffusers
from ddpm.io.keymaps import unet_to_diffusers
from ddpm.models.unet import UNet, UNetConfig

CONTEXT = 768


def build_ours(cfg: UNetConfig, seed: int = 0) -> UNet:
    """Our UNet with small random weights in every tensor (SD's zero-init output layers would hide work)."""
    with torch.device("meta"):
        unet = UNet(cfg)
    unet = unet.to_empty(device="cpu")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in unet.parameters():
            fan_in = p[0].numel() if p.ndim >= 2 else 1
            p.copy_(torch.randn(p.shape, generator=g) * (fan_in**-0.5 if p.ndim >= 2 else 0.02))
            if p.ndim == 1:
                p.add_(1.0)  # norm weights near 1 (biases near 1 too: harmless for timing and equality)
    return unet.eval().requires_grad_(False)


def build_theirs(ours: UNet) -> torch.nn.Module:
    """diffusers' UNet2DConditionModel holding our weights."""
    import diffusers

    config = {k: v for k, v in unet_config_to_diffusers(ours.config).items() if not k.startswith("_")}
    with torch.device("meta"):
        theirs = diffusers.UNet2DConditionModel(**config)
    state = unet_to_diffusers(ours.state_dict(), ours.config)
    theirs.load_state_dict(state, strict=True, assign=True)
    return theirs.eval().requires_grad_(False)


def step_inputs(size: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, size // 8, size // 8, generator=g).to(device, dtype)
    t = torch.tensor([801, 801], device=device)
    ctx = torch.randn(2, 77, CONTEXT, generator=g).to(device, dtype)
    return x, t, ctx


def callers(ours: torch.nn.Module, theirs: torch.nn.Module) -> dict[str, Callable[..., torch.Tensor]]:
    return {
        "ours": lambda x, t, c: ours(x, t, context=c),
        "diffusers": lambda x, t, c: theirs(x, t, encoder_hidden_states=c, return_dict=False)[0],
    }


def check_same(fns: dict[str, Callable], size: int, device: torch.device, dtype: torch.dtype) -> float:
    x, t, c = step_inputs(size, device, dtype)
    with torch.no_grad():
        a, b = fns["ours"](x, t, c).float(), fns["diffusers"](x, t, c).float()
    if not float(b.abs().mean()) > 0:
        raise RuntimeError("the reference output is all zeros; the comparison would prove nothing")
    rel = ((a - b).norm() / b.norm()).item()
    if dtype == torch.float32 and not rel < 1e-4:
        raise RuntimeError(f"our UNet and diffusers' disagree: relative difference {rel:.2e} (limit 1e-4)")
    if not rel < 2e-2:  # half precision: rounding differs with the order of operations; flag, don't stop
        print(f"  warning: {dtype} outputs differ by {rel:.2e} (relative)", flush=True)
    return rel


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def machine_cpu() -> str:
    load = os.getloadavg()[0]
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, load {load:.1f}"


# ----------------------------------------------------------------------------------------------- CPU
def cpu_step(size: int, rounds: int) -> dict[str, Any]:
    """Both UNets at `size` pixels on the CPU, fp32, in rounds that alternate the order; median seconds."""
    cfg = UNetConfig.sd15()
    ours = build_ours(cfg)
    theirs = build_theirs(ours)
    fns = callers(ours, theirs)
    rel = check_same(fns, 128, torch.device("cpu"), torch.float32)
    x, t, c = step_inputs(size, torch.device("cpu"), torch.float32)
    times: dict[str, list[float]] = {"ours": [], "diffusers": []}
    with torch.no_grad():
        for r in range(rounds):  # alternate who goes first: the first call of a round pays cold caches
            order = list(fns.items())
            for name, fn in order if r % 2 == 0 else order[::-1]:
                start = time.perf_counter()
                fn(x, t, c)
                times[name].append(time.perf_counter() - start)
    return {
        "size": size,
        "rel_diff": rel,
        "peak_rss_gib": peak_rss_gib(),
        **{k: statistics.median(v) for k, v in times.items()},
    }


def cpu_txt2img() -> dict[str, Any]:
    """One 512x512 txt2img step through the whole pipeline (text encoder, UNet, VAE) at SD-1.5 size."""
    from ddpm.io.sd import StableDiffusionModels
    from ddpm.io.sd_layout import SchedulerConfig
    from ddpm.models.autoencoder import AutoencoderKL, AutoencoderKLConfig
    from ddpm.models.text_encoder import CLIPTextConfig, CLIPTextModel
    from ddpm.pipelines import SamplingOptions
    from ddpm.pipelines.stable_diffusion import StableDiffusion
    from ddpm.text import CLIPTokenizer

    torch.manual_seed(0)
    unet = build_ours(UNetConfig.sd15())
    vae = AutoencoderKL(AutoencoderKLConfig.sd15())
    text = CLIPTextModel(CLIPTextConfig())
    params = sum(p.numel() for m in (unet, vae, text) for p in m.parameters())
    models = StableDiffusionModels(
        unet, vae, text, CLIPTokenizer.from_bpe_file(), SchedulerConfig(), "random", "random"
    )
    pipe = StableDiffusion(models, name="sd15-random")
    start = time.perf_counter()
    options = SamplingOptions(steps=1, seed=0)
    out = pipe.txt2img("a photograph of an astronaut riding a horse", height=512, width=512, options=options)
    seconds = time.perf_counter() - start
    finite = bool(torch.isfinite(out.images).all())
    return {
        "seconds": seconds,
        "params": params,
        "shape": list(out.images.shape),
        "finite": finite,
        "peak_rss_gib": peak_rss_gib(),
    }


# ----------------------------------------------------------------------------------------------- GPU
def gpu_time(fn: Callable[[], Any], iters: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def gpu_table(iters: int) -> list[dict[str, Any]]:
    """ms per guided step at 512x512 for each (implementation, mode) on the first CUDA device."""
    device = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    cfg = UNetConfig.sd15()
    base = build_ours(cfg)
    modes = [  # (mode name, dtype, channels_last, compile mode or None)
        ("eager fp16", torch.float16, False, None),
        ("eager fp16 channels_last", torch.float16, True, None),
        ("eager bf16 channels_last", torch.bfloat16, True, None),
        ("compile fp16 channels_last", torch.float16, True, "default"),
        ("compile + CUDA graphs fp16", torch.float16, True, "reduce-overhead"),
    ]
    rows = []
    for mode, dtype, cl, compile_mode in modes:
        ours = copy.deepcopy(base)
        theirs = build_theirs(ours)
        fmt = torch.channels_last if cl else torch.contiguous_format
        ours = ours.to(device, dtype, memory_format=fmt)
        theirs = theirs.to(device, dtype, memory_format=fmt)
        fns = callers(ours, theirs)
        rel = check_same(fns, 512, device, dtype)
        x, t, c = step_inputs(512, device, dtype)
        if cl:
            x = x.contiguous(memory_format=torch.channels_last)
        for name, fn in fns.items():
            torch._dynamo.reset()
            call = torch.compile(fn, mode=compile_mode, fullgraph=False) if compile_mode else fn
            torch.cuda.reset_peak_memory_stats()

            def run(call=call, x=x, t=t, c=c) -> Any:
                with torch.no_grad():
                    out = call(x, t, c)
                return out

            ms = gpu_time(run, iters, warmup=5 if compile_mode else 3)
            rows.append(
                {
                    "mode": mode,
                    "impl": name,
                    "ms": ms,
                    "rel_diff": rel,
                    "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
                }
            )
            print(f"  {mode:30s} {name:10s} {ms:8.2f} ms", flush=True)
        del ours, theirs, fns
        torch.cuda.empty_cache()
    return rows


# ---------------------------------------------------------------------------------------------- main
def child(phase: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [
        sys.executable,
        __file__,
        "--phase",
        phase,
        "--rounds",
        str(args.rounds),
        "--small",
        str(args.small),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"phase {phase} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cpu-only", action="store_true")
    p.add_argument("--gpu-only", action="store_true")
    p.add_argument("--skip-full", action="store_true", help="CPU: only the small size")
    p.add_argument("--small", type=int, default=128, help="CPU small-size pixels (default 128)")
    p.add_argument("--rounds", type=int, default=3, help="CPU rounds at the small size (default 3)")
    p.add_argument("--iters", type=int, default=30, help="GPU timed calls per cell (default 30)")
    p.add_argument("--phase", choices=("small", "full", "txt2img"), help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.phase == "small":
        print(json.dumps(cpu_step(args.small, args.rounds)))
        return
    if args.phase == "full":
        print(json.dumps(cpu_step(512, 2)))
        return
    if args.phase == "txt2img":
        print(json.dumps(cpu_txt2img()))
        return

    print(f"torch {torch.__version__}")
    if not args.gpu_only:
        print(f"CPU: {machine_cpu()}")
        print("| phase | ours | diffusers | ours/diffusers | rel. diff | peak RSS |")
        print("| --- | --- | --- | --- | --- | --- |")
        phases = ["small"] + ([] if args.skip_full else ["full"])
        for phase in phases:
            r = child(phase, args)
            print(
                f"| UNet step, batch 2, {r['size']}x{r['size']}, fp32 | {r['ours']:.3f} s | "
                f"{r['diffusers']:.3f} s | {r['ours'] / r['diffusers']:.2f} | {r['rel_diff']:.1e} | "
                f"{r['peak_rss_gib']:.2f} GiB (both, weights shared) |",
                flush=True,
            )
        if not args.skip_full:
            r = child("txt2img", args)
            print(
                f"| full txt2img, 1 step, 512x512, fp32 ({r['params'] / 1e6:.0f}M params) | "
                f"{r['seconds']:.1f} s | – | – | finite={r['finite']} | {r['peak_rss_gib']:.2f} GiB |"
            )
    if not args.cpu_only:
        if not torch.cuda.is_available():
            print("GPU: none on this machine; GPU numbers not measured")
            return
        print(
            f"GPU: {torch.cuda.get_device_name()}, 512x512, batch 2 (one guided step), median of {args.iters}"
        )
        rows = gpu_table(args.iters)
        print("| mode | ours ms | diffusers ms | ours/diffusers | rel. diff | peak GiB (both models) |")
        print("| --- | --- | --- | --- | --- | --- |")
        for mode in dict.fromkeys(r["mode"] for r in rows):
            o = next(r for r in rows if r["mode"] == mode and r["impl"] == "ours")
            d = next(r for r in rows if r["mode"] == mode and r["impl"] == "diffusers")
            print(
                f"| {mode} | {o['ms']:.2f} | {d['ms']:.2f} | {o['ms'] / d['ms']:.2f} | {o['rel_diff']:.1e} | "
                f"{o['peak_gib']:.2f} |"
            )
        best = min(r["ms"] for r in rows if r["impl"] == "diffusers")
        ours_best = min(r["ms"] for r in rows if r["impl"] == "ours")
        print(f"best: ours {ours_best:.2f} ms, diffusers {best:.2f} ms (goal: ours <= 6 ms and ahead)")


if __name__ == "__main__":
    main()
