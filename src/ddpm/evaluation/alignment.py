"""Prompt alignment on the `shapes` dataset: a deterministic analyser finds each object in an image (its
colour, shape, size and position) and scores the image against its prompt, attribute by attribute.

Analysis by synthesis, no learned parts:
1. background = median of the border pixels; foreground = pixels far from it;
2. objects = connected components of the foreground, split where two objects touch (a component holding two
   palette colours, or one whose erosion falls into two cores); specks and blobs too large to be a drawn
   shape are dropped;
3. colour = the median of an object's interior pixels, matched to the palette up to a brightness factor;
   a colour far from every palette entry, or an object whose pixels disagree on it, reads as unknown;
4. coverage alpha = how much of each pixel the object covers (projection of the pixel on the object's colour);
   shape = the template (drawn by the dataset's own renderer) with the same area and centroid that overlaps
   the coverage best (soft IoU); size class from the fitted half side.

| name     | code              | meaning                                                                  |
| -------- | ----------------- | ------------------------------------------------------------------------ |
| b        | `background`      | background colour, RGB in 0..255                                         |
| alpha    | `alpha`           | per-pixel coverage of an object, `[H, W]` in [0, 1]                      |
| IoU      | `shape_iou`       | sum(min(alpha, t)) / sum(max(alpha, t)) against a shape template t        |
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from ..data.shapes import (
    COLOURS,
    PALETTE,
    RELATIONS,
    SHAPES,
    SIZE_RANGES,
    Prompt,
    alignment_prompts,
    coverage,
    parse_prompt,
)

__all__ = [
    "DetectedObject",
    "analyse",
    "score",
    "evaluate",
    "evaluate_generator",
    "AlignmentReport",
    "RELATION_ERRORS",
    "ATTRIBUTES",
    "register",
]

ATTRIBUTES = ("colour", "shape", "size", "count", "relation", "all")
# Why a two-object image fails its relation (`score(...)["relation_error"]`), with its label in tables:
# "mirrored", both objects found, each in the other's place; "off_axis", both found but the stated axis does
# not dominate their offset; "missing", an object not found.
RELATION_ERRORS = {"mirrored": "mirrored", "off_axis": "off axis", "missing": "object missing"}

_FOREGROUND = 0.4  # a pixel is foreground beyond this fraction of the dimmest palette colour's contrast
_MIN_HALF, _MAX_HALF = 0.08, 0.3  # half sides outside this range are specks or blobs, not drawn shapes
_SIZE_SPLIT = (SIZE_RANGES["small"][1] + SIZE_RANGES["large"][0]) / 2
_BRIGHTNESS = (0.6, 1.2)  # a colour matches a palette entry scaled by a factor in this range
_COLOUR_TOL = 0.3  # ... if it lies within this fraction of the entry's contrast from it
_AGREEMENT = 0.5  # least share of an object's interior pixels that must read as its colour
_MIN_IOU = 0.6  # below this soft IoU with every template the shape reads as unknown (a 2:1 bar scores ~0.55)
_TEMPLATE_BLUR = (0.0, 0.5, 1.0)  # Gaussian blurs (pixels) of the templates each shape is tried with
_AREA_FACTOR = {"circle": math.pi, "square": 4.0, "triangle": 2.0}  # area = factor * h^2
_CENTROID_DY = {"circle": 0.0, "square": 0.0, "triangle": 1 / 3}  # centroid below the box centre, times h


@dataclass(frozen=True)
class DetectedObject:
    """One object the analyser found; positions and sizes are fractions of the image side (y down)."""

    colour: str | None
    shape: str | None
    size: str
    cx: float
    cy: float
    half: float
    colour_error: float  # distance to the matched palette colour, relative to its contrast
    shape_iou: float
    pixels: int


def _to_rgb(image: Any) -> np.ndarray:
    """`[3, H, W]` float in [-1, 1] (tensor or array) or uint8 `[H, W, 3]` -> float64 `[H, W, 3]`, 0..255."""
    if hasattr(image, "detach"):
        image = image.detach().cpu().float().numpy()
    a = np.asarray(image)
    if a.ndim == 3 and a.shape[0] == 3 and a.dtype != np.uint8:
        return (np.clip(a.astype(np.float64), -1.0, 1.0).transpose(1, 2, 0) + 1.0) * 127.5
    if a.ndim == 3 and a.shape[2] == 3 and a.dtype == np.uint8:
        return a.astype(np.float64)
    raise ValueError(f"expected an image as float [3, H, W] in [-1, 1] or uint8 [H, W, 3]; got shape "
                     f"{tuple(a.shape)} of {a.dtype}")


def _match_colour(d: np.ndarray, background: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest palette entry to colour offsets `d` `[..., 3]` (from the background), up to brightness.

    Returns (index `[...]`, error relative to the entry's contrast `[...]`)."""
    q = np.asarray([PALETTE[c] for c in COLOURS], dtype=np.float64) - background  # [K, 3]
    qq = (q * q).sum(-1)  # [K]
    s = np.clip((d[..., None, :] * q).sum(-1) / qq, *_BRIGHTNESS)  # [..., K]
    err = np.linalg.norm(d[..., None, :] - s[..., None] * q, axis=-1) / np.sqrt(qq)  # [..., K]
    k = err.argmin(-1)
    return k, np.take_along_axis(err, k[..., None], -1)[..., 0]


