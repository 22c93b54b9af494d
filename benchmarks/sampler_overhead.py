"""Per-step overhead of each sampler beside diffusers' scheduler loop, with a trivial model.

The model is `0.1 * x`, so the time is the sampler's own work: grid construction, coefficient math and
the tensor updates per step. Ours is one `ddpm.sample` call; the peer is the loop its pipelines run
(set_timesteps, then scale_model_input, model, step per timestep). Both are timed in alternating rounds
in one process (a busy machine slows both alike); the table shows the best and the median round, and the
ratio ours / diffusers of the best rounds (below 1: ours is faster). Stochastic samplers draw their
noise from a CPU generator on both sides.

    .venv/bin/python benchmarks/sampler_overhead.py                   # CPU (+ CUDA if available)
    .venv/bin/python benchmarks/sampler_overhead.py --device cuda --steps 50 --rounds 7
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch

import ddpm
from ddpm import schedules

SD_CONFIG = dict(
    num_train_timesteps=1000,
    beta_schedule="scaled_linear",
    beta_start=0.00085,
    beta_end=0.012,
    timestep_spacing="trailing",
)


def peers() -> dict[str, tuple[str, Callable[[], object], dict]]:
    """Our sampler name -> (label, diffusers scheduler factory, step kwargs)."""
    import diffusers as d

    return {
        "ddpm": ("DDPMScheduler", lambda: d.DDPMScheduler(clip_sample=False, **SD_CONFIG), {}),
        "ddim": ("DDIMScheduler", lambda: d.DDIMScheduler(clip_sample=False, **SD_CONFIG), {}),
        "plms": ("PNDMScheduler(skip_prk)", lambda: d.PNDMScheduler(skip_prk_steps=True, **SD_CONFIG), {}),
        "euler": ("EulerDiscreteScheduler", lambda: d.EulerDiscreteScheduler(**SD_CONFIG), {}),
        "euler_a": ("EulerAncestralDiscrete", lambda: d.EulerAncestralDiscreteScheduler(**SD_CONFIG), {}),
        "heun": ("HeunDiscreteScheduler", lambda: d.HeunDiscreteScheduler(**SD_CONFIG), {}),
        "dpmpp_2m": ("DPMSolverMultistep", lambda: d.DPMSolverMultistepScheduler(**SD_CONFIG), {}),
        "dpmpp_2m karras": (
            "DPMSolverMultistep karras",
            lambda: d.DPMSolverMultistepScheduler(use_karras_sigmas=True, **SD_CONFIG),
            {},
        ),
    }


def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return 0.1 * x


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ours(name: str, noise: torch.Tensor, steps: int) -> float:
    sampler, karras = name.split(" ")[0], name.endswith("karras")
    stochastic = sampler in ("ddpm", "euler_a")
    start = time.perf_counter()
    ddpm.sample(
        model,
        noise,
        schedule=SCHEDULE,
        sampler=sampler,
        steps=steps,
        karras=karras,
        generator=torch.Generator().manual_seed(0) if stochastic else None,
    )
    sync(noise.device)
    return time.perf_counter() - start


def time_peer(make: Callable[[], object], step_kw: dict, noise: torch.Tensor, steps: int) -> float:
    scheduler = make()
    gen = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    scheduler.set_timesteps(steps, device=noise.device)
    x = noise * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        out = model(scheduler.scale_model_input(x, t), t)
        kw = dict(step_kw, generator=gen) if "generator" in scheduler.step.__code__.co_varnames else step_kw
        x = scheduler.step(out, t, x, **kw).prev_sample
    sync(noise.device)
    return time.perf_counter() - start


SCHEDULE = schedules.scaled_linear(1000)


def run(device: torch.device, shape: tuple[int, ...], steps: int, rounds: int) -> None:
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(device)
    table = peers()
    rows = []
    for name, (label, make, step_kw) in table.items():
        time_ours(name, noise, steps), time_peer(make, step_kw, noise, steps)  # warm-up
        ours, theirs = [], []
        for _ in range(rounds):
            ours.append(time_ours(name, noise, steps) / steps * 1e3)
            theirs.append(time_peer(make, step_kw, noise, steps) / steps * 1e3)
        rows.append((name, label, min(ours), statistics.median(ours), min(theirs), statistics.median(theirs)))
    if device.type == "cuda":
        machine = torch.cuda.get_device_name(device)
    else:
        machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    print(f"\nsampler overhead per step on {device.type} ({machine}), torch {torch.__version__}")
    print(f"batch {list(shape)}, {steps} steps, trivial model, {rounds} alternating rounds")
    print(
        "ms/step as best / median of the rounds; ratio = ours / diffusers on the best (the least disturbed)\n"
    )
    print(f"| {'sampler':16s} | {'diffusers scheduler':26s} | ours ms/step  | diffusers ms/step | ratio |")
    print(f"| {'-' * 16} | {'-' * 26} | ------------- | ----------------- | ----- |")
    for name, label, o_min, o_med, p_min, p_med in rows:
        ours_col, peer_col = f"{o_min:.3f} / {o_med:.3f}", f"{p_min:.3f} / {p_med:.3f}"
        print(f"| {name:16s} | {label:26s} | {ours_col:13s} | {peer_col:17s} | {o_min / p_min:5.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--threads", type=int, default=min(4, os.cpu_count() or 1))
    parser.add_argument("--shape", type=int, nargs="+", default=[4, 4, 8, 8])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import diffusers

    diffusers.utils.logging.set_verbosity_error()
    devices = []
    if args.device in ("cpu", "all"):
        devices.append(torch.device("cpu"))
    if args.device in ("cuda", "all") and torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    for device in devices:
        run(device, tuple(args.shape), args.steps, args.rounds)


if __name__ == "__main__":
    main()
