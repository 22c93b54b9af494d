"""`shapes`: a captioned, procedurally drawn dataset of one or two coloured shapes, for text-to-image work the
project can judge itself (`ddpm.evaluation.alignment` reads the images back).

A scene holds one object ("a small red circle") or two objects and a spatial relation ("a blue square to the
left of a large yellow triangle"). Geometry lives in normalised coordinates (x right, y down, both in [0, 1]),
so one scene renders at any resolution; the renderer supersamples each object's coverage and blends it onto a
plain black background (anti-aliased edges, no torchvision). Item i of a split is a pure function of
(seed, split, i), so any number of images is reproducible; a dataset renders its `num` images once, into
memory (20,000 at 32x32 take about 3 s of one core).

Some combinations never appear in the "train" split, so a text model's compositional generalisation can be
tested on them: the (colour, shape) objects in `HELDOUT_OBJECTS`, and the relations in `HELDOUT_RELATIONS`
(a colour or shape left of / above another, in whichever phrasing: "a circle below a triangle" is the
held-out "triangle above circle").

| name     | code                         | meaning                                                 |
| -------- | ---------------------------- | ------------------------------------------------------- |
| cx, cy   | `ShapeObject.cx`, `.cy`      | centre of the object's bounding box, in [0, 1]          |
| h        | `ShapeObject.half`           | half the bounding-box side (a circle's radius), [0, 1]  |
| A rel B  | `Scene.objects`, `.relation` | object 0 stands in `relation` to object 1               |
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .dataset import TensorImageDataset

__all__ = [
    "COLOURS",
    "PALETTE",
    "BACKGROUND",
    "SHAPES",
    "SIZES",
    "SIZE_RANGES",
    "RELATIONS",
    "SPLITS",
    "HELDOUT_OBJECTS",
    "HELDOUT_RELATIONS",
    "ShapeObject",
    "Scene",
    "ObjectPrompt",
    "Prompt",
    "parse_prompt",
    "coverage",
    "render",
    "sample_scene",
    "is_heldout",
    "scene_for",
    "scene_from_prompt",
    "ShapesDataset",
    "shapes_dataset",
    "alignment_scenes",
    "alignment_prompts",
    "NEGATIVE_KINDS",
    "hard_negatives",
]

# Saturated colours on black, at least ~135 apart in RGB, so blur and generation noise do not blend them.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (230, 30, 30),
    "green": (30, 200, 50),
    "blue": (40, 90, 255),
    "yellow": (250, 220, 30),
    "purple": (190, 50, 220),
    "white": (240, 240, 240),
}
COLOURS: tuple[str, ...] = tuple(PALETTE)
BACKGROUND: tuple[int, int, int] = (0, 0, 0)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
SIZES: tuple[str, ...] = ("small", "large")
# Half-side h of each size class, as a fraction of the image side: at 32x32 a small object spans 8-9 pixels.
SIZE_RANGES: dict[str, tuple[float, float]] = {"small": (0.12, 0.14), "large": (0.19, 0.21)}
RELATIONS: tuple[str, ...] = ("to the left of", "to the right of", "above", "below")
SPLITS: tuple[str, ...] = ("train", "test_seen", "test_heldout", "test", "all")

# Never drawn in "train": one object per shape, each with a different colour.
HELDOUT_OBJECTS: frozenset[tuple[str, str]] = frozenset(
    {("red", "triangle"), ("blue", "circle"), ("yellow", "square")}
)
# (attribute, first, canonical relation, second): never drawn in "train" in either phrasing. Canonical
# relations are "to the left of" and "above"; "A to the right of B" is "B to the left of A".
HELDOUT_RELATIONS: frozenset[tuple[str, str, str, str]] = frozenset(
    {
        ("colour", "white", "above", "red"),
        ("colour", "purple", "to the left of", "green"),
        ("shape", "circle", "above", "triangle"),
        ("shape", "square", "to the left of", "circle"),
    }
)

_MARGIN = 0.02  # free border around every object, fraction of the image side
_GAP = 0.06  # least free space between the bounding boxes of two objects (about 2 pixels at 32x32)
_DOMINANCE = 0.5  # off-axis offset of a pair is at most this fraction of its on-axis offset
_SUPERSAMPLE = 8  # coverage samples per pixel side
# Each split draws from its own random stream; the prompt suites of the alignment metric have two more.
_SPLIT_CODES = {"train": 0, "test_seen": 1, "test_heldout": 2, "all": 3, "prompts_seen": 4,
                "prompts_heldout": 5}
_LEADING = ("to the left of", "above")  # "A <rel> B" names the leading object (smaller x or y) first
_INVERSE = {"to the left of": "to the right of", "to the right of": "to the left of", "above": "below",
            "below": "above"}


@dataclass(frozen=True)
class ShapeObject:
    """One drawn object: colour, shape, size class, bounding-box centre and half side (normalised)."""

    colour: str
    shape: str
    size: str
    cx: float
    cy: float
    half: float


@dataclass(frozen=True)
class ObjectPrompt:
    """One object as a caption names it; `size` is None where the caption does not say."""

    colour: str
    shape: str
    size: str | None = None

    @property
    def text(self) -> str:
        words = ([self.size] if self.size else []) + [self.colour, self.shape]
        return "a " + " ".join(words)


@dataclass(frozen=True)
class Prompt:
    """A caption of the grammar: one object, or two objects and the relation of the first to the second."""

    objects: tuple[ObjectPrompt, ...]
    relation: str | None = None

    @property
    def text(self) -> str:
        if self.relation is None:
            return self.objects[0].text
        return f"{self.objects[0].text} {self.relation} {self.objects[1].text}"

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class Scene:
    """A drawable scene: objects, the relation of object 0 to object 1, and which sizes the caption names."""

    objects: tuple[ShapeObject, ...]
    relation: str | None = None
    mention_size: tuple[bool, ...] = ()

    @property
    def prompt(self) -> Prompt:
        named = self.mention_size or (False,) * len(self.objects)
        objs = tuple(ObjectPrompt(o.colour, o.shape, o.size if m else None)
                     for o, m in zip(self.objects, named))
        return Prompt(objs, self.relation)

    @property
    def caption(self) -> str:
        return self.prompt.text

    def rephrased(self) -> Scene:
        """The same picture described the other way round: "A left of B" as "B right of A"."""
        if self.relation is None:
            return self
        return Scene(self.objects[::-1], _INVERSE[self.relation], self.mention_size[::-1])

    def leading_first(self) -> Scene:
        """The phrasing that names the leading object (the left or the upper one) first."""
        return self if self.relation in (None, *_LEADING) else self.rephrased()


_OBJECT_RE = r"an?\s+(?:(small|large)\s+)?({c})\s+({s})".format(c="|".join(COLOURS), s="|".join(SHAPES))
_PROMPT_RE = re.compile(
    r"^{o}(?:\s+({r})\s+{o})?$".format(o=_OBJECT_RE, r="|".join(re.escape(r) for r in RELATIONS))
)
GRAMMAR = (
    "'a [small|large] <colour> <shape>' or 'a [small|large] <colour> <shape> <relation> a [small|large] "
    f"<colour> <shape>', with colours {', '.join(COLOURS)}; shapes {', '.join(SHAPES)}; relations "
    + ", ".join(f"'{r}'" for r in RELATIONS)
)


def parse_prompt(text: str) -> Prompt:
    """Read a caption of the shapes grammar back into a `Prompt` (case, spacing, a final "." are free)."""
    clean = " ".join(str(text).lower().strip().rstrip(".").split())
    m = _PROMPT_RE.match(clean)
    if m is None:
        raise ValueError(f"cannot read prompt {text!r} as a shapes caption; write it as {GRAMMAR}")
    size1, colour1, shape1, relation, size2, colour2, shape2 = m.groups()
    first = ObjectPrompt(colour1, shape1, size1)
    if relation is None:
        return Prompt((first,))
    return Prompt((first, ObjectPrompt(colour2, shape2, size2)), relation)


def coverage(shape: str, cx: float, cy: float, half: float, *, x0: int, y0: int, width: int, height: int,
             image_size: int, supersample: int = _SUPERSAMPLE) -> np.ndarray:
    """Share of each pixel of the window `[y0:y0+height, x0:x0+width]` the shape covers: `[height, width]`."""
    n = supersample
    offsets = (np.arange(n) + 0.5) / n
    u = (x0 + np.arange(width)[:, None] + offsets[None, :]).reshape(-1) / image_size  # [width * n]
    v = (y0 + np.arange(height)[:, None] + offsets[None, :]).reshape(-1) / image_size  # [height * n]
    du, dv = u[None, :] - cx, v[:, None] - cy  # broadcast to [height * n, width * n]
    if shape == "circle":
        inside = du * du + dv * dv <= half * half
    elif shape == "square":
        inside = (np.abs(du) <= half) & (np.abs(dv) <= half)
    elif shape == "triangle":  # apex up at (cx, cy - h), base from (cx - h, cy + h) to (cx + h, cy + h)
        inside = (dv <= half) & (np.abs(du) <= (dv + half) / 2)
    else:
        raise ValueError(f"unknown shape {shape!r}; choose one of {', '.join(SHAPES)}")
    return inside.reshape(height, n, width, n).mean(axis=(1, 3))


def render(scene: Scene, image_size: int = 32) -> np.ndarray:
    """Draw a scene anti-aliased on the black background: uint8 `[image_size, image_size, 3]`."""
    if image_size < 16:
        raise ValueError(f"image_size must be at least 16 to draw distinguishable shapes, got {image_size}")
    img = np.empty((image_size, image_size, 3), dtype=np.float64)
    img[:] = BACKGROUND
    for o in scene.objects:
        x0 = max(int(np.floor((o.cx - o.half) * image_size)), 0)
        y0 = max(int(np.floor((o.cy - o.half) * image_size)), 0)
        x1 = min(int(np.ceil((o.cx + o.half) * image_size)), image_size)
        y1 = min(int(np.ceil((o.cy + o.half) * image_size)), image_size)
        alpha = coverage(o.shape, o.cx, o.cy, o.half, x0=x0, y0=y0, width=x1 - x0, height=y1 - y0,
                         image_size=image_size)[..., None]
        patch = img[y0:y1, x0:x1]
        patch += alpha * (np.asarray(PALETTE[o.colour], dtype=np.float64) - patch)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def is_heldout(scene: Scene) -> bool:
    """Whether a scene shows a combination that the "train" split never draws."""
    if any((o.colour, o.shape) in HELDOUT_OBJECTS for o in scene.objects):
        return True
    if scene.relation is None:
        return False
    canonical = scene.leading_first()  # "A right of B" is the combination "B left of A"
    (a, b), rel = canonical.objects, canonical.relation
    return ("colour", a.colour, rel, b.colour) in HELDOUT_RELATIONS or (
        "shape", a.shape, rel, b.shape) in HELDOUT_RELATIONS


def _draw_object(rng: np.random.Generator, allowed: list[tuple[str, str]]) -> tuple[str, str, str, float]:
    colour, shape = allowed[int(rng.integers(len(allowed)))]
    size = SIZES[int(rng.integers(len(SIZES)))]
    return colour, shape, size, float(rng.uniform(*SIZE_RANGES[size]))


def _place_pair(
    rng: np.random.Generator, ha: float, hb: float, relation: str
) -> tuple[tuple[float, float], tuple[float, float]]:
    """Centres of A and B such that A stands in `relation` to B, clearly and without overlap."""
    a_leads = relation in _LEADING
    h_lead, h_trail = (ha, hb) if a_leads else (hb, ha)
    lo, hi = h_lead + _MARGIN, 1 - h_trail - _MARGIN  # range of the leading and trailing on-axis centres
    d = float(rng.uniform(h_lead + h_trail + _GAP, hi - lo))  # on-axis distance between the centres
    lead = float(rng.uniform(lo, hi - d))
    p_a, p_b = (lead, lead + d) if a_leads else (lead + d, lead)
    q_a = float(rng.uniform(ha + _MARGIN, 1 - ha - _MARGIN))
    # B's off-axis centre stays within _DOMINANCE * d of A's, so the stated axis clearly dominates.
    q_lo, q_hi = max(hb + _MARGIN, q_a - _DOMINANCE * d), min(1 - hb - _MARGIN, q_a + _DOMINANCE * d)
    q_b = float(rng.uniform(q_lo, q_hi))
    if relation in ("to the left of", "to the right of"):
        return (p_a, q_a), (p_b, q_b)
    return (q_a, p_a), (q_b, p_b)


def sample_scene(rng: np.random.Generator, *, split: str = "train", kind: str = "any",
                 pair_fraction: float = 0.6, relations: tuple[str, ...] = RELATIONS) -> Scene:
    """Draw a random scene of a split; `kind` is "single", "pair" or "any" (pairs with `pair_fraction`);
    pairs are captioned with one of `relations`."""
    split = "test_seen" if split == "test" else split
    if split not in _SPLIT_CODES or split.startswith("prompts"):
        raise ValueError(f"unknown shapes split {split!r}; choose one of {', '.join(SPLITS)}")
    if kind == "any":
        kind = "pair" if rng.random() < pair_fraction else "single"
    if kind not in ("single", "pair"):
        raise ValueError(f"kind must be 'single', 'pair' or 'any', got {kind!r}")
    every = [(c, s) for c in COLOURS for s in SHAPES]
    seen = [cs for cs in every if cs not in HELDOUT_OBJECTS]
    if kind == "single":
        pool = sorted(HELDOUT_OBJECTS) if split == "test_heldout" else every if split == "all" else seen
        colour, shape, size, h = _draw_object(rng, pool)
        cx, cy = (float(rng.uniform(h + _MARGIN, 1 - h - _MARGIN)) for _ in range(2))
        return Scene((ShapeObject(colour, shape, size, cx, cy, h),), None, (bool(rng.random() < 0.5),))
    pool = every if split in ("all", "test_heldout") else seen
    for _ in range(10_000):  # rejection: the held-out pairs are a fixed, sizeable share of all pairs
        (ca, sa, za, ha), (cb, sb, zb, hb) = _draw_object(rng, pool), _draw_object(rng, pool)
        relation = relations[int(rng.integers(len(relations)))]
        (ax, ay), (bx, by) = _place_pair(rng, ha, hb, relation)
        mention = (bool(rng.random() < 0.5), bool(rng.random() < 0.5))
        objs = (ShapeObject(ca, sa, za, ax, ay, ha), ShapeObject(cb, sb, zb, bx, by, hb))
        scene = Scene(objs, relation, mention)
        if split == "all" or is_heldout(scene) == (split == "test_heldout"):
            return scene
    raise RuntimeError("could not draw a pair scene for split " + split)  # unreachable with the sets above


def scene_for(
    split: str, index: int, seed: int = 0, *, kind: str = "any", pair_fraction: float = 0.6,
    relations: tuple[str, ...] = RELATIONS,
) -> Scene:
    """The scene of item `index` of a split: a pure function of (seed, split, index)."""
    rng = np.random.default_rng([seed, _SPLIT_CODES["test_seen" if split == "test" else split], index])
    base = "test_" + split.split("_")[1] if split.startswith("prompts") else split
    return sample_scene(rng, split=base, kind=kind, pair_fraction=pair_fraction, relations=relations)


class ShapesDataset(TensorImageDataset):
    """Captioned dataset of `num` rendered scenes, held in memory: item i is
    `{"image": FloatTensor[3, H, W] in [-1, 1], "caption": str}`, a pure function of (seed, split, i).

    Being a `TensorImageDataset`, it has the project's batch access (`get_batch`, `as_tensor() -> (images,
    None)`, `captions`) and trains from one tensor; `scene(i)` gives the spec behind item i. `relations`
    limits the phrasings of two-object captions, e.g. to ("to the left of", "above"), where the object
    named first always leads along the axis.

    Training can vary the captions with the step (`captions_at`, the pictures never change): for the first
    `lead_first_steps` steps every two-object caption names its leading (left or upper) object first, a
    curriculum that teaches which object is which before the direction words; after that, `rephrase` words
    each draw of a two-object image either way ("A left of B" / "B right of A") at random."""

    def __init__(self, *, split: str = "train", image_size: int = 32, num: int = 20000, seed: int = 0,
                 pair_fraction: float = 0.6, relations: tuple[str, ...] | list[str] = RELATIONS,
                 lead_first_steps: int = 0, rephrase: bool = False) -> None:
        if split not in SPLITS:
            raise ValueError(f"unknown shapes split {split!r}; choose one of {', '.join(SPLITS)}")
        if int(num) != num or num < 1:
            raise ValueError(f"num must be a positive number of images, got {num}")
        if not 0.0 <= pair_fraction <= 1.0:
            raise ValueError(f"pair_fraction is a probability in [0, 1], got {pair_fraction}")
        if int(image_size) != image_size or image_size < 16:
            raise ValueError(f"image_size must be an integer >= 16 to draw tellable shapes, got {image_size}")
        if int(seed) != seed or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed}")
        relations = tuple(relations)
        unknown = [r for r in relations if r not in RELATIONS]
        if not relations or unknown or len(set(relations)) != len(relations):
            raise ValueError(
                f"relations must be distinct names from {list(RELATIONS)}; got {list(relations)}"
            )
        if int(lead_first_steps) != lead_first_steps or lead_first_steps < 0:
            raise ValueError(f"lead_first_steps must be a non-negative integer, got {lead_first_steps}")
        if (lead_first_steps or rephrase) and any(_INVERSE[r] not in relations for r in relations):
            raise ValueError(
                "lead_first_steps and rephrase reword captions into both phrasings of an axis, so relations "
                f"must hold both; got {list(relations)}"
            )
        self.split, self.pair_fraction, self.relations = split, float(pair_fraction), relations
        self.lead_first_steps, self.rephrase = int(lead_first_steps), bool(rephrase)
        self.scenes = [scene_for(split, i, int(seed), pair_fraction=self.pair_fraction, relations=relations)
                       for i in range(int(num))]
        pixels = np.stack([render(s, int(image_size)) for s in self.scenes])  # [N, H, W, 3] uint8
        images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
        super().__init__(images, captions=[s.caption for s in self.scenes], seed=int(seed))

    def captions_at(self, indices: Sequence[int], step: int) -> list[str]:
        """Captions of `indices` at training step `step` (see the class notes); a pure function of both."""
        if step >= self.lead_first_steps and not self.rephrase:
            return super().captions_at(indices, step)
        scenes = [self.scenes[int(i)].leading_first() for i in indices]
        if step >= self.lead_first_steps:  # rephrase: either wording, a coin per draw
            coins = np.random.default_rng([self.seed, 0x4E4A, int(step)]).random(len(scenes)) < 0.5
            scenes = [s.rephrased() if c else s for s, c in zip(scenes, coins)]
        return [s.caption for s in scenes]

    def scene(self, index: int) -> Scene:
        """The scene spec of item `index`: what its caption says and where each object is."""
        return self.scenes[self._index(index)]

    def pixels(self, index: int) -> np.ndarray:
        """Item `index` as the uint8 `[H, W, 3]` render (exact: the images hold k / 127.5 - 1)."""
        x = self.images[self._index(index)]
        return ((x + 1.0) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()


def shapes_dataset(*, split: str = "train", image_size: int | None = 32, num: int = 20000, seed: int = 0,
                   channels: int | None = None, flip: bool = False, holdout_fraction: float | None = None,
                   pair_fraction: float = 0.6, relations: tuple[str, ...] | list[str] = RELATIONS,
                   lead_first_steps: int = 0, rephrase: bool = False) -> ShapesDataset:
    """Registry factory for `ddpm.data.load_dataset("shapes", ...)`.

    The held-out combinations are fixed (see `HELDOUT_OBJECTS`), so `holdout_fraction` does not apply;
    flips and grey images are refused because they would falsify the captions."""
    if flip:
        raise ValueError("shapes captions say 'left of' / 'right of', which a horizontal flip would falsify: "
                         "use flip=False for the shapes dataset")
    if channels not in (None, 3):
        raise ValueError(f"shapes images are RGB (captions name colours); got channels={channels}, use 3")
    return ShapesDataset(split=split, image_size=32 if image_size is None else image_size, num=num, seed=seed,
                         pair_fraction=pair_fraction, relations=relations, lead_first_steps=lead_first_steps,
                         rephrase=rephrase)


def scene_from_prompt(prompt: str | Prompt, rng: np.random.Generator) -> Scene:
    """A random scene that a prompt describes truly (sizes it leaves open are drawn): the ideal generator."""
    p = parse_prompt(prompt) if isinstance(prompt, str) else prompt
    sizes = [o.size or SIZES[int(rng.integers(len(SIZES)))] for o in p.objects]
    halves = [float(rng.uniform(*SIZE_RANGES[z])) for z in sizes]
    if p.relation is None:
        lo, hi = halves[0] + _MARGIN, 1 - halves[0] - _MARGIN
        centres = [(float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi)))]
    else:
        centres = list(_place_pair(rng, halves[0], halves[1], p.relation))
    objs = tuple(ShapeObject(o.colour, o.shape, z, x, y, h)
                 for o, z, (x, y), h in zip(p.objects, sizes, centres, halves))
    return Scene(objs, p.relation, tuple(o.size is not None for o in p.objects))


def alignment_scenes(split: str = "seen", n: int = 200, seed: int = 0) -> list[Scene]:
    """Scenes behind `alignment_prompts`: item i is one object for even i, two objects for odd i."""
    if split not in ("seen", "heldout"):
        raise ValueError(f"alignment prompt split must be 'seen' or 'heldout', got {split!r}")
    if n < 1:
        raise ValueError(f"n must be a positive number of prompts, got {n}")
    return [scene_for("prompts_" + split, i, seed, kind="single" if i % 2 == 0 else "pair") for i in range(n)]


def alignment_prompts(split: str = "seen", n: int = 200, seed: int = 0) -> list[str]:
    """Prompt suite of the alignment metric: one- and two-object captions (alternating) of seen or held-out
    combinations; deterministic in (split, n, seed)."""
    return [s.caption for s in alignment_scenes(split, n, seed)]


NEGATIVE_KINDS: tuple[str, ...] = ("colour", "shape", "relation")


def hard_negatives(prompt: str | Prompt) -> dict[str, str | None]:
    """The false captions of a two-object caption that keep its words and change one binding (the test
    of Yuksekgonul et al. 2023, "bag of words", on this grammar): "colour" swaps the two objects' colours,
    "shape" their shapes, "relation" reverses the relation (A left of B -> A right of B). A kind is None
    where it would give back the same caption (equal colours or shapes) or the caption has one object."""
    p = parse_prompt(prompt) if isinstance(prompt, str) else prompt
    out: dict[str, str | None] = dict.fromkeys(NEGATIVE_KINDS)
    if p.relation is None:
        return out
    a, b = p.objects
    if a.colour != b.colour:
        swapped = (ObjectPrompt(b.colour, a.shape, a.size), ObjectPrompt(a.colour, b.shape, b.size))
        out["colour"] = Prompt(swapped, p.relation).text
    if a.shape != b.shape:
        swapped = (ObjectPrompt(a.colour, b.shape, a.size), ObjectPrompt(b.colour, a.shape, b.size))
        out["shape"] = Prompt(swapped, p.relation).text
    out["relation"] = Prompt(p.objects, _INVERSE[p.relation]).text
    return out
