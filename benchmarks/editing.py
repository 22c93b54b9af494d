"""Editing real `shapes` images from a text: Imagic against img2img (SDEdit) and DDIM inversion.

Each held-out scene (`shapes` split `test_heldout`: combinations the training split never draws) is rendered
at 32 px and edited toward its caption with ONE attribute changed, in turn: the first object's colour, its
shape, or (two-object scenes) the relation, which swaps the two objects' places. The project's alignment
analyser (`ddpm.evaluation.alignment`) reads each edited image:

- success: the analyser reads the changed attribute as the target text says;
- preserved: the share of the OTHER attributes (the other object's colour and shape, the edited object's
  unchanged attribute, the count, the relation for colour/shape edits) that still read as in the source;
- centre shift: how far the edited object's detected centre moved, in pixels (colour/shape edits);
- RMSE outside the box: pixel RMSE (0..1) against the source outside the edited object's bounding box
  (one pixel margin; relation edits: outside both objects' boxes).

Methods, all with the model's sampler (dpmpp_2m, 20 steps, guidance 3) and one seed per scene:
img2img at several strengths; inversion (DDIM-invert the source caption, sample the target);
Imagic at eta in {0, 0.25, 0.5, 0.75, 1}, from the seed's noise as in the paper ("imagic") and from the
DDIM inversion of the image under the tuned model ("imagic+inv", `--init-from-inversion`).

A trained shapes text model is needed: `--model runs/NAME` (the README's shapes_txt2img, or the shorter
run this benchmark was measured with, see docs/editing.md). The run stops taking new scenes once
`--budget-min` is spent, and says how many it used.

    .venv/bin/python benchmarks/editing.py --model runs/shapes_edit --scenes 60 --budget-min 19

It writes table.md, rows.json, editing_curve.png and editing_strip.png into --out (default runs/bench-editing;
the README's copies are in docs/). Needs matplotlib (the test extras).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from ddpm.data.shapes import COLOURS, SHAPES, Scene, ShapeObject, render, scene_for
from ddpm.editing import ImagicSettings, edit_model, imagic, img2img, inversion_edit
from ddpm.evaluation.alignment import score
from ddpm.pipelines import SamplingOptions

ETAS = (0.0, 0.25, 0.5, 0.75, 1.0)
STRENGTHS = (0.3, 0.5, 0.7, 0.9)
_INVERSE = {"to the left of": "to the right of", "to the right of": "to the left of", "above": "below",
            "below": "above"}  # fmt: skip
SIZE = 32


def edited_scene(scene: Scene, kind: str, rng: np.random.Generator) -> Scene:
    """The scene's caption with one attribute of object 0 (or the relation) changed."""
    a = scene.objects[0]
    if kind == "relation":
        return Scene(scene.objects, _INVERSE[scene.relation], scene.mention_size)
    if kind == "colour":
        new = ShapeObject(str(rng.choice([c for c in COLOURS if c != a.colour])), a.shape, a.size, a.cx, a.cy,
                          a.half)  # fmt: skip
    else:
        new = ShapeObject(a.colour, str(rng.choice([s for s in SHAPES if s != a.shape])), a.size, a.cx, a.cy,
                          a.half)  # fmt: skip
    return Scene((new, *scene.objects[1:]), scene.relation, scene.mention_size)


