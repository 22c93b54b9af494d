"""The captioned `shapes` dataset: determinism, caption/geometry agreement, held-out combinations, the
caption grammar and its parser, the registry entry and `ddpm data shapes`."""

from __future__ import annotations

import argparse
import itertools
import json

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm.data import load_dataset
from ddpm.data.shapes import (
    _GAP,
    _MARGIN,
    COLOURS,
    HELDOUT_OBJECTS,
    HELDOUT_RELATIONS,
    PALETTE,
    RELATIONS,
    SHAPES,
    SIZE_RANGES,
    SPLITS,
    ObjectPrompt,
    Prompt,
    Scene,
    ShapeObject,
    ShapesDataset,
    alignment_prompts,
    alignment_scenes,
    is_heldout,
    parse_prompt,
    render,
    scene_for,
    scene_from_prompt,
    shapes_dataset,
)
from ddpm.evaluation.alignment import score


def _relation_holds(a: ShapeObject, relation: str, b: ShapeObject) -> bool:
    dx, dy = b.cx - a.cx, b.cy - a.cy  # y grows downwards
    return {
        "to the left of": dx > 2 * abs(dy) - 1e-9 and dx > 0,
        "to the right of": -dx > 2 * abs(dy) - 1e-9 and dx < 0,
        "above": dy > 2 * abs(dx) - 1e-9 and dy > 0,
        "below": -dy > 2 * abs(dx) - 1e-9 and dy < 0,
    }[relation]


# -- determinism ---------------------------------------------------------------------------------


def test_items_are_a_function_of_seed_split_and_index() -> None:
    a = ShapesDataset(num=40, seed=5)
    b = ShapesDataset(num=400, seed=5)
    order = list(reversed(range(40)))  # access order and dataset length do not matter
    for i in order:
        assert torch.equal(a[i]["image"], b[i]["image"]) and a[i]["caption"] == b[i]["caption"]
    c = ShapesDataset(num=40, seed=6)
    assert sum(a[i]["caption"] != c[i]["caption"] for i in range(40)) > 30
    test = ShapesDataset(num=40, seed=5, split="test_seen")
    assert sum(a[i]["caption"] != test[i]["caption"] for i in range(40)) > 30
    assert scene_for("test", 3, 5) == scene_for("test_seen", 3, 5)  # "test" is the seen test split


def test_item_contract_and_as_tensor() -> None:
    ds = ShapesDataset(num=12, image_size=32)
    item = ds[0]
    assert set(item) == {"image", "caption"}
    assert item["image"].dtype == torch.float32 and item["image"].shape == (3, 32, 32)
    assert item["image"].min() >= -1 and item["image"].max() <= 1
    assert (ds.has_captions, ds.num_classes, ds.class_names, ds.channels, ds.image_size) == (
        True, None, None, 3, 32)  # fmt: skip
    x, labels = ds.as_tensor()  # the project's in-memory fast path (no labels: a captioned dataset)
    assert x.shape == (12, 3, 32, 32) and labels is None
    assert all(torch.equal(x[i], ds[i]["image"]) for i in range(12))
    assert ds.captions == [ds[i]["caption"] for i in range(12)]
    batch = ds.get_batch([3, 1])
    assert torch.equal(batch["image"][0], ds[3]["image"])
    assert batch["caption"] == [ds[3]["caption"], ds[1]["caption"]]
    assert np.array_equal(ds.pixels(5), render(ds.scene(5), 32))  # exact round trip to uint8
    assert ds[-1]["caption"] == ds[11]["caption"]
    with pytest.raises(IndexError):
        ds[12]


def test_one_scene_at_two_resolutions() -> None:
    """Geometry is resolution-free: the 64x64 render, box-downsampled, is the 32x32 render up to the coverage
    quantisation of supersampling (8x8 samples a pixel: a straight edge's coverage is off by up to 1/16, i.e.
    16 levels of 255, on single edge pixels; measured max 17, mean <= 0.38 over these scenes)."""
    for i in range(20):
        s = scene_for("train", i, 0)
        big = render(s, 64).astype(np.float64).reshape(32, 2, 32, 2, 3).mean(axis=(1, 3))
        small = render(s, 32).astype(np.float64)
        assert np.abs(big - small).max() <= 20.0 and np.abs(big - small).mean() < 0.5


# -- captions agree with geometry ----------------------------------------------------------------


