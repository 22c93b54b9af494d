"""CLIP-style encoders on `shapes` and DALL·E's reranking, measured with the project's own judges.

(a) Retrieval: two contrastive models train through the project's loop (`configs/shapes_clip.toml`,
    shortened by `--clip-steps`): plain CLIP (in-batch negatives only) and NegCLIP (each caption's
    colour-swapped, shape-swapped and relation-reversed versions added as negatives). Each is measured by
    zero-shot image -> caption top-1 against each kind of hard negative on 200 two-object scenes of seen
    and 200 of held-out combinations (`ddpm.evaluation.retrieval`), beside chance (50%).
(b) Reranking 8 -> 1: a text-to-image model (`--model`, or `configs/shapes_txt2img.toml` trained here for
    `--t2i-steps`) draws 8 candidates (seeds 0-7) for each two-object alignment prompt at guidance 1;
    the alignment analyser (`ddpm.evaluation.alignment`) scores the candidate each reranker keeps, beside
    the mean over all 8 (the expected accuracy of keeping an arbitrary one).

(c) unCLIP text -> image (`--unclip-prior` and `--unclip-decoder`, trained with
    configs/shapes_unclip_prior.toml and configs/shapes_unclip_decoder.toml): one image per two-object
    alignment prompt (seen and held-out), prior -> decoder, scored by the alignment analyser per attribute,
    beside the direct text-to-image model of (b) on the same prompts and seeds. Each model's training steps
    are printed; equal training time is the caller's to arrange (the numbers say what each had).
(d) Image variations: `--variations` images of held-out two-object test scenes are each encoded and
    decoded with 4 seeds; the analyser checks the variations against the input's caption (colour, shape:
    kept; relation and the mean pixel change from the input: how much the layout moved).

The goals of issue 18: colour/shape >= 95% with relation reported beside chance; reranking +5 points of
relation accuracy; variations keep colour and shape >= 90%. Timings are printed, never asserted.

    .venv/bin/python benchmarks/unclip.py                    # ~25 minutes on one thread
    .venv/bin/python benchmarks/unclip.py --model runs/shapes_txt2img --clip-steps 1500
    .venv/bin/python benchmarks/unclip.py --only-unclip --model T2I --unclip-prior runs/shapes_unclip_prior \
        --unclip-decoder runs/shapes_unclip_decoder            # (c) and (d) alone
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch

import ddpm
from ddpm.config import load_config
from ddpm.data.shapes import alignment_prompts
from ddpm.evaluation.alignment import evaluate as evaluate_alignment
from ddpm.evaluation.retrieval import evaluate_retrieval, format_retrieval
from ddpm.io.clip_files import load_contrastive_file
from ddpm.io.run_folder import latest_checkpoint
from ddpm.pipelines import PixelPipeline, SamplingOptions
from ddpm.pipelines.rerank import load_scorer
from ddpm.training import train

ROOT = Path(__file__).resolve().parents[1]


def _trained(config, steps: int) -> Path:
    """The run of `config`, trained to `steps` (reused when a finished run is already there)."""
    run = Path(config.run.dir) / config.run.name
    try:
        if int(latest_checkpoint(run).name.split("-")[1]) >= steps:
            print(f"  reusing {run}")
            return run
    except (FileNotFoundError, ValueError, IndexError):
        pass
    t = time.perf_counter()
    out = train(config, progress=False)
    print(f"  trained {run.name}: {steps} steps in {time.perf_counter() - t:.0f} s")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="/tmp/ddpm-unclip-bench", help="folder for the runs (reused)")
    p.add_argument("--clip-steps", type=int, default=800)
    p.add_argument("--t2i-steps", type=int, default=1200)
    p.add_argument("--model", help="a trained shapes text-to-image model instead of training one")
    p.add_argument("--scorer", help="one more contrastive model (file or run folder, e.g. a full "
                   "configs/shapes_clip.toml run) to measure in (a) and rerank with in (b)")
    p.add_argument("--num", type=int, default=200, help="scenes per split for retrieval")
    p.add_argument("--prompts", type=int, default=40, help="two-object prompts per split for reranking")
    p.add_argument("--candidates", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--unclip-prior", help="(c): an unCLIP prior (run folder or model file)")
    p.add_argument("--unclip-decoder", help="(c), (d): its unCLIP decoder")
    p.add_argument("--unclip-prompts", type=int, default=40, help="(c): two-object prompts per split")
    p.add_argument("--unclip-per-prompt", type=int, default=4, help="(c): images per prompt (seeds differ)")
    p.add_argument("--variations", type=int, default=40, help="(d): held-out scenes to vary (4 each)")
    p.add_argument("--only-unclip", action="store_true", help="run (c) and (d) only")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    start = time.perf_counter()
    machine = platform.processor() or platform.machine()
    print(f"ddpm {ddpm.__version__}, torch {torch.__version__}, {machine}, {os.cpu_count()} cores, "
          f"{args.threads} thread(s)")

    if args.only_unclip:
        if not (args.unclip_decoder and args.model):
            p.error("--only-unclip needs --unclip-decoder and --model (the direct text model for (c))")
        unclip_parts(args, Path(args.model))
        print(f"\ntotal {time.perf_counter() - start:.0f} s")
        return

    # ------------------------------------------------------------------------------ (a) retrieval
    print(f"\n(a) retrieval among hard negatives, {args.num} two-object scenes per split")
    common = [f"run.dir={str(work)!r}", f"train.steps={args.clip_steps}",
              f"train.checkpoint_every={args.clip_steps}", f"train.num_threads={args.threads}"]
    runs = {}
    for name, negs in (("clip", "[]"), ("negclip", '["colour", "shape", "relation"]')):
        cfg = load_config(ROOT / "configs" / "shapes_clip.toml",
                          [*common, f"run.name={name}", f"contrastive.hard_negatives={negs}"])
        runs[name] = _trained(cfg, args.clip_steps)
    retrieval = {}
    for name, run in runs.items():
        model, tok, meta = load_contrastive_file(run)
        retrieval[name] = evaluate_retrieval(model, tok, num=args.num)
        print(f"\n{name} ({meta.training.step} steps, batch 64):\n{format_retrieval(retrieval[name])}")

    # ------------------------------------------------------------------------------ (b) reranking
    if args.model:
        t2i = Path(args.model)
    else:
        s = args.t2i_steps
        cfg = load_config(ROOT / "configs" / "shapes_txt2img.toml", [
            f"run.dir={str(work)!r}", "run.name=t2i", f"train.steps={s}", f"train.checkpoint_every={s}",
            f"train.num_threads={args.threads}", "train.warmup_steps=100",
            f"data.options={{num = 20000, pair_fraction = 0.9, lead_first_steps = {s // 2}, "
            "rephrase = true}"])
        print(f"\n(b) training the text-to-image model ({s} steps of configs/shapes_txt2img.toml)")
        t2i = _trained(cfg, s)
    if args.scorer:  # measured now, when (b) needs it: a run still training gives its latest checkpoint
        model, tok, meta = load_contrastive_file(args.scorer)
        name = f"{Path(args.scorer).name}@{meta.training.step}"
        runs[name] = Path(args.scorer)
        print(f"\n(a) {name} ({meta.training.step} steps, hard negatives "
              f"{meta.contrastive.get('hard_negatives')}):\n"
              f"{format_retrieval(evaluate_retrieval(model, tok, num=args.num))}")
    pipe = PixelPipeline.load(t2i, device="cpu")
    k = args.candidates
    prompts, groups = [], []
    for split in ("seen", "heldout"):
        suite = [q for i, q in enumerate(alignment_prompts(split, 2 * args.prompts)) if i % 2 == 1]
        prompts += suite
        groups += [split] * len(suite)
    t = time.perf_counter()
    images = []
    for q in prompts:  # candidate j of every prompt has seed j
        x, _ = pipe.generate(k, prompts=q, options=SamplingOptions(steps=20, seed=0, guidance_scale=1.0))
        images.append(x)
    cand = torch.stack(images)  # [P, k, 3, H, W]
    print(f"\n(b) reranking {k} -> 1 on {len(prompts)} two-object prompts at guidance 1 "
          f"({len(prompts) * k} samples in {time.perf_counter() - t:.0f} s)")
    flat_prompts = [q for q in prompts for _ in range(k)]
    flat_groups = [g for g in groups for _ in range(k)]
    base = evaluate_alignment(cand.flatten(0, 1), flat_prompts, flat_groups)
    rows = {f"no reranking (mean of {k})": base}
    for name, run in runs.items():
        scores = load_scorer(run)(cand.flatten(0, 1), flat_prompts).view(len(prompts), k)
        best = cand[torch.arange(len(prompts)), scores.argmax(dim=1)]
        rows[f"reranked by {name}"] = evaluate_alignment(best, prompts, groups)
    attrs = ("colour", "shape", "relation", "all")
    print(f"{'':<28}" + "".join(f"{g[:4] + ' ' + a:>14}" for g in ("seen", "heldout") for a in attrs))
    for label, rep in rows.items():
        acc = rep.accuracy
        cells = "".join(f"{100 * acc[g]['pair'][a]:13.1f}%" for g in ("seen", "heldout") for a in attrs)
        print(f"{label:<28}{cells}")
    if args.unclip_decoder:
        unclip_parts(args, t2i)
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


def _table(rows: dict[str, object], attrs: tuple[str, ...] = ("colour", "shape", "relation", "all")) -> None:
    groups = list(next(iter(rows.values())).accuracy)
    print(f"{'':<34}" + "".join(f"{g[:7] + ' ' + a:>17}" for g in groups for a in attrs))
    for label, rep in rows.items():
        acc = rep.accuracy
        cells = "".join(f"{100 * acc[g]['pair'][a]:16.1f}%" for g in groups for a in attrs)
        print(f"{label:<34}{cells}")


def diversity(samples: dict[str, torch.Tensor], groups: list[str], k: int) -> None:
    """(c)'s diversity: the judge's Fréchet distance of each model's samples to real two-object test scenes
    of the same splits (beside the floor: as many other real scenes), and the spread among the k images of
    one prompt (mean pairwise distance of their judge features, and of their pixels)."""
    from ddpm.data import load_dataset
    from ddpm.evaluation import frechet_distance
    from shapes_judge import labels_of, leading_object_judge

    need = {g: groups.count(g) * k for g in dict.fromkeys(groups)}
    split_of = {"seen": "test_seen", "heldout": "test_heldout"}
    parts = {g: load_dataset("shapes", split=split_of[g], image_size=32, num=2 * n, pair_fraction=1.0)
             for g, n in need.items()}
    real = {g: ds.as_tensor()[0].float() for g, ds in parts.items()}
    ref = torch.cat([real[g][: need[g]] for g in need])
    other = torch.cat([real[g][need[g]:] for g in need])
    judge = leading_object_judge(other, torch.cat([labels_of(ds)[need[g]:] for g, ds in parts.items()]))
    f_ref = judge.features(ref).double()

    def spread(x: torch.Tensor) -> tuple[float, float]:
        f = judge.features(x).double()
        f = f.view(-1, k, f.shape[-1])
        px = x.flatten(1).view(-1, k, x[0].numel()).double()
        iu = torch.triu_indices(k, k, 1)
        df = torch.cdist(f, f)[:, iu[0], iu[1]].mean()
        dp = torch.cdist(px, px)[:, iu[0], iu[1]].mean() / x[0].numel() ** 0.5
        return float(df), float(dp)

    print(f"    diversity: FD in the leading-object judge's features (test accuracy "
          f"{judge.test_accuracy:.3f}) against {len(ref)} real two-object test scenes of the same splits; "
          f"spread among each prompt's {k} images")
    print(f"    {'':<34}{'FD':>10}{'FD / floor':>12}{'feature spread':>16}{'pixel spread':>14}")
    floor = frechet_distance(judge.features(other).double(), f_ref)
    rows = {"real scenes (the floor)": (floor, None)} | {
        name: (frechet_distance(judge.features(x.clamp(-1, 1)).double(), f_ref), spread(x.clamp(-1, 1)))
        for name, x in samples.items()}
    for name, (fd, sp) in rows.items():
        cells = f"{sp[0]:16.3f}{sp[1]:14.3f}" if sp is not None else f"{'—':>16}{'—':>14}"
        print(f"    {name:<34}{fd:10.1f}{fd / floor:12.2f}{cells}")


def unclip_parts(args: argparse.Namespace, t2i: Path) -> None:
    """(c) unCLIP vs the direct text model on the alignment prompts; (d) image variations."""
    from ddpm.data import load_dataset
    from ddpm.pipelines.unclip import Unclip, UnclipPrior

    decoder = PixelPipeline.load(args.unclip_decoder, device="cpu")
    steps = {"decoder": decoder.meta.training.step}
    if args.unclip_prior:
        prior = UnclipPrior(args.unclip_prior)
        steps["prior"] = prior.meta.training.step
        unclip = Unclip(prior, decoder)
        direct = PixelPipeline.load(t2i, device="cpu")
        prompts, groups = [], []
        for split in ("seen", "heldout"):
            suite = [q for i, q in enumerate(alignment_prompts(split, 2 * args.unclip_prompts)) if i % 2 == 1]
            prompts += suite
            groups += [split] * len(suite)
        k = args.unclip_per_prompt
        flat = [q for q in prompts for _ in range(k)]  # sample j of prompt i has seed i * k + j
        flat_groups = [g for g in groups for _ in range(k)]
        opts = SamplingOptions(steps=20, seed=0)
        t = time.perf_counter()
        a, _ = unclip.txt2img(flat, len(flat), options=opts)
        ta = time.perf_counter() - t
        t = time.perf_counter()
        b, _ = direct.generate(len(flat), prompts=flat, options=opts)
        tb = time.perf_counter() - t
        print(f"\n(c) unCLIP (prior {steps['prior']} steps, decoder {steps['decoder']} steps; prior and "
              f"decoder at their files' guidance) vs the direct text model ({direct.meta.training.step} "
              f"steps, guidance {direct.meta.sampling.guidance_scale}), {len(prompts)} two-object prompts, "
              f"{k} images each, 20 decoder steps ({ta:.0f} s vs {tb:.0f} s of sampling)")
        _table({"unCLIP (prior -> decoder)": evaluate_alignment(a, flat, flat_groups),
                "direct text model": evaluate_alignment(b, flat, flat_groups)})
        diversity({"unCLIP (prior -> decoder)": a, "direct text model": b}, groups, k)
    # ------------------------------------------------------------------------------ (d) variations
    ds = load_dataset("shapes", split="test_heldout", image_size=decoder.image_size, channels=3,
                      num=args.variations, pair_fraction=1.0)
    k = 4
    outs, captions, moved = [], [], []
    t = time.perf_counter()
    for i in range(len(ds)):
        x = ds[i]["image"]
        v, _ = decoder.variations(x, k, options=SamplingOptions(steps=20, seed=100 * i))
        outs.append(v)
        captions += [ds.captions[i]] * k
        moved.append((v - x[None]).abs().mean().item() / 2)
    rep = evaluate_alignment(torch.cat(outs), captions, ["variations"] * len(captions))
    inputs = evaluate_alignment(torch.stack([ds[i]["image"] for i in range(len(ds))]), list(ds.captions),
                                ["inputs"] * len(ds))
    print(f"\n(d) image variations: {len(ds)} held-out two-object scenes x {k} seeds, decoder "
          f"{steps['decoder']} steps ({time.perf_counter() - t:.0f} s); goal: colour and shape kept >= 90%")
    _table({"the inputs themselves (judge check)": inputs})
    _table({"variations vs the input's caption": rep})
    print(f"    mean absolute pixel change from the input: {100 * sum(moved) / len(moved):.1f}% of the range")


if __name__ == "__main__":
    main()