def judge(image: np.ndarray, source: Scene, target: Scene, kind: str) -> dict[str, float | None]:
    """success, preserved share, centre shift (px) and RMSE outside the box of one edited image (uint8)."""
    s = score(image, target.prompt)
    objs = s["objects"]
    if kind == "colour":
        success = objs[0]["colour_ok"]
    elif kind == "shape":
        success = objs[0]["shape_ok"]
    else:
        success = bool(s["relation_ok"])
    others = [s["count_ok"]]
    others.append(objs[0]["shape_ok"] if kind == "colour" else objs[0]["colour_ok"] if kind == "shape" else
                  objs[0]["colour_ok"] and objs[0]["shape_ok"])  # fmt: skip
    if len(objs) > 1:
        others += [objs[1]["colour_ok"], objs[1]["shape_ok"]]
        if kind != "relation":
            others.append(bool(s["relation_ok"]))
    det = objs[0]["detected"]
    a = source.objects[0]
    shift = None
    if kind != "relation" and det is not None:
        shift = float(np.hypot(det["cx"] - a.cx, det["cy"] - a.cy) * SIZE)
    keep = np.ones((SIZE, SIZE), bool)
    for o in source.objects if kind == "relation" else source.objects[:1]:
        x0, x1 = int(np.floor((o.cx - o.half) * SIZE)) - 1, int(np.ceil((o.cx + o.half) * SIZE)) + 1
        y0, y1 = int(np.floor((o.cy - o.half) * SIZE)) - 1, int(np.ceil((o.cy + o.half) * SIZE)) + 1
        keep[max(y0, 0) : y1, max(x0, 0) : x1] = False
    src = render(source, SIZE).astype(np.float64) / 255
    rmse = float(np.sqrt(((image.astype(np.float64) / 255 - src)[keep] ** 2).mean()))
    return {"success": float(success), "preserved": float(np.mean(others)), "shift": shift, "rmse": rmse}


