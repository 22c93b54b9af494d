"""Cascaded diffusion on held-out `shapes` at 16 -> 32 px (issue 15): super-resolution with and without
noise-conditioning augmentation, and the text -> 16 px -> 32 px cascade against a one-stage 32 px model.

Five models train through the project's own loop on `shapes` training images (`--train-images` of them,
rendered once and shared), each for a budget of steps set by the options:

- the SR model of `configs/shapes-sr-16-32.toml` (levels a ~ U[0, 1], sampled at a fixed level),
- the same with `low_res.augment = "none"` (clean low-res inputs, sampled at a = 0): the ablation,
- the 16 px text base of `configs/shapes-base-16.toml`,
- the one-stage 32 px text model of `configs/shapes_txt2img.toml`, given the base's and the aug SR model's
  training time together (its steps are set from a timed calibration run: equal time, not equal steps).

Held-out: the first `--num` images of the `test` split (never trained on) and their captions. Rows:

- bicubic upsampling of their 16 px versions (`ddpm.conditioning.low_res.downsample`, antialiased bilinear),
- SR from those ground-truth 16 px versions (aug model at its default level 0.25; no-aug model at 0),
- the cascade: the base samples 16 px images from the held-out captions (guidance `--guidance`), then
  bicubic, or SR with aug at each `--aug-levels`, or the no-aug SR, upscales them,
- the one-stage 32 px model from the same captions.

Columns: Fréchet distance in the features of the project's judge (a classifier of the leading object's colour
and shape, 18 classes, trained on 32 px training images) against `--num` other held-out images, beside its
floor (the ground-truth set itself against that reference); the alignment analyser's accuracy (all
attributes right, `ddpm.evaluation.alignment`) against each image's caption; consistency, the RMSE between
downsample(output) and the 16 px input it was made from (for the cascade: the base's sample).

    .venv/bin/python benchmarks/cascade.py              # defaults: 23.9 min, one thread of a busy 2-core box
    .venv/bin/python benchmarks/cascade.py --sr-steps 3000 --base-steps 6000 --num 1000 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ddpm.conditioning.low_res import downsample
from ddpm.config import load_config
from ddpm.data import load_dataset, register_builtin
from ddpm.data.shapes import shapes_dataset
from ddpm.evaluation import alignment, frechet_distance
from ddpm.io.images import make_grid, save_png
from ddpm.pipelines import PixelPipeline, SamplingOptions
from ddpm.training import train
from shapes_judge import labels_of, leading_object_judge

ROOT = Path(__file__).resolve().parent.parent
LOW, HIGH = 16, 32
_CACHE: dict = {}


def _bench_shapes(**kw):
    """`shapes`, each (split, size, options) rendered once per process (five runs share the images)."""
    key = json.dumps(kw, sort_keys=True, default=str)
    if key not in _CACHE:
        _CACHE[key] = shapes_dataset(**kw)
    return _CACHE[key]


register_builtin("shapes_bench", _bench_shapes, replace=True)


def train_run(config: str, name: str, steps: int, args, out: Path, *extra: str) -> tuple[Path, float]:
    """Train `config` for `steps` into `out/name`. With `--reuse`, a run of the same steps and overrides
    found there (its time in `bench_time.json`) is loaded instead: train runs apart, then measure them."""
    stamp = out / name / "bench_time.json"
    key = {"config": config, "steps": steps, "extra": list(extra), "train_images": args.train_images}
    if args.reuse and stamp.is_file():
        saved = json.loads(stamp.read_text())
        if saved.get("key") == key:
            return out / name, float(saved["seconds"])
    overrides = [
        f"run.dir={str(out)!r}",
        f"run.name={name}",
        "data.dataset=shapes_bench",
        f"data.options={{num = {args.train_images}, pair_fraction = 0.9}}",
        f"train.steps={steps}",
        f"train.num_threads={args.threads}",
        f"train.checkpoint_every={steps}",
        "train.sample_every=0",
        f"train.warmup_steps={min(200, max(1, steps // 10))}",
        "train.log_every=0",
        *extra,
    ]
    cfg = load_config(ROOT / "configs" / f"{config}.toml", overrides)
    t0 = time.perf_counter()
    run = train(cfg, progress=False)
    seconds = time.perf_counter() - t0
    stamp.write_text(json.dumps({"key": key, "seconds": seconds}))
    return run, seconds


def rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.clamp(-1, 1) - b).flatten(1).square().mean(1).sqrt().mean())


def bicubic(low: torch.Tensor) -> torch.Tensor:
    return F.interpolate(low, size=(HIGH, HIGH), mode="bicubic", align_corners=False).clamp(-1, 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sr-steps", type=int, default=250, help="training steps of each SR model")
    p.add_argument("--base-steps", type=int, default=350, help="training steps of the 16 px base")
    p.add_argument("--train-images", type=int, default=8000, help="shapes training images rendered")
    p.add_argument("--num", type=int, default=500, help="held-out images (and captions) evaluated")
    p.add_argument("--guidance", type=float, default=3.0, help="guidance of the text models")
    p.add_argument("--steps", type=int, default=20, help="sampling steps of the text models")
    p.add_argument("--sr-sampling-steps", type=int, default=10, help="sampling steps of the SR stages")
    p.add_argument("--aug-levels", type=float, nargs="+", default=[0.1, 0.2, 0.3])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--clip", default="static", choices=["static", "dynamic", "none"],
                   help="x0 clipping of every stage (Imagen's dynamic thresholding greys the black "
                        "backgrounds of shapes: see the extra row)")
    p.add_argument("--one-stage-steps", type=int, default=None,
                   help="steps of the one-stage model (default: the base's and SR model's time, calibrated)")
    p.add_argument("--reuse", action="store_true",
                   help="load runs already trained in --out with the same settings instead of retraining")
    p.add_argument("--only", choices=["sr_aug", "sr_noaug", "sr_text", "base", "one_stage"], default=None,
                   help="train this one run into --out and stop (to train runs in parallel, then --reuse)")
    p.add_argument("--out", type=Path, default=None, help="folder for the runs (default: a temporary one)")
    p.add_argument("--strip", type=Path, default=ROOT / "docs" / "cascade-sr-strip.png")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args()
    if args.only is not None and args.out is None:
        p.error("--only trains into --out DIR (then run again with --out DIR --reuse)")
    if args.only == "one_stage" and args.one_stage_steps is None:
        p.error("--only one_stage needs --one-stage-steps (equal time is set from the other runs)")
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    out = args.out or Path(tempfile.mkdtemp(prefix="cascade-bench-"))

    # ------------------------------------------------------------------ training
    times: dict[str, float] = {}
    runs: dict[str, Path] = {}
    noaug = 'model.low_res={size = 16, augment = "none"}'
    text = ('data.condition="text"', "data.cond_drop_prob=0.1", "text.width=64", "text.layers=2",
            "model.context_pool=true")
    plan = {
        "sr_aug": ("shapes-sr-16-32", "sr-aug", args.sr_steps, ()),
        "sr_noaug": ("shapes-sr-16-32", "sr-noaug", args.sr_steps, (noaug,)),
        "sr_text": ("shapes-sr-16-32", "sr-text", args.sr_steps, text),
        "base": ("shapes-base-16", "base-16", args.base_steps, ()),
    }
    for key, (config, name, steps, extra) in plan.items():
        if args.only in (None, key):
            runs[key], times[key] = train_run(config, name, steps, args, out, *extra)
    if args.only in (None, "one_stage"):
        if args.one_stage_steps is not None:
            one_steps, budget = args.one_stage_steps, None
        else:
            calib = 30
            _, t_cal = train_run("shapes_txt2img", "calibrate", calib, args, out)
            budget = times["base"] + times["sr_aug"]
            one_steps = max(calib, int(budget / (t_cal / calib)))
        runs["one_stage"], times["one_stage"] = train_run(
            "shapes_txt2img", "one-stage-32", one_steps, args, out
        )
    if args.only is not None:
        print(f"trained {args.only} into {runs[args.only]} in {times[args.only]:.0f} s")
        return
    if budget is None:
        budget = times["base"] + times["sr_aug"]
    sr_run, noaug_run, base_run, one_run = (runs[k] for k in ("sr_aug", "sr_noaug", "base", "one_stage"))

    # ------------------------------------------------------------------ held-out data and the judge
    test = load_dataset("shapes", split="test", image_size=HIGH, num=2 * args.num)
    test_x, _ = test.as_tensor()
    gt, ref = test_x[: args.num].float(), test_x[args.num :].float()
    captions = list(test.captions[: args.num])
    low_gt = downsample(gt, LOW)
    judge_train = _bench_shapes(split="train", image_size=HIGH, num=4000, seed=1)
    judge = leading_object_judge(ref, labels_of(test)[args.num :], judge_train)
    f_ref = judge.features(ref).double()

    def measure(x: torch.Tensor, low: torch.Tensor | None) -> dict:
        x = x.float().clamp(-1, 1)
        report = alignment.evaluate(x, captions)
        acc = float(np.mean([s["all_ok"] for s in report.scores]))
        row = {"fd": frechet_distance(judge.features(x).double(), f_ref), "align": acc}
        row["consistency"] = rmse(downsample(x, LOW), low) if low is not None else None
        return row

    # ------------------------------------------------------------------ sampling and measuring
    sr, noaug = PixelPipeline.load(sr_run, device="cpu"), PixelPipeline.load(noaug_run, device="cpu")
    sr_text = PixelPipeline.load(runs["sr_text"], device="cpu")
    base, one = PixelPipeline.load(base_run, device="cpu"), PixelPipeline.load(one_run, device="cpu")
    clip = None if args.clip == "none" else args.clip
    sr_opts = SamplingOptions(steps=args.sr_sampling_steps, clip_x0=clip)
    text_opts = SamplingOptions(steps=args.steps, guidance_scale=args.guidance, clip_x0=clip)
    rows: dict[str, dict] = {}
    rows["ground truth (floor)"] = measure(gt, low_gt)
    rows["bicubic of GT 16 px"] = measure(bicubic(low_gt), low_gt)
    sr_gt, _ = sr.upscale(low_gt, options=sr_opts, aug_level=0.25, batch_size=100)
    rows["SR (aug, a=0.25) of GT 16 px"] = measure(sr_gt, low_gt)
    for a in (0.0, 0.1):  # ground truth needs no tolerance: the same model told its input is clean
        x, _ = sr.upscale(low_gt, options=sr_opts, aug_level=a, batch_size=100)
        rows[f"SR (aug, a={a:g}) of GT 16 px"] = measure(x, low_gt)
    x, _ = sr_text.upscale(low_gt, prompts=captions, options=sr_opts, aug_level=0.25, batch_size=100)
    rows["SR (aug + text, a=0.25) of GT 16 px"] = measure(x, low_gt)
    if args.clip != "dynamic":  # the same samples with Imagen's dynamic thresholding, for comparison
        dyn = SamplingOptions(steps=args.sr_sampling_steps, clip_x0="dynamic")
        x, _ = sr.upscale(low_gt, options=dyn, aug_level=0.25, batch_size=100)
        rows["SR (aug, a=0.25) of GT 16 px, dynamic thresholding"] = measure(x, low_gt)
    noaug_gt, _ = noaug.upscale(low_gt, options=sr_opts, aug_level=0.0, batch_size=100)
    rows["SR (no aug) of GT 16 px"] = measure(noaug_gt, low_gt)
    base_x, _ = base.generate(args.num, prompts=captions, options=text_opts, batch_size=100)
    rows["cascade: base 16 px + bicubic"] = measure(bicubic(base_x), base_x)
    for a in args.aug_levels:
        x, _ = sr.upscale(base_x, options=sr_opts, aug_level=a, batch_size=100)
        rows[f"cascade: base + SR (aug, a={a:g})"] = measure(x, base_x)
        if a == args.aug_levels[len(args.aug_levels) // 2]:
            cascade_x = x
    x, _ = noaug.upscale(base_x, options=sr_opts, aug_level=0.0, batch_size=100)
    rows["cascade: base + SR (no aug)"] = measure(x, base_x)
    for a in args.aug_levels:  # Imagen's SR stages see the prompt too
        x, _ = sr_text.upscale(base_x, prompts=captions, options=sr_opts, aug_level=a, batch_size=100)
        rows[f"cascade: base + SR (aug + text, a={a:g})"] = measure(x, base_x)
    one_x, _ = one.generate(args.num, prompts=captions, options=text_opts, batch_size=100)
    rows["one-stage 32 px text model"] = measure(one_x, None)

    # ------------------------------------------------------------------ the strip and the table
    k = 8
    nearest = F.interpolate(low_gt[:k], size=(HIGH, HIGH), mode="nearest")
    strip = torch.stack(
        [
            nearest,
            bicubic(low_gt[:k]),
            sr_gt[:k].clamp(-1, 1),
            gt[:k],
            F.interpolate(base_x[:k], size=(HIGH, HIGH), mode="nearest"),
            cascade_x[:k].clamp(-1, 1),
            one_x[:k].clamp(-1, 1),
        ],
        dim=1,
    )
    args.strip.parent.mkdir(parents=True, exist_ok=True)
    save_png(args.strip, make_grid(strip.flatten(0, 1), nrow=7))
    floor = rows["ground truth (floor)"]["fd"]
    print(
        f"# cascade benchmark: shapes test split, {args.num} held-out images "
        f"(FD reference: {args.num} others); "
        f"judge test accuracy {judge.test_accuracy:.3f}; {platform.machine()}, {os.cpu_count()} CPUs, "
        f"{args.threads} thread(s), torch {torch.__version__}"
    )
    print(
        f"# training (s): SR aug {times['sr_aug']:.0f} ({args.sr_steps} steps), "
        f"SR no-aug {times['sr_noaug']:.0f} ({args.sr_steps}), SR aug + text {times['sr_text']:.0f} "
        f"({args.sr_steps}), base 16 px {times['base']:.0f} ({args.base_steps}), one-stage 32 px "
        f"{times['one_stage']:.0f} ({one_steps} steps, given {budget:.0f} s = base + SR aug)"
    )
    print("\n| | FD | FD / floor | alignment (all right) | consistency RMSE |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, r in rows.items():
        cons = "—" if r["consistency"] is None else f"{r['consistency']:.4f}"
        print(f"| {name} | {r['fd']:.2f} | {r['fd'] / floor:.2f} | {100 * r['align']:.1f}% | {cons} |")
    bic, one_row = rows["bicubic of GT 16 px"], rows["one-stage 32 px text model"]
    goals = []
    for kind in ("aug", "aug + text"):  # the SR model without, then with, the prompt
        srr = rows[f"SR ({kind}, a=0.25) of GT 16 px"]
        best = min((rows[f"cascade: base + SR ({kind}, a={a:g})"]["fd"], a) for a in args.aug_levels)
        casc = rows[f"cascade: base + SR ({kind}, a={best[1]:g})"]
        goals += [
            (f"SR ({kind}) FD <= 0.5x bicubic", srr["fd"] <= 0.5 * bic["fd"],
             f"{srr['fd']:.2f} vs {0.5 * bic['fd']:.2f}"),
            (f"SR ({kind}) FD <= 2x floor", srr["fd"] <= 2 * floor, f"{srr['fd']:.2f} vs {2 * floor:.2f}"),
            (f"SR ({kind}) alignment >= bicubic", srr["align"] >= bic["align"],
             f"{srr['align']:.3f} vs {bic['align']:.3f}"),
            (f"cascade ({kind} SR, a={best[1]:g}: its best FD) alignment >= one-stage",
             casc["align"] >= one_row["align"], f"{casc['align']:.3f} vs {one_row['align']:.3f}"),
            (f"cascade ({kind} SR) FD < no-aug SR's", best[0] < rows["cascade: base + SR (no aug)"]["fd"],
             f"{best[0]:.2f} (a={best[1]:g}) vs {rows['cascade: base + SR (no aug)']['fd']:.2f}"),
        ]
    print("\n| goal | met | figures |\n| --- | --- | --- |")
    for goal, ok, fig in goals:
        print(f"| {goal} | {'yes' if ok else 'no'} | {fig} |")
    print(
        f"\nstrip: {args.strip} (rows: low-res, bicubic, SR, ground truth | base 16 px, cascade, one-stage); "
        f"total {(time.perf_counter() - t_start) / 60:.1f} min"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "rows": rows,
                    "times": times,
                    "one_stage_steps": one_steps,
                    "args": {k: str(v) for k, v in vars(args).items()},
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
