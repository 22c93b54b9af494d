"""Cold diffusion on held-out digits (Bansal et al. 2022): restoration and generation, the paper's table.

Two cold models (`configs/cold-blur-digits.toml`, `configs/cold-mask-digits.toml`, shortened by `--steps` and
narrowed by `--width`, 16 instead of 32) train through the project's own loop on digits with a 20% hold-out
(1,438 training images; the 359 held-out ones are never seen, by the models or by the judge). For each
degradation the table compares

- restoration of the held-out images degraded to level T: the degraded input itself, direct restoration
  R(x_T, T) (`cold_direct`), Algorithm 1 (`cold_naive`) and Algorithm 2 (`cold`), by Fréchet distance in
  the features of the project's judge (a classifier trained on the same 1,438 images), RMSE and SSIM
  against the clean images;
- unconditional generation from the channel-means start (`ddpm.degradations.start`, seeds 0 … 358), by
  Fréchet distance only.

Fréchet distances are measured against 359 training images; the floor is the distance of the held-out
images themselves to that set (what a perfect restorer would score). SSIM: Wang et al. (2004) with a
7x7 Gaussian window (sigma 1.5) on [0, 1] images, no padding.

    .venv/bin/python benchmarks/cold_diffusion.py                # 3000 steps each: ~11 minutes on one thread
    .venv/bin/python benchmarks/cold_diffusion.py --steps 1500 --width 32 --threads 2
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

import ddpm
from ddpm.config import load_config
from ddpm.data import load_dataset, register_builtin, split_factory
from ddpm.data.builtin import digits
from ddpm.degradations import start
from ddpm.evaluation import frechet_distance, judge_for_tensors
from ddpm.pipelines import PixelPipeline
from ddpm.training import train

ROOT = Path(__file__).resolve().parent.parent
HOLDOUT = 0.2
SAMPLERS = ("cold_direct", "cold_naive", "cold")
NAMES = {"degraded": "degraded input", "cold_direct": "direct R(x_T, T)", "cold_naive": "Algorithm 1",
         "cold": "Algorithm 2"}  # fmt: skip


def _bench_digits(**kw):
    return split_factory(digits, name="digits")(**{**kw, "holdout_fraction": HOLDOUT})


register_builtin("digits_holdout20", _bench_digits, replace=True)


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean SSIM per image `[N]` of images `[N, C, H, W]` in [-1, 1] (computed on [0, 1])."""
    a, b = (a.double().clamp(-1, 1) + 1) / 2, (b.double().clamp(-1, 1) + 1) / 2
    x = torch.arange(7, dtype=torch.float64) - 3
    g = torch.exp(-(x**2) / (2 * 1.5**2))
    w = torch.outer(g, g) / g.sum() ** 2
    c = a.shape[1]
    w = w.expand(c, 1, 7, 7)

    def blur(z):
        return F.conv2d(z, w, groups=c)

    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b = blur(a * a) - mu_a**2, blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.flatten(1).mean(1)


def rmse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.clamp(-1, 1) - b).flatten(1).square().mean(1).sqrt()


def train_model(name: str, steps: int, width: int, threads: int, out: Path) -> tuple[Path, float]:
    overrides = [f"run.dir={str(out)!r}", "data.dataset=digits_holdout20", f"train.steps={steps}",
                 f"train.num_threads={threads}", f"train.checkpoint_every={steps}", "train.sample_every=0",
                 f"train.warmup_steps={min(100, steps // 10)}", f"model.model_channels={width}",
                 f"model.num_head_channels={min(width, 32)}"]  # fmt: skip
    config = load_config(ROOT / "configs" / f"cold-{name}-digits.toml", overrides)
    t0 = time.perf_counter()
    run = train(config, progress=False)
    return run, time.perf_counter() - t0


@torch.no_grad()
def evaluate(run: Path, held_out: torch.Tensor, features: Callable[[torch.Tensor], torch.Tensor],
             f_ref: torch.Tensor) -> dict[str, dict]:
    """Each row's images and FD / RMSE / SSIM (restoration), and its generation FD (see the docstring)."""
    pipe = PixelPipeline.load(run, device="cpu")
    D = pipe.cold.degradation
    n = held_out.shape[0]
    x_T = D(held_out, D.levels)
    rows: dict[str, dict] = {"degraded": {"x": x_T}}
    for sampler in SAMPLERS:
        rows[sampler] = {"x": ddpm.sample(pipe.unet, x_T, degradation=D, sampler=sampler).clamp(-1, 1)}
    for r in rows.values():
        r.update(fd=frechet_distance(features(r["x"]), f_ref), rmse=float(rmse(r["x"], held_out).mean()),
                 ssim=float(ssim(r["x"], held_out).mean()))  # fmt: skip
    gens = [torch.Generator().manual_seed(i) for i in range(n)]
    bound, starts = start(D, pipe.cold.prior, tuple(held_out.shape), generator=gens)
    rows["degraded"]["gen_fd"] = frechet_distance(features(starts), f_ref)
    for sampler in SAMPLERS:
        x0 = ddpm.sample(pipe.unet, starts, degradation=bound, sampler=sampler).clamp(-1, 1)
        rows[sampler]["gen_fd"] = frechet_distance(features(x0), f_ref)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=3000, help="training steps per model (default 3000)")
    p.add_argument("--width", type=int, default=16,
                   help="model.model_channels (default 16, half the configs' 32, to fit ~15 minutes)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--degradations", nargs="+", default=["blur", "mask"], choices=["blur", "mask"])
    p.add_argument("--out", type=Path, help="run folder root (default: a temporary folder)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    train_x, train_y = load_dataset("digits_holdout20", split="train").as_tensor()
    test_x, test_y = load_dataset("digits_holdout20", split="test").as_tensor()
    judge = judge_for_tensors("digits_holdout20", train_x, train_y, test_x, test_y, num_classes=10)
    pick = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(0))[: len(test_x)]
    f_ref = judge.features(train_x[pick]).double()
    floor = frechet_distance(judge.features(test_x).double(), f_ref)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# cold diffusion on digits: {len(train_x)} training / {len(test_x)} held-out images, judge test "
          f"accuracy {judge.test_accuracy:.3f}, FD floor {floor:.2f}; {platform.machine()}, {args.threads} "
          f"thread(s), load {load:.1f}")
    out = args.out or Path(tempfile.mkdtemp(prefix="cold-bench-"))
    for name in args.degradations:
        run, seconds = train_model(name, args.steps, args.width, args.threads, out)
        rows = evaluate(run, test_x.float(), lambda x: judge.features(x).double(), f_ref)
        print(f"\n## {name}: {args.steps} steps (width {args.width}) in {seconds / 60:.1f} min ({run})\n")
        print("| | restoration FD | RMSE | SSIM | generation FD |")
        print("| --- | ---: | ---: | ---: | ---: |")
        for key, r in rows.items():
            print(f"| {NAMES[key]} | {r['fd']:.2f} | {r['rmse']:.3f} | {r['ssim']:.3f} | {r['gen_fd']:.2f} |")


if __name__ == "__main__":
    main()