def to_uint8(images: torch.Tensor) -> list[np.ndarray]:
    x = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return [im.permute(1, 2, 0).numpy() for im in x]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="a trained shapes text model (run folder or file)")
    ap.add_argument("--scenes", type=int, default=30)
    ap.add_argument("--budget-min", type=float, default=20.0, help="stop taking new scenes after this")
    ap.add_argument("--embedding-steps", type=int, default=40)
    ap.add_argument("--finetune-steps", type=int, default=40)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="runs/bench-editing", help="folder for the table, rows, curve, strip")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = edit_model(args.model, device="cpu")
    options = SamplingOptions(seed=0)
    settings = ImagicSettings(embedding_steps=args.embedding_steps, finetune_steps=args.finetune_steps,
                              batch=args.batch)  # fmt: skip
    rng = np.random.default_rng(0)
    rows: list[dict] = []
    stage_times: dict[str, list[float]] = {"embedding": [], "finetune": [], "sampling": []}
    strips = []
    t_start = time.perf_counter()
    used = 0
    for i in range(args.scenes):
        if time.perf_counter() - t_start > 60 * args.budget_min:
            break
        scene = scene_for("test_heldout", i, seed=7, kind="pair" if i % 2 else "single")
        kinds = ("colour", "shape", "relation") if scene.relation else ("colour", "shape")
        kind = kinds[i // 2 % len(kinds)] if scene.relation else kinds[i // 2 % 2]
        target = edited_scene(scene, kind, rng)
        src = render(scene, SIZE)
        opts = options.replace(seed=i)
        results: dict[str, torch.Tensor] = {}
        imgs = img2img(model, src, target.caption, strengths=STRENGTHS, options=opts)
        for s, im in zip(STRENGTHS, imgs):
            results[f"img2img@{s}"] = im[None]
        inv, _ = inversion_edit(model, src, target.caption, source_prompt=scene.caption, options=opts)
        results["inversion"] = inv
        edit = imagic(model, src, target.caption, settings=settings, options=opts)
        for key in ("embedding", "finetune"):
            stage_times[key].append(edit.report[key]["seconds"])
        for e, im in zip(ETAS, edit.render(ETAS)):
            results[f"imagic@{e}"] = im[None]
        stage_times["sampling"].append(edit.report["sampling"]["seconds"])
        for e, im in zip(ETAS, edit.render(ETAS, init_from_inversion=True)):
            results[f"imagic+inv@{e}"] = im[None]
        edit.close()
        for name, im in results.items():
            r = judge(to_uint8(im)[0], scene, target, kind)
            rows.append({"scene": i, "kind": kind, "method": name, "source": scene.caption,
                         "target": target.caption, **r})  # fmt: skip
        if len(strips) < 6:
            strips.append(
                (scene.caption, target.caption, src, {k: to_uint8(v)[0] for k, v in results.items()})
            )
        used += 1
        print(f"scene {i} ({kind}): {scene.caption!r} -> {target.caption!r} "
              f"[{time.perf_counter() - t_start:.0f} s]", flush=True)  # fmt: skip
    elapsed = time.perf_counter() - t_start
    (out / "rows.json").write_text(json.dumps(rows, indent=1))
    table = summarise(rows)
    cpu = platform.processor() or platform.machine()
    machine = f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {args.threads} thread(s)"
    lines = [f"# editing benchmark: {used} held-out shapes scenes, model {args.model}, {machine}",
             f"# Imagic: embedding {args.embedding_steps} steps, fine-tuning {args.finetune_steps} steps "
             "(full), "
             f"batch {args.batch}; sampler dpmpp_2m 20 steps, guidance 3; wall {elapsed / 60:.1f} min",
             "| method | success | preserved | centre shift px | RMSE outside box | n |",
             "| --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for name, r in table.items():
        lines.append(f"| {name} | {r['success']:.0%} | {r['preserved']:.0%} | {r['shift']:.2f} | "
                     f"{r['rmse']:.3f} | {r['n']} |")  # fmt: skip
    for key, values in stage_times.items():
        if values:
            lines.append(f"# stage {key}: {np.mean(values):.2f} s per scene (mean of {len(values)})")
    for kind in ("colour", "shape", "relation"):
        sub = summarise([r for r in rows if r["kind"] == kind])
        best = {m: sub[m]["success"] for m in sub}
        lines.append(f"# {kind} edits: " + ", ".join(f"{m} {v:.0%}" for m, v in best.items()))
    text = "\n".join(lines)
    print(text)
    (out / "table.md").write_text(text + "\n")
    plot(table, out / "editing_curve.png")
    strip(strips, out / "editing_strip.png")


def summarise(rows: list[dict]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for name in dict.fromkeys(r["method"] for r in rows):
        rs = [r for r in rows if r["method"] == name]
        shifts = [r["shift"] for r in rs if r["shift"] is not None]
        out[name] = {"success": float(np.mean([r["success"] for r in rs])),
                     "preserved": float(np.mean([r["preserved"] for r in rs])),
                     "shift": float(np.mean(shifts)) if shifts else float("nan"),
                     "rmse": float(np.mean([r["rmse"] for r in rs])), "n": len(rs)}  # fmt: skip
    return out


def plot(table: dict[str, dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for family, marker in (("img2img", "o"), ("imagic", "s"), ("imagic+inv", "^"), ("inversion", "*")):
        names = [n for n in table if n.split("@")[0] == family]
        xs = [table[n]["preserved"] for n in names]
        ys = [table[n]["success"] for n in names]
        ax.plot(xs, ys, marker=marker, label=family)
        for n, x, y in zip(names, xs, ys):
            if "@" in n:
                ax.annotate(n.split("@")[1], (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.axhline(0.7, color="grey", lw=0.5, ls="--")
    ax.axvline(0.9, color="grey", lw=0.5, ls="--")
    ax.set_xlabel("other attributes preserved")
    ax.set_ylabel("edit success")
    ax.set_title("editing held-out shapes scenes (labels: strength / eta)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def strip(strips: list, path: Path) -> None:
    from PIL import Image

    cols = ["source", "img2img@0.5", "img2img@0.7", "inversion", "imagic@0.5", "imagic@0.75", "imagic@1.0",
            "imagic+inv@0.5", "imagic+inv@0.75", "imagic+inv@1.0"]  # fmt: skip
    scale, pad = 3, 2
    w = len(cols) * (SIZE * scale + pad)
    canvas = Image.new("RGB", (w, len(strips) * (SIZE * scale + pad)), (255, 255, 255))
    for r, (_, _, src, res) in enumerate(strips):
        for c, name in enumerate(cols):
            im = src if name == "source" else res[name]
            tile = Image.fromarray(im).resize((SIZE * scale, SIZE * scale), Image.Resampling.NEAREST)
            canvas.paste(tile, (c * (SIZE * scale + pad), r * (SIZE * scale + pad)))
    canvas.save(path)
    (path.with_suffix(".txt")).write_text("columns: " + ", ".join(cols) + "\n" + "\n".join(
        f"row {r}: {a!r} -> {b!r}" for r, (a, b, _, _) in enumerate(strips)) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
