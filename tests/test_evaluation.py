"""Evaluation: Fréchet distance against closed forms and scipy, reference draws, the judge and its cache, the
metric registry and the harness on stand-in generators whose scores are known in advance."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.linalg
import torch

from ddpm.evaluation import (
    METRICS,
    EvalContext,
    EvalOptions,
    Judge,
    JudgeRecipe,
    Metric,
    MetricResult,
    balanced_labels,
    evaluate,
    format_table,
    frechet_distance,
    frechet_distance_from_stats,
    gaussian_stats,
    judge_for_tensors,
    parse_metrics,
    reference_draws,
    register_metric,
    results_to_dict,
    train_judge,
)
from ddpm.evaluation.frechet import GaussianStats
from ddpm.io.model_meta import ConditioningMeta, DataMeta, ModelMeta
from ddpm.pipelines import SamplingOptions

# ----------------------------------------------------------------------------------------------
# Fréchet distance
# ----------------------------------------------------------------------------------------------


def _stats(mu, cov):
    f64 = torch.float64
    return GaussianStats(torch.as_tensor(mu, dtype=f64), torch.as_tensor(cov, dtype=f64), 0)


def _scipy_fd(mu1, c1, mu2, c2):
    # The textbook formula with a general matrix square root, as an independent reference.
    covmean = scipy.linalg.sqrtm(c1 @ c2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(c1) + np.trace(c2) - 2 * np.trace(covmean))


def test_fd_diagonal_closed_form():
    # For diagonal covariances d^2 = |mu1 - mu2|^2 + sum_i (sqrt(c1_i) - sqrt(c2_i))^2 exactly.
    mu1, mu2 = torch.tensor([0.0, 1.0, -2.0]), torch.tensor([1.0, 1.0, 0.5])
    c1, c2 = torch.tensor([1.0, 4.0, 0.25]), torch.tensor([9.0, 1.0, 0.25])
    expect = float(((mu1 - mu2) ** 2).sum() + ((c1.sqrt() - c2.sqrt()) ** 2).sum())
    got = frechet_distance_from_stats(_stats(mu1, torch.diag(c1)), _stats(mu2, torch.diag(c2)))
    assert got == pytest.approx(expect, rel=1e-12)


def test_fd_matches_scipy_on_full_and_singular_covariances():
    rng = np.random.default_rng(0)
    d = 12
    for rank in (d, 5):  # full rank, then fewer samples than dimensions (singular)
        a, b = rng.normal(size=(d, rank)), rng.normal(size=(d, rank))
        c1, c2 = a @ a.T, b @ b.T + 0.1 * np.eye(d)
        mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
        got = frechet_distance_from_stats(_stats(mu1, c1), _stats(mu2, c2))
        assert got == pytest.approx(_scipy_fd(mu1, c1, mu2, c2), rel=1e-8)


def test_fd_of_samples_converges_to_the_gaussians_distance():
    g = torch.Generator().manual_seed(0)
    n, d = 200_000, 3
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.randn(n, d, generator=g, dtype=torch.float64) * 2 + 1
    # N(0, I) vs N(1, 4I): |mu|^2 = 3, trace term 3 * (1 - 2)^2 = 3.
    assert frechet_distance(x, y) == pytest.approx(6.0, rel=0.02)


def test_fd_symmetric_zero_on_itself_and_checks_input():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(50, 8, generator=g), torch.randn(60, 8, generator=g) + 0.3
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-9)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    assert gaussian_stats(a).count == 50
    with pytest.raises(ValueError, match="2-D"):
        frechet_distance(a[0], b)
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance(a[:1], b)
    with pytest.raises(ValueError, match="feature sizes differ"):
        frechet_distance(a, b[:, :4])
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(a, b.masked_fill(b > 2, float("nan")))


# ----------------------------------------------------------------------------------------------
# Reference draws
# ----------------------------------------------------------------------------------------------


def test_reference_draws_are_disjoint_stratified_and_reproducible():
    real_labels = torch.arange(300) % 3  # 100 per class
    sample_labels = balanced_labels(30, 3)
    assert torch.bincount(sample_labels).tolist() == [10, 10, 10]
    draws = reference_draws(30, real_labels, sample_labels=sample_labels, repeats=4, seed=7)
    assert len(draws) == 4
    for d in draws:
        assert len(d.sample_idx) == len(d.a) == len(d.b) == 30
        assert not set(d.a.tolist()) & set(d.b.tolist())
        assert torch.bincount(real_labels[d.a]).tolist() == [10, 10, 10]
        assert torch.bincount(real_labels[d.b]).tolist() == [10, 10, 10]
    assert not torch.equal(draws[0].a, draws[1].a)
    again = reference_draws(30, real_labels, sample_labels=sample_labels, repeats=4, seed=7)
    assert all(torch.equal(x.a, y.a) and torch.equal(x.b, y.b) for x, y in zip(draws, again))


def test_reference_draws_shrink_every_class_alike_when_real_data_is_short():
    real_labels = torch.tensor([0] * 10 + [1] * 40)  # class 0 can give two disjoint sets of 5 only
    sample_labels = torch.tensor([0] * 20 + [1] * 20)
    (d,) = reference_draws(40, real_labels, sample_labels=sample_labels)
    # ratio 5/20: five samples of each class, five real of each class on each side
    assert torch.bincount(sample_labels[d.sample_idx]).tolist() == [5, 5]
    assert torch.bincount(real_labels[d.a]).tolist() == [5, 5]
    assert torch.bincount(real_labels[d.b]).tolist() == [5, 5]
    (u,) = reference_draws(100, None, num_real=50)  # unlabelled: halves of the real data
    assert len(u.sample_idx) == len(u.a) == len(u.b) == 25
    with pytest.raises(ValueError, match="fewer than 2 images of classes \\[2\\]"):
        reference_draws(3, real_labels, sample_labels=torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="num_real"):
        reference_draws(3, None)


# ----------------------------------------------------------------------------------------------
# The judge
# ----------------------------------------------------------------------------------------------


def _bars(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Three classes of 8x8 images: a horizontal bar, a vertical bar, a blob; position and noise vary."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    x = torch.full((n, 1, 8, 8), -1.0)
    pos = torch.randint(2, 6, (n,), generator=g)
    for i in range(n):
        p, c = int(pos[i]), int(labels[i])
        if c == 0:
            x[i, 0, p, 1:7] = 1
        elif c == 1:
            x[i, 0, 1:7, p] = 1
        else:
            x[i, 0, p - 1 : p + 1, p - 1 : p + 1] = 1
    x = (x + 0.2 * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    return x, labels


TINY = JudgeRecipe(width=8, feature_dim=16, epochs=12, batch_size=32, lr=5e-3)


def test_judge_trains_deterministically_caches_and_reloads(tmp_path):
    x, y = _bars(240, 0)
    tx, ty = _bars(60, 1)
    threads = torch.get_num_threads()
    net1 = train_judge(x, y, num_classes=3, recipe=TINY)
    net2 = train_judge(x, y, num_classes=3, recipe=TINY)
    for k, v in net1.state_dict().items():
        assert torch.equal(v, net2.state_dict()[k]), k
    assert torch.get_num_threads() == threads  # restored after the one-thread training

    judge = judge_for_tensors("bars", x, y, tx, ty, num_classes=3, recipe=TINY, cache=tmp_path)
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and files[0].name.startswith("bars-") and files[0].suffix == ".safetensors"
    assert judge.test_accuracy >= 0.9  # three easy classes
    assert judge.info["num_test"] == 60 and judge.info["recipe"]["epochs"] == 12
    # A second call loads the cached file: same features, no retraining (the file is untouched).
    mtime = files[0].stat().st_mtime_ns
    again = judge_for_tensors("bars", x, y, tx, ty, num_classes=3, recipe=TINY, cache=tmp_path)
    assert files[0].stat().st_mtime_ns == mtime
    assert torch.equal(judge.features(tx), again.features(tx))
    assert judge.features(tx).shape == (60, 16)
    assert judge.predict(tx).shape == (60,)
    # Other data or another recipe is another judge.
    judge_for_tensors("bars", x[:-3], y[:-3], tx, ty, num_classes=3, recipe=TINY, cache=tmp_path)
    assert len(list(tmp_path.iterdir())) == 2
    with pytest.raises(ValueError, match=r"takes images \[N, 1, 8, 8\]"):
        judge.features(torch.zeros(2, 3, 8, 8))


def test_judge_cache_survives_a_damaged_file(tmp_path):
    x, y = _bars(90, 0)
    judge_for_tensors("bars", x, y, x, y, num_classes=3, recipe=TINY, cache=tmp_path)
    (path,) = tmp_path.iterdir()
    path.write_bytes(b"not a safetensors file")
    judge = judge_for_tensors("bars", x, y, x, y, num_classes=3, recipe=TINY, cache=tmp_path)
    assert isinstance(judge, Judge) and path.stat().st_size > 1000
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp files left behind


# ----------------------------------------------------------------------------------------------
# Registry and harness, on stand-in generators with known answers
# ----------------------------------------------------------------------------------------------


def _meta(condition, dataset, **conditioning):
    cond = ConditioningMeta(type=condition, **conditioning)
    return ModelMeta(conditioning=cond, data=DataMeta(dataset=dataset))


class FakePipe:
    """A class-conditional 'model' that returns real images of the requested class (drawn from `pool`),
    or, when `collapse` is set, the same image for every sample of a class."""

    def __init__(self, pool_x, pool_y, *, collapse=False):
        self.pool_x, self.pool_y, self.collapse = pool_x, pool_y, collapse
        self.meta = _meta("class", "bars", num_classes=3)
        self.calls = []

    def resolve(self, options):
        return options or SamplingOptions()

    def generate(self, num, *, class_labels=None, options=None, **kwargs):
        seed = options.seed
        self.calls.append((num, seed, options))
        out = []
        for i, c in enumerate(class_labels.tolist()):
            idx = (self.pool_y == c).nonzero().flatten()
            out.append(self.pool_x[idx[0 if self.collapse else (seed + i) % len(idx)]])
        return torch.stack(out), [{} for _ in out]


def _context(pipe, judge, real, **options):
    ctx = EvalContext(pipe, EvalOptions(**options), judge=judge)
    ctx._real = {"train": real, "test": real}  # the stand-in dataset, instead of load_dataset
    return ctx


@pytest.fixture(scope="module")
def bars_judge(tmp_path_factory):
    x, y = _bars(300, 0)
    tx, ty = _bars(90, 1)
    cache = tmp_path_factory.mktemp("judge")
    return judge_for_tensors("bars", x, y, tx, ty, num_classes=3, recipe=TINY, cache=cache)


def test_real_images_score_like_real_images_and_collapse_is_caught(bars_judge):
    real = _bars(600, 2)
    pool = _bars(300, 3)  # fresh real images the judge never saw, like samples
    good = _context(FakePipe(*pool), bars_judge, real, num=60, fd_repeats=3)
    res = evaluate(good, "fd,accuracy")
    assert list(res) == ["accuracy", "fd"]  # registry order
    assert res["accuracy"].value >= 0.9
    assert res["accuracy"].details["judge_test_accuracy"] == bars_judge.test_accuracy
    fd = res["fd"]
    assert fd.details["num"] == 60 and fd.details["repeats"] == 3 and fd.details["stratified"]
    assert fd.details["ratio"] < 2.0  # real vs real: a perfect generator sits near its floor
    assert fd.value == pytest.approx(sum(fd.details["per_draw"]) / 3)

    bad = _context(FakePipe(*pool, collapse=True), bars_judge, real, num=60, fd_repeats=3)
    collapsed = evaluate(bad, ["fd"])["fd"]
    assert collapsed.details["ratio"] > 3 * fd.details["ratio"]  # one image per class has no diversity


def test_evaluate_generates_once_with_the_options_and_reports(bars_judge):
    real = _bars(600, 2)
    pipe = FakePipe(*_bars(300, 3))
    sampling = SamplingOptions(sampler="ddim", steps=7, guidance_scale=2.0)
    ctx = _context(pipe, bars_judge, real, num=30, seed=5, sampling=sampling)
    res = evaluate(ctx, ["accuracy", "fd"])
    assert len(pipe.calls) == 1
    num, seed, o = pipe.calls[0]
    assert (num, seed, o.sampler, o.steps, o.guidance_scale) == (30, 5, "ddim", 7, 2.0)
    with pytest.raises(ValueError, match="seed as EvalOptions.seed"):
        EvalOptions(sampling=sampling.replace(seed=1))
    table = format_table(res)
    assert table.splitlines()[0].split() == ["metric", "value", "context"]
    assert "floor" in table and "judge's accuracy" in table
    blob = json.loads(json.dumps(results_to_dict(res)))
    assert set(blob) == {"accuracy", "fd"} and blob["fd"]["num"] == 30


def test_metric_selection_and_applicability(bars_judge):
    assert parse_metrics(None) is None and parse_metrics("all") is None
    assert parse_metrics(" fd, accuracy,fd ") == ["fd", "accuracy"]
    with pytest.raises(ValueError, match="unknown metric nope; choose from accuracy, fd, bpd"):
        parse_metrics("fd,nope")
    pipe = FakePipe(*_bars(30, 3))
    pipe.meta = _meta("none", "bars")
    ctx = _context(pipe, bars_judge, _bars(60, 2))
    with pytest.raises(ValueError, match="'accuracy' does not apply: .* unconditional"):
        evaluate(ctx, "accuracy")


def test_a_new_metric_is_one_registry_entry(bars_judge):
    def mean_pixel(ctx):
        x, _ = ctx.samples()
        return MetricResult("mean_pixel", float(x.mean()), "mean of generated pixels")

    register_metric(Metric("mean_pixel", mean_pixel, "mean pixel value"))
    try:
        ctx = _context(FakePipe(*_bars(30, 3)), bars_judge, _bars(60, 2), num=9)
        res = evaluate(ctx, "mean_pixel")
        assert math.isfinite(res["mean_pixel"].value) and "mean_pixel" in format_table(res)
        with pytest.raises(ValueError, match="already registered"):
            register_metric(Metric("mean_pixel", mean_pixel, "again"))
    finally:
        del METRICS["mean_pixel"]


def test_options_are_checked():
    with pytest.raises(ValueError, match="num must be a positive integer"):
        EvalOptions(num=0)
    with pytest.raises(ValueError, match="fd_split"):
        EvalOptions(fd_split="validation")


def test_context_needs_labelled_data_for_a_judge():
    pipe = SimpleNamespace(meta=_meta("none", "blobs"))
    ctx = EvalContext(pipe)
    ctx._real = {"train": (torch.zeros(4, 1, 8, 8), None), "test": (torch.zeros(4, 1, 8, 8), None)}
    with pytest.raises(ValueError, match="no class labels.*feature_extractor"):
        ctx.judge()


@pytest.mark.slow
def test_digits_judge_is_a_meaningful_judge():
    # The real recipe on the real data (~15 s on one thread the first time, then loaded from the cache):
    # the issue asks for >= 97% held-out accuracy before its verdicts mean anything. Measured: 98.9%.
    pipe = SimpleNamespace(meta=ModelMeta(data=DataMeta(dataset="digits", image_size=16, channels=1)))
    judge = EvalContext(pipe).judge()
    assert judge.info["num_test"] == 180 and judge.info["num_train"] == 1617
    assert judge.test_accuracy >= 0.97


def test_fd_on_unlabelled_data_needs_an_extractor(bars_judge):
    pipe = FakePipe(*_bars(60, 3))
    pipe.meta = _meta("none", "blobs")
    real = (_bars(200, 2)[0], None)  # an unlabelled dataset
    ctx = EvalContext(pipe, EvalOptions(num=30, fd_repeats=2))
    ctx._real = {"train": real, "test": real}
    ctx._samples, ctx._sample_labels = _bars(30, 4)[0], None
    assert "has none" in METRICS["fd"].unavailable(ctx)  # left out of the default set ...
    with pytest.raises(ValueError, match="'fd' does not apply: .*has none; pass a feature_extractor"):
        evaluate(ctx, "fd")  # ... and asking for it says why

    def mean_rows(images):  # a toy extractor: per-row means, [N, 8]
        return images.mean(dim=(1, 3))

    ctx = EvalContext(pipe, EvalOptions(num=30, fd_repeats=2), feature_extractor=mean_rows)
    ctx._real = {"train": real, "test": real}
    ctx._samples, ctx._sample_labels = _bars(30, 4)[0], None
    fd = evaluate(ctx, "fd")["fd"]
    assert fd.details["features"] == "mean_rows" and not fd.details["stratified"] and fd.details["num"] == 30