@pytest.mark.parametrize("split", ["train", "test_seen", "test_heldout", "all"])
def test_caption_and_geometry_agree(split: str) -> None:
    ds = ShapesDataset(split=split, num=300, seed=1)
    kinds = set()
    for i in range(len(ds)):
        s = ds.scene(i)
        assert parse_prompt(ds[i]["caption"]) == s.prompt
        kinds.add(len(s.objects))
        for o in s.objects:
            lo, hi = SIZE_RANGES[o.size]
            assert lo <= o.half <= hi
            assert _MARGIN - 1e-9 <= o.cx - o.half and o.cx + o.half <= 1 - _MARGIN + 1e-9
            assert _MARGIN - 1e-9 <= o.cy - o.half and o.cy + o.half <= 1 - _MARGIN + 1e-9
        if s.relation is not None:
            a, b = s.objects
            assert _relation_holds(a, s.relation, b), s
            # the bounding boxes stay apart along the relation's axis
            along_x = s.relation in ("to the left of", "to the right of")
            d = abs(b.cx - a.cx) if along_x else abs(b.cy - a.cy)
            assert d >= a.half + b.half + _GAP - 1e-9
    assert kinds == {1, 2}


def test_render_draws_each_object_in_its_colour_on_black() -> None:
    for size in (32, 64):
        for i in range(60):
            s = scene_for("all", i, 2)
            img = render(s, size)
            assert img.dtype == np.uint8 and img.shape == (size, size, 3)
            assert (img[0, 0] == 0).all() and (img[-1, -1] == 0).all()  # margins keep the corners black
            for o in s.objects:
                # a pixel well inside the object (below the centre for a triangle, whose top is narrow)
                y = int((o.cy + (0.4 * o.half if o.shape == "triangle" else 0.0)) * size)
                assert tuple(img[y, int(o.cx * size)]) == PALETTE[o.colour], (s, size)
            # anti-aliased: some edge pixels are blends, neither background nor a palette colour
            pure = {tuple(c) for c in PALETTE.values()} | {(0, 0, 0)}
            assert any(tuple(px) not in pure for px in img.reshape(-1, 3))


def test_colours_are_well_separated() -> None:
    pal = np.asarray(list(PALETTE.values()), dtype=np.float64)
    dist = np.linalg.norm(pal[:, None] - pal[None], axis=-1) + np.eye(len(pal)) * 1e9
    assert len(COLOURS) >= 6 and set(SHAPES) >= {"circle", "square", "triangle"}
    assert dist.min() > 120
    assert np.linalg.norm(pal, axis=-1).min() > 200  # every colour stands far from the black background


# -- held-out combinations -----------------------------------------------------------------------


def test_train_never_shows_a_heldout_combination() -> None:
    train = [scene_for("train", i, 0) for i in range(3000)]
    assert not any(is_heldout(s) for s in train)
    objects = {(o.colour, o.shape) for s in train for o in s.objects}
    assert objects == {(c, s) for c in COLOURS for s in SHAPES} - HELDOUT_OBJECTS
    assert {s.relation for s in train if s.relation} == set(RELATIONS)


def test_heldout_split_shows_only_and_all_heldout_combinations() -> None:
    held = [scene_for("test_heldout", i, 0) for i in range(1500)]
    assert all(is_heldout(s) for s in held)
    singles = {(s.objects[0].colour, s.objects[0].shape) for s in held if s.relation is None}
    assert singles == set(HELDOUT_OBJECTS)
    # every held-out relation shows up in both phrasings ("triangle below circle" = "circle above triangle")
    inverse = {"to the left of": "to the right of", "above": "below"}
    shown = set()
    for s in held:
        if s.relation:
            a, b = s.objects
            shown |= {("colour", a.colour, s.relation, b.colour), ("shape", a.shape, s.relation, b.shape)}
    for attr, first, rel, second in HELDOUT_RELATIONS:
        assert (attr, first, rel, second) in shown and (attr, second, inverse[rel], first) in shown


def test_is_heldout_reads_either_phrasing() -> None:
    circle = ShapeObject("green", "circle", "small", 0.5, 0.2, 0.13)
    triangle = ShapeObject("white", "triangle", "small", 0.5, 0.7, 0.13)
    assert is_heldout(Scene((circle, triangle), "above"))  # circle above triangle is held out
    assert is_heldout(Scene((triangle, circle), "below"))  # ... also when phrased the other way
    assert not is_heldout(Scene((triangle, circle), "above"))
    assert is_heldout(Scene((ShapeObject("blue", "circle", "large", 0.5, 0.5, 0.2),)))
    assert not is_heldout(Scene((ShapeObject("blue", "square", "large", 0.5, 0.5, 0.2),)))


# -- caption grammar -----------------------------------------------------------------------------


