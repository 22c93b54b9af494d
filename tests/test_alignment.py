"""The prompt-alignment evaluator: near-perfect on the dataset's own renders (so its numbers on generated
images can be trusted), robust to moderate noise and blur, and impossible to satisfy with noise or with the
wrong picture."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from ddpm.data.shapes import (
    PALETTE,
    Scene,
    ShapeObject,
    alignment_prompts,
    alignment_scenes,
    render,
    scene_for,
    scene_from_prompt,
)
from ddpm.evaluation.alignment import RELATION_ERRORS, analyse, evaluate, evaluate_generator, score


def _signed(img: np.ndarray) -> torch.Tensor:
    """uint8 `[H, W, 3]` -> float `[3, H, W]` in [-1, 1], as a model would output."""
    return torch.from_numpy(img).permute(2, 0, 1).float() / 127.5 - 1


def _suite(size: int, n: int, seed: int, *, noise: float = 0.0, blur: float = 0.0):
    """Ground-truth renders of the seen and held-out prompt suites, optionally degraded."""
    gen = torch.Generator().manual_seed(seed)
    images, prompts, groups = [], [], []
    for split in ("seen", "heldout"):
        for s in alignment_scenes(split, n, seed):
            x = _signed(render(s, size))
            if blur:
                x = torch.from_numpy(ndimage.gaussian_filter(x.numpy(), (0, blur, blur)))
            images.append((x + noise * torch.randn(x.shape, generator=gen)).clamp(-1, 1))
            prompts.append(s.caption)
            groups.append(split)
    return images, prompts, groups


def _every_accuracy(report) -> list[float]:
    return [v for kinds in report.accuracy.values() for acc in kinds.values() for v in acc.values()]


# -- the dataset's own renders -------------------------------------------------------------------


@pytest.mark.parametrize("size, n", [(32, 200), (64, 100)])
def test_ground_truth_scores_at_least_98_percent_on_every_attribute(size: int, n: int) -> None:
    report = evaluate(*_suite(size, n, seed=11))
    assert set(report.accuracy) == {"seen", "heldout"}
    for group in ("seen", "heldout"):
        assert set(report.accuracy[group]) == {"single", "pair"}
        assert set(report.accuracy[group]["single"]) == {"colour", "shape", "size", "count", "all"}
        assert set(report.accuracy[group]["pair"]) == {"colour", "shape", "size", "count", "relation", "all"}
        assert report.counts[group] == {"single": n // 2, "pair": n // 2}
    assert min(_every_accuracy(report)) >= 0.98, report.table()


def test_analyser_recovers_the_scene_geometry() -> None:
    """Colour and shape exact; centre within a third of a pixel; half side within 5%."""
    for size in (32, 64):
        for i in range(60):
            s = scene_for("all", i, 7)
            found = analyse(render(s, size))
            assert len(found) == len(s.objects), s
            for o in s.objects:
                d = min(found, key=lambda f: (f.cx - o.cx) ** 2 + (f.cy - o.cy) ** 2)
                assert (d.colour, d.shape, d.size) == (o.colour, o.shape, o.size), (s, d)
                assert abs(d.cx - o.cx) * size < 0.34 and abs(d.cy - o.cy) * size < 0.34, (s, d)
                assert abs(d.half - o.half) < 0.05 * o.half, (s, d)


def test_tensor_and_uint8_inputs_agree() -> None:
    s = scene_for("train", 3, 0)
    img = render(s, 32)
    ref = analyse(img)
    for other in (analyse(_signed(img)), analyse(_signed(img).numpy())):  # equal up to float rounding
        assert [(o.colour, o.shape, o.size, o.pixels) for o in other] == [
            (o.colour, o.shape, o.size, o.pixels) for o in ref]
        assert np.allclose([(o.cx, o.cy, o.half) for o in other], [(o.cx, o.cy, o.half) for o in ref])
    with pytest.raises(ValueError, match=r"\[3, H, W\]"):
        analyse(np.zeros((32, 32), dtype=np.uint8))


# -- robustness: what generated images look like -------------------------------------------------


@pytest.mark.parametrize("noise, blur", [(0.15, 0.0), (0.0, 0.7), (0.1, 0.5)])
def test_moderate_noise_and_blur_keep_accuracy_high(noise: float, blur: float) -> None:
    # noise: std in the [-1, 1] range (0.15 = 19 levels of 255); blur: Gaussian std in pixels at 32x32
    report = evaluate(*_suite(32, 120, seed=5, noise=noise, blur=blur))
    assert min(_every_accuracy(report)) >= 0.95, report.table()


def test_touching_objects_are_still_counted_apart() -> None:
    # two different colours side by side, and two same-coloured squares joined by a one-pixel bridge
    a = ShapeObject("red", "square", "large", 0.30, 0.5, 0.2)
    b = ShapeObject("blue", "circle", "large", 0.70, 0.5, 0.2)
    found = analyse(render(Scene((a, b), "to the left of"), 32))
    assert sorted((f.colour, f.shape) for f in found) == [("blue", "circle"), ("red", "square")]
    c = ShapeObject("green", "square", "large", 0.25, 0.5, 0.19)
    d = ShapeObject("green", "square", "large", 0.75, 0.5, 0.19)
    img = render(Scene((c, d), "to the left of"), 32)
    img[16, :] = np.where(img[16, :].any(-1, keepdims=True), img[16, :], PALETTE["green"])  # the bridge
    found = analyse(img)
    assert [(f.colour, f.shape) for f in found] == [("green", "square")] * 2
    assert score(img, "a green square to the left of a green square")["all_ok"]


# -- it cannot be fooled -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["uniform", "gaussian", "dark gaussian", "black"])
def test_noise_and_blank_images_score_near_zero(kind: str) -> None:
    gen = torch.Generator().manual_seed(0)
    shape = (100, 3, 32, 32)
    images = {
        "uniform": lambda: torch.rand(shape, generator=gen) * 2 - 1,
        "gaussian": lambda: torch.randn(shape, generator=gen).clamp(-1, 1),
        "dark gaussian": lambda: (0.4 * torch.randn(shape, generator=gen) - 0.7).clamp(-1, 1),
        "black": lambda: -torch.ones(shape),
    }[kind]()
    report = evaluate(images, alignment_prompts("seen", 100, 0))
    assert max(_every_accuracy(report)) <= 0.05, report.table()


def _swap(s: Scene, i: int, **change) -> Scene:
    objs = list(s.objects)
    objs[i] = ShapeObject(**{**objs[i].__dict__, **change})
    return Scene(tuple(objs), s.relation, s.mention_size)


def test_each_attribute_fails_on_the_wrong_picture() -> None:
    a = ShapeObject("red", "circle", "small", 0.25, 0.5, 0.13)
    b = ShapeObject("blue", "square", "large", 0.70, 0.5, 0.2)
    s = Scene((a, b), "to the left of", (True, True))
    prompt = s.caption
    assert prompt == "a small red circle to the left of a large blue square"
    right = score(render(s, 32), prompt)
    assert right["all_ok"] and right["count_ok"] and right["relation_ok"] and right["relation_error"] is None

    wrong_colour = score(render(_swap(s, 0, colour="green"), 32), prompt)
    assert not wrong_colour["colour_ok"] and wrong_colour["shape_ok"] and wrong_colour["relation_ok"]
    wrong_shape = score(render(_swap(s, 1, shape="triangle"), 32), prompt)
    assert wrong_shape["colour_ok"] and not wrong_shape["shape_ok"] and not wrong_shape["all_ok"]
    wrong_size = score(render(_swap(s, 0, size="large", half=0.2, cx=0.24), 32), prompt)
    assert wrong_size["objects"][0]["size_ok"] is False and wrong_size["colour_ok"]
    assert not wrong_size["all_ok"]
    mirrored = Scene((_swap(s, 0, cx=0.75).objects[0], _swap(s, 1, cx=0.27).objects[1]), s.relation)
    wrong_place = score(render(mirrored, 32), prompt)
    assert wrong_place["colour_ok"] and wrong_place["shape_ok"] and wrong_place["relation_ok"] is False
    assert wrong_place["relation_error"] == "mirrored"
    top, bottom = _swap(s, 0, cx=0.5, cy=0.22).objects[0], _swap(s, 1, cx=0.5, cy=0.7).objects[1]
    stacked = Scene((top, bottom), s.relation)
    wrong_axis = score(render(stacked, 32), prompt)
    assert wrong_axis["colour_ok"] and wrong_axis["relation_error"] == "off_axis"
    only_one = score(render(Scene((a,)), 32), prompt)
    assert not only_one["count_ok"] and only_one["relation_ok"] is False
    assert only_one["relation_error"] == "missing" and score(render(Scene((a,)), 32), "a red circle")[
        "relation_error"] is None
    assert only_one["objects"][1]["detected"] is None
    extra = score(render(s, 32), "a red circle")
    assert extra["colour_ok"] and extra["shape_ok"] and not extra["count_ok"] and not extra["all_ok"]


def test_shuffled_prompts_score_low() -> None:
    scenes = alignment_scenes("seen", 120, 3)
    images = [render(s, 32) for s in scenes]
    prompts = [s.caption for s in scenes]
    shifted = prompts[2:] + prompts[:2]  # keeps one-object prompts on one-object images
    report = evaluate(images, shifted)
    assert report.accuracy["all"]["single"]["all"] < 0.15 and report.accuracy["all"]["pair"]["all"] < 0.1
    # every failed relation is put down to exactly one cause
    errors = report.relation_errors["all"]
    assert set(errors) == set(RELATION_ERRORS) and errors["missing"] > 0.5
    assert sum(errors.values()) == pytest.approx(1 - report.accuracy["all"]["pair"]["relation"])
    assert "relation failures, all:" in report.table() and "relation_errors" in report.to_dict()


# -- the generator interface and the registry entry ----------------------------------------------


def _ideal_generator(prompts: list[str], seed: int) -> torch.Tensor:
    """A perfect model: image i draws a true scene for prompt i from seed + i alone."""
    scenes = [scene_from_prompt(p, np.random.default_rng(seed + i)) for i, p in enumerate(prompts)]
    return torch.stack([_signed(render(s, 32)) for s in scenes])


def test_evaluate_generator_is_batch_size_invariant_and_scores_the_ideal_model() -> None:
    a = evaluate_generator(_ideal_generator, num=40, seed=1, batch_size=7)
    b = evaluate_generator(_ideal_generator, num=40, seed=1, batch_size=80)
    assert a.accuracy == b.accuracy
    assert min(_every_accuracy(a)) >= 0.98, a.table()
    assert "heldout" in a.table() and "relation" in a.table()
    with pytest.raises(ValueError, match="returned 3 images"):
        evaluate_generator(lambda p, s: _ideal_generator(p, s)[:3], num=4, batch_size=4)


def test_evaluate_checks_its_inputs() -> None:
    with pytest.raises(ValueError, match="one prompt per image"):
        evaluate(torch.zeros(2, 3, 32, 32), ["a red circle"])
    with pytest.raises(ValueError, match="group labels"):
        evaluate(torch.zeros(1, 3, 32, 32), ["a red circle"], ["seen", "heldout"])
    with pytest.raises(ValueError, match="shapes caption"):
        score(torch.zeros(3, 32, 32), "a photo of a cat")


class _TextPipe:
    """Stands in for a text-to-image pipeline trained on shapes: draws the ideal image for each prompt."""

    def __init__(self, conditioning: str = "text", dataset: str = "shapes") -> None:
        from ddpm.io.model_meta import ConditioningMeta, DataMeta, ModelMeta

        text = {"kind": "word_transformer"} if conditioning == "text" else None
        k = 3 if conditioning == "class" else None
        cond = ConditioningMeta(type=conditioning, text_encoder=text, num_classes=k)
        self.meta = ModelMeta(conditioning=cond, data=DataMeta(dataset=dataset))

    def resolve(self, options):
        from ddpm.pipelines import SamplingOptions

        return options or SamplingOptions()

    def generate(self, num: int, *, prompts: list[str], options, **_: object):
        assert num == len(prompts)
        return _ideal_generator(prompts, options.seed), [{} for _ in prompts]


def test_alignment_metric_entry() -> None:
    from ddpm.evaluation import METRICS, EvalContext, EvalOptions
    from ddpm.evaluation import evaluate as run_metrics
    from ddpm.evaluation.alignment import register

    register()
    register()  # a second call is harmless
    assert "alignment" in METRICS
    ctx = EvalContext(_TextPipe(), EvalOptions(num=24, batch_size=8))
    result = run_metrics(ctx, "alignment")["alignment"]
    assert result.value >= 0.98 and "held-out" in result.note
    assert result.details["accuracy"]["heldout"]["pair"]["relation"] >= 0.98
    for pipe, why in [(_TextPipe("class"), "text-to-image"), (_TextPipe(dataset="digits"), "shapes dataset")]:
        with pytest.raises(ValueError, match=why):
            run_metrics(EvalContext(pipe, EvalOptions(num=4)), "alignment")