def _split_nearest(m: np.ndarray, seeds: list[np.ndarray]) -> list[np.ndarray]:
    """Share the pixels of mask `m` among the seed masks, each pixel going to the nearest seed."""
    dist = np.stack([ndimage.distance_transform_edt(~seed) for seed in seeds])
    owner = dist.argmin(0)
    return [m & (owner == j) for j in range(len(seeds))]


def _components(fg: np.ndarray, labels: np.ndarray, min_pixels: int) -> list[np.ndarray]:
    """Connected foreground components, split where they hold two objects that touch.

    A component holding two palette colours is split by colour; one whose erosion falls apart into two
    sizeable cores (two same-coloured objects joined by a thin bridge) is split around those cores.
    `labels` `[H, W]` is each pixel's palette index where it reads clearly as that colour, else -1."""
    eight = np.ones((3, 3))
    comps, n = ndimage.label(fg, structure=eight)
    by_colour = []
    for i in range(1, n + 1):
        m = comps == i
        counts = np.bincount(labels[m & (labels >= 0)], minlength=len(COLOURS))
        major = np.flatnonzero(counts >= max(min_pixels, 0.2 * m.sum()))
        by_colour.extend(_split_nearest(m, [labels == k for k in major]) if len(major) > 1 else [m])
    out = []
    for m in by_colour:
        parts, p = ndimage.label(ndimage.binary_erosion(m), structure=eight)
        cores = [parts == j for j in range(1, p + 1) if (parts == j).sum() >= max(4, min_pixels // 3)]
        out.extend(_split_nearest(m, cores) if len(cores) > 1 else [m])
    return out


def _fit_shape(
    alpha: np.ndarray, side: int, rows: slice, cols: slice
) -> tuple[str, float, float, float, float]:
    """The template with the coverage's area and centroid that overlaps it best: (shape, IoU, cx, cy, h), in
    pixels; each shape is also tried blurred, as generated images are often soft."""
    a = alpha[rows, cols]
    area = a.sum()
    ys, xs = np.mgrid[rows, cols]
    gx, gy = (a * (xs + 0.5)).sum() / area, (a * (ys + 0.5)).sum() / area
    best = ("", -1.0, gx, gy, 0.0)
    for shape in SHAPES:
        h = math.sqrt(area / _AREA_FACTOR[shape])
        cy = gy - _CENTROID_DY[shape] * h
        t = coverage(
            shape, gx / side, cy / side, h / side, x0=cols.start, y0=rows.start, width=cols.stop - cols.start,
            height=rows.stop - rows.start, image_size=side, supersample=4,
        )  # fmt: skip
        for sigma in _TEMPLATE_BLUR:
            tb = ndimage.gaussian_filter(t, sigma, mode="constant") if sigma else t
            iou = float(np.minimum(a, tb).sum() / max(np.maximum(a, tb).sum(), 1e-9))
            if iou > best[1]:
                best = (shape, iou, gx, cy, h)
    return best


def analyse(image: Any) -> list[DetectedObject]:
    """Find the objects of a shapes image (`[3, H, W]` in [-1, 1], or uint8 `[H, W, 3]`), largest first."""
    rgb = _to_rgb(image)
    height, width, _ = rgb.shape
    side = min(height, width)
    if side < 8:
        raise ValueError(f"image of {height}x{width} pixels is too small to analyse; shapes images are >= 16")
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
    background = np.median(border, axis=0)
    d = rgb - background  # [H, W, 3]
    contrast = min(np.linalg.norm(np.asarray(c, dtype=np.float64) - background) for c in PALETTE.values())
    fg = np.linalg.norm(d, axis=-1) > _FOREGROUND * contrast
    labels, errors = _match_colour(d, background)
    labels = np.where(errors <= _COLOUR_TOL, labels, -1)
    min_pixels = max(int(_AREA_FACTOR["triangle"] * (_MIN_HALF * side) ** 2), 3)
    found = []
    for m in _components(fg, labels, min_pixels):
        if m.sum() < min_pixels:
            continue
        interior = ndimage.binary_erosion(m)
        core = interior if interior.sum() >= 4 else m
        colour_obs = np.median(d[core], axis=0)
        k, err = _match_colour(colour_obs, background)
        agree = float((labels[core] == k).mean())
        colour = COLOURS[int(k)] if err <= _COLOUR_TOL and agree >= _AGREEMENT else None
        # Coverage: pixels near the object projected on its observed colour (other objects left out).
        near = ndimage.binary_dilation(m, iterations=2) & ~(fg & ~m)
        alpha = np.where(near, np.clip((d @ colour_obs) / max(colour_obs @ colour_obs, 1e-9), 0.0, 1.0), 0.0)
        ys, xs = np.nonzero(near)
        rows = slice(max(ys.min() - 1, 0), min(ys.max() + 2, height))
        cols = slice(max(xs.min() - 1, 0), min(xs.max() + 2, width))
        shape, iou, cx, cy, h = _fit_shape(alpha, side, rows, cols)
        half = h / side
        if not _MIN_HALF <= half <= _MAX_HALF:
            continue
        found.append(DetectedObject(
            colour=colour, shape=shape if iou >= _MIN_IOU else None,
            size="small" if half < _SIZE_SPLIT else "large", cx=float(cx / width), cy=float(cy / height),
            half=float(half), colour_error=float(err), shape_iou=iou, pixels=int(m.sum()),
        ))  # fmt: skip
    return sorted(found, key=lambda o: -o.pixels)


def _relation_holds(a: DetectedObject, relation: str, b: DetectedObject) -> bool:
    """Whether A stands in `relation` to B: the stated axis dominates the offset and has the stated sign."""
    dx, dy = b.cx - a.cx, b.cy - a.cy
    if relation == "to the left of":
        return dx > abs(dy)
    if relation == "to the right of":
        return -dx > abs(dy)
    if relation == "above":
        return dy > abs(dx)
    if relation == "below":
        return -dy > abs(dx)
    raise ValueError(f"unknown relation {relation!r}; choose one of {', '.join(RELATIONS)}")


def score(image: Any, prompt: str | Prompt) -> dict[str, Any]:
    """Score one image against its prompt: per-object colour/shape/size, count, relation, and all of them."""
    p = parse_prompt(prompt) if isinstance(prompt, str) else prompt
    # Objects are what reads as a colour or a shape of the vocabulary (clutter and noise blobs do not count);
    # the eight largest are plenty for one- or two-object prompts.
    found = [f for f in analyse(image) if f.colour is not None or f.shape is not None][:8]
    k = len(p.objects)

    def matches(o: Any, f: DetectedObject) -> int:
        return (f.colour == o.colour) + (f.shape == o.shape)

    def agreement(assign: tuple[int, ...]) -> float:
        return sum(matches(o, found[j]) + 0.25 * (found[j].size == o.size) for o, j in zip(p.objects, assign))

    choices = list(itertools.permutations(range(len(found)), min(k, len(found))))
    best = max(map(agreement, choices), default=None)
    tied = [a for a in choices if agreement(a) == best]
    assign = tied[0] if tied else ()
    if p.relation is not None and len(assign) == 2:
        a, b = p.objects
        if (a.colour, a.shape) == (b.colour, b.shape) and (a.size == b.size or None in (a.size, b.size)):
            # The prompt cannot tell its two objects apart, so neither can the matching: any order may serve.
            assign = next((t for t in tied if _relation_holds(found[t[0]], p.relation, found[t[1]])), assign)
    # A prompt object corresponds to a detection only where they share a colour or a shape; size and relation
    # are judged on corresponding objects only, so that a stray blob earns nothing.
    corresponds = [i < len(assign) and matches(o, found[assign[i]]) > 0 for i, o in enumerate(p.objects)]
    relation_ok = relation_error = None
    if p.relation is not None:
        relation_ok = all(corresponds) and _relation_holds(found[assign[0]], p.relation, found[assign[1]])
        if not relation_ok:
            # Why it failed: an object not found; the two in each other's place (the relation read the other
            # way round); or the stated axis not dominating the offset (wrong axis, or too diagonal to tell).
            relation_error = "missing" if not all(corresponds) else "mirrored" if _relation_holds(
                found[assign[1]], p.relation, found[assign[0]]) else "off_axis"
    objects = []
    for i, o in enumerate(p.objects):
        det = found[assign[i]] if i < len(assign) else None
        objects.append({
            "colour_ok": det is not None and det.colour == o.colour,
            "shape_ok": det is not None and det.shape == o.shape,
            "size_ok": None if o.size is None else corresponds[i] and det.size == o.size,
            "detected": None if det is None else {
                "colour": det.colour, "shape": det.shape, "size": det.size, "cx": det.cx, "cy": det.cy},
        })
    count_ok = len(found) == k
    all_ok = count_ok and relation_ok is not False and all(
        o["colour_ok"] and o["shape_ok"] and o["size_ok"] is not False for o in objects)
    return {
        "prompt": p.text,
        "kind": "single" if k == 1 else "pair",
        "num_detected": len(found),
        "count_ok": count_ok,
        "colour_ok": all(o["colour_ok"] for o in objects),
        "shape_ok": all(o["shape_ok"] for o in objects),
        "relation_ok": relation_ok,
        "relation_error": relation_error,
        "all_ok": all_ok,
        "objects": objects,
    }


@dataclass
class AlignmentReport:
    """Accuracy per group ("seen", "heldout", …), kind ("single", "pair") and attribute; per-image scores.

    colour, shape and size are per prompt object (size only where the prompt names one); count, relation
    (two-object prompts) and all (everything right) are per image. `relation_errors[group]` splits the
    two-object images whose relation failed by `RELATION_ERRORS`, as shares of all two-object images."""

    accuracy: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    scores: list[dict[str, Any]] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    relation_errors: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"accuracy": self.accuracy, "counts": self.counts, "relation_errors": self.relation_errors}

    def table(self) -> str:
        """The accuracies as a plain-text table, one row per (group, kind)."""
        head = f"{'group':<10} {'kind':<7} {'n':>5} " + " ".join(f"{a:>8}" for a in ATTRIBUTES)
        lines = [head, "-" * len(head)]
        for g, kinds in self.accuracy.items():
            for kind, acc in kinds.items():
                cells = " ".join(f"{acc[a]:>8.1%}" if a in acc else f"{'-':>8}" for a in ATTRIBUTES)
                lines.append(f"{g:<10} {kind:<7} {self.counts[g][kind]:>5} {cells}")
        for g, errors in self.relation_errors.items():
            parts = ", ".join(f"{share:.1%} {RELATION_ERRORS[name]}" for name, share in errors.items())
            lines.append(f"relation failures, {g}: {parts}")
        return "\n".join(lines)


def evaluate(images: Any, prompts: Sequence[str], groups: Sequence[str] | None = None) -> AlignmentReport:
    """Score images `[N, 3, H, W]` in [-1, 1] (or a sequence of images) against their prompts, per group."""
    n = len(images)
    if n != len(prompts):
        raise ValueError(f"got {n} images but {len(prompts)} prompts; pass one prompt per image")
    groups = ["all"] * n if groups is None else list(groups)
    if len(groups) != n:
        raise ValueError(f"got {len(groups)} group labels for {n} images; pass one per image or none")
    scores = [score(images[i], prompts[i]) for i in range(n)]
    report = AlignmentReport(scores=scores, groups=groups)
    for g in dict.fromkeys(groups):  # first-seen order
        report.accuracy[g], report.counts[g] = {}, {}
        for kind in ("single", "pair"):
            mine = [s for s, gi in zip(scores, groups) if gi == g and s["kind"] == kind]
            if not mine:
                continue
            objs = [o for s in mine for o in s["objects"]]
            sized = [o["size_ok"] for o in objs if o["size_ok"] is not None]
            acc = {
                "colour": float(np.mean([o["colour_ok"] for o in objs])),
                "shape": float(np.mean([o["shape_ok"] for o in objs])),
                "count": float(np.mean([s["count_ok"] for s in mine])),
                "all": float(np.mean([s["all_ok"] for s in mine])),
            }
            if sized:
                acc["size"] = float(np.mean(sized))
            if kind == "pair":
                acc["relation"] = float(np.mean([s["relation_ok"] for s in mine]))
                report.relation_errors[g] = {
                    e: float(np.mean([s["relation_error"] == e for s in mine])) for e in RELATION_ERRORS}
            report.accuracy[g][kind] = acc
            report.counts[g][kind] = len(mine)
    return report


def evaluate_generator(generate: Callable[[list[str], int], Any], *, num: int = 200, seed: int = 0,
                       batch_size: int = 50) -> AlignmentReport:
    """Generate `num` images for each of the seen and held-out prompt suites and evaluate them.

    `generate(prompts, seed)` returns images `[B, 3, H, W]` in [-1, 1]; image i of a call must depend on
    seed + i only, so the metric is reproducible at any batch size."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    prompts, groups, images = [], [], []
    for split in ("seen", "heldout"):
        suite = alignment_prompts(split, num, seed)
        prompts += suite
        groups += [split] * len(suite)
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start:start + batch_size]
        out = generate(batch, seed + start)
        if len(out) != len(batch):
            raise ValueError(f"generate returned {len(out)} images for {len(batch)} prompts")
        images.extend(out[i] for i in range(len(batch)))
    return evaluate(images, prompts, groups)


# ----------------------------------------------------------------------------------------------
# The `alignment` entry of the metric registry (`ddpm eval --metric alignment`)
# ----------------------------------------------------------------------------------------------


def _alignment_unavailable(ctx: Any) -> str | None:
    if ctx.conditioning != "text":
        return f"alignment scores text-to-image samples; this model is {ctx.conditioning}-conditioned"
    if ctx.dataset_name != "shapes":
        return f"alignment reads images of the shapes dataset; this model was trained on {ctx.dataset_name!r}"
    return None


def _alignment(ctx: Any) -> Any:
    """Generate `num` images, half for seen and half for held-out prompts, and score them; the headline
    value is the share of images with everything right."""
    from .metrics import MetricResult

    o = ctx.options

    def generate(prompts: list[str], seed: int) -> Any:
        images, _ = ctx.pipe.generate(
            len(prompts), prompts=prompts, options=o.sampling_for(ctx.pipe, seed), batch_size=o.batch_size,
        )  # fmt: skip
        return images

    # At least one prompt of each kind per suite (even i: one object, odd i: two).
    report = evaluate_generator(generate, num=max(o.num // 2, 2), seed=o.seed, batch_size=o.batch_size)
    all_ok = float(np.mean([s["all_ok"] for s in report.scores]))
    acc = report.accuracy
    note = (
        f"images with everything right; single colour/shape seen {acc['seen']['single']['colour']:.2f}/"
        f"{acc['seen']['single']['shape']:.2f}, held-out {acc['heldout']['single']['colour']:.2f}/"
        f"{acc['heldout']['single']['shape']:.2f}; pair relation seen {acc['seen']['pair']['relation']:.2f}, "
        f"held-out {acc['heldout']['pair']['relation']:.2f}"
    )
    return MetricResult("alignment", all_ok, note, {**report.to_dict(), "table": report.table()})


def register() -> None:
    """Add `alignment` to `ddpm.evaluation.METRICS` (once; later calls do nothing)."""
    from .metrics import METRICS, Metric, register_metric

    if "alignment" not in METRICS:
        register_metric(Metric(
            "alignment", _alignment, "prompt alignment of shapes samples: colour, shape, count, relation",
            _alignment_unavailable,
        ))  # fmt: skip