def test_parser_reads_every_caption_of_the_grammar() -> None:
    objs = [ObjectPrompt(c, s, z) for c in COLOURS for s in SHAPES for z in (None, "small", "large")]
    for o in objs:
        assert parse_prompt(o.text) == Prompt((o,))
    for a, rel, b in itertools.product(objs[::5], RELATIONS, objs[::7]):
        p = Prompt((a, b), rel)
        assert parse_prompt(p.text) == p
    assert parse_prompt("  A Small  RED circle   to the LEFT of a blue square. ") == Prompt(
        (ObjectPrompt("red", "circle", "small"), ObjectPrompt("blue", "square")), "to the left of")
    assert parse_prompt("a small blue square to the left of a green triangle").text == (
        "a small blue square to the left of a green triangle")


@pytest.mark.parametrize("bad", ["a pink circle", "two red circles", "a red circle near a blue square",
                                 "red circle", "a red circle above", "", "a huge red circle"])
def test_parser_explains_the_grammar(bad: str) -> None:
    with pytest.raises(ValueError, match="colours red, green"):
        parse_prompt(bad)


def test_scene_from_prompt_draws_what_it_says() -> None:
    rng = np.random.default_rng(0)
    for text in alignment_prompts("seen", 60, 4) + alignment_prompts("heldout", 60, 4):
        s = scene_from_prompt(text, rng)
        assert s.caption == parse_prompt(text).text
        if s.relation:
            assert _relation_holds(s.objects[0], s.relation, s.objects[1])


# -- prompt suites -------------------------------------------------------------------------------


def test_alignment_prompt_suites() -> None:
    seen = alignment_prompts("seen", 40, 0)
    assert seen == alignment_prompts("seen", 40, 0) and seen != alignment_prompts("seen", 40, 1)
    assert alignment_prompts("seen", 10, 0) == seen[:10]
    kinds = [parse_prompt(p).relation is None for p in seen]
    assert kinds == [i % 2 == 0 for i in range(40)]  # alternating one- and two-object prompts
    assert not any(is_heldout(s) for s in alignment_scenes("seen", 200, 0))
    assert all(is_heldout(s) for s in alignment_scenes("heldout", 200, 0))
    with pytest.raises(ValueError, match="'seen' or 'heldout'"):
        alignment_prompts("train", 10)


# -- registry and options ------------------------------------------------------------------------


def test_load_dataset_reaches_the_factory() -> None:
    ds = load_dataset("shapes", split="test", num=8, seed=2, image_size=64)
    assert isinstance(ds, ShapesDataset) and len(ds) == 8 and ds.image_size == 64
    assert ds[3]["caption"] == scene_for("test_seen", 3, 2).caption
    assert load_dataset("shapes", split="train", num=4)[0]["image"].shape == (3, 32, 32)  # default size
    with pytest.raises(ValueError, match="flip=False"):
        load_dataset("shapes", flip=True, num=4)
    with pytest.raises(ValueError, match="RGB"):
        shapes_dataset(channels=1, num=4)


def test_load_dataset_options_reach_shapes_and_unknown_ones_are_named() -> None:
    pairs = load_dataset("shapes", num=12, pair_fraction=1.0)
    singles = load_dataset("shapes", num=12, pair_fraction=0.0)
    assert all(len(pairs.scene(i).objects) == 2 for i in range(12))
    assert all(len(singles.scene(i).objects) == 1 for i in range(12))
    with pytest.raises(ValueError, match="takes no option 'pairs'; its options: num, pair_fraction"):
        load_dataset("shapes", num=4, pairs=1.0)


def test_relations_option_limits_the_phrasings_only() -> None:
    lead_first = ["to the left of", "above"]
    ds = load_dataset("shapes", num=40, pair_fraction=1.0, relations=lead_first)
    assert {ds.scene(i).relation for i in range(40)} == set(lead_first)
    for i in range(40):  # the captions still tell the truth: the first object leads along the axis
        a, b = ds.scene(i).objects
        assert (a.cx < b.cx) if ds.scene(i).relation == "to the left of" else (a.cy < b.cy)
    # the default draws all four, and scene_for with the same relations gives the dataset's scenes
    default = ShapesDataset(num=60, pair_fraction=1.0).scenes
    assert {s.relation for s in default} == set(RELATIONS)
    assert ds.scene(7) == scene_for("train", 7, pair_fraction=1.0, relations=tuple(lead_first))
    for bad in ([], ["beside"], ["above", "above"]):
        with pytest.raises(ValueError, match="relations must be distinct names"):
            ShapesDataset(num=4, relations=bad)


def test_caption_curriculum_and_rephrasings_by_step_stay_true_to_the_pictures() -> None:
    ds = load_dataset("shapes", num=200, pair_fraction=0.9, lead_first_steps=100, rephrase=True)
    idx = list(range(200))
    early, late = ds.captions_at(idx, 99), ds.captions_at(idx, 100)
    pairs = [i for i in idx if ds.scene(i).relation]
    assert all(parse_prompt(early[i]).relation in ("to the left of", "above") for i in pairs)
    trailing = [parse_prompt(late[i]).relation in ("to the right of", "below") for i in pairs]
    assert 0.35 < np.mean(trailing) < 0.65  # rephrased at random after the curriculum
    for caps in (early, late, ds.captions_at(idx, 7_000)):
        for i in range(0, 200, 3):  # every wording describes the picture: the analyser agrees
            s = score(ds.images[i], caps[i])
            assert s["relation_ok"] in (True, None)
            assert all(o["colour_ok"] and o["shape_ok"] for o in s["objects"])
    singles = [i for i in idx if not ds.scene(i).relation]
    assert all(late[i] == early[i] == ds.captions[i] for i in singles)
    assert ds.captions_at(idx, 123) == ds.captions_at(idx, 123) != ds.captions_at(idx, 124)  # pure in step
    # without the options the captions are the fixed ones at every step
    fixed = ShapesDataset(num=20).captions
    assert ShapesDataset(num=20).captions_at(range(20), 0) == fixed
    assert ShapesDataset(num=20, lead_first_steps=5).captions_at(range(20), 5) == fixed
    with pytest.raises(ValueError, match="non-negative integer"):
        ShapesDataset(num=4, lead_first_steps=-1)
    with pytest.raises(ValueError, match="relations must hold both"):
        ShapesDataset(num=4, relations=["to the left of", "above"], rephrase=True)


@pytest.mark.parametrize("kw, match", [
    ({"split": "valid"}, "unknown shapes split"), ({"num": 0}, "positive"),
    ({"image_size": 8}, ">= 16"), ({"pair_fraction": 1.5}, "[0, 1]"),
])
def test_bad_options_say_what_to_do(kw: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match.replace("[", r"\[").replace("]", r"\]")):
        ShapesDataset(**{"num": 4, **kw})


def test_splits_list_matches_the_cli() -> None:
    from ddpm.cli.data import SHAPES_SPLITS

    assert SHAPES_SPLITS == SPLITS


# -- ddpm data shapes ----------------------------------------------------------------------------


def _cli(argv: list[str]) -> int:
    from ddpm.cli import data

    parser = argparse.ArgumentParser(prog="ddpm")
    data.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_writes_a_captioned_folder_that_loads_back_exactly(tmp_path) -> None:
    out = tmp_path / "shapes"
    argv = ["data", "shapes", "--num", "24", "--out", str(out), "--seed", "3", "--split", "test_heldout"]
    assert _cli(argv) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names[:4] == ["000000.png", "000000.txt", "000001.png", "000001.txt"]
    assert len(list(out.glob("*.png"))) == len(list(out.glob("*.txt"))) == 24
    ref = ShapesDataset(num=24, seed=3, split="test_heldout")
    folder = load_dataset(str(out), split="all")
    assert len(folder) == 24 and folder.has_captions
    for i in range(24):
        assert torch.equal(folder[i]["image"], ref[i]["image"])
        assert folder[i]["caption"] == ref[i]["caption"]
    meta = json.loads(Image.open(out / "000005.png").text["ddpm"])
    assert (meta["dataset"], meta["split"], meta["seed"], meta["index"]) == ("shapes", "test_heldout", 3, 5)
    assert meta["scene"]["relation"] == ref.scene(5).relation


def test_cli_refuses_a_non_empty_folder(tmp_path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="--overwrite"):
        _cli(["data", "shapes", "--num", "2", "--out", str(tmp_path)])
    assert _cli(["data", "shapes", "--num", "2", "--out", str(tmp_path), "--overwrite", "--size", "64"]) == 0
    assert Image.open(tmp_path / "000001.png").size == (64, 64)
    with pytest.raises(NotADirectoryError):
        _cli(["data", "shapes", "--num", "2", "--out", str(tmp_path / "keep.txt")])
    with pytest.raises(ValueError, match="--size must be at least 16"):
        _cli(["data", "shapes", "--num", "2", "--out", str(tmp_path / "new"), "--size", "8"])
    assert not (tmp_path / "new").exists()
