"""FID / KID / precision-recall on the FID Inception-v3: our network against torch-fidelity's on the same
random weights and images, the metrics against direct formulas, the weights layouts, statistics files, the
cache and `ddpm fid`'s errors.

torch-fidelity is the reference graph (test-only; pytorch-fid needs torchvision, which cannot be installed
beside this CPU torch, so its layout is checked through its key names). The package's `__init__` imports
torchvision, so its `feature_extractor_inceptionv3` module is loaded from its file under a bare package
entry that does not run that `__init__` (`_torch_fidelity_inception`).

A 299 x 299 Inception on a CPU costs ~0.3 s an image: the image sets are tiny and one random model serves
the module.
"""

from __future__ import annotations

import functools
import importlib.util
import io
import sys
import types
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from ddpm.cli import main
from ddpm.evaluation import fid_metrics as fm
from ddpm.evaluation import fid_score as fs
from ddpm.evaluation.inception import (
    DIMS,
    RESIZE_MODES,
    WEIGHTS_ENV,
    FIDInceptionV3,
    load_inception,
    resize_tf1_bilinear,
)
from ddpm.io.inception_keys import BLOCKS, detect_layout, from_ours, to_ours


def _torch_fidelity_inception():
    """torch-fidelity's feature_extractor_inceptionv3 module, loaded without its package `__init__`
    (which imports torchvision): a bare `torch_fidelity` package entry whose path is the installed folder,
    then the module file itself via importlib.util.spec_from_file_location."""
    if "torch_fidelity" not in sys.modules:
        spec = importlib.util.find_spec("torch_fidelity")  # locating a package does not execute it
        if spec is None or spec.origin is None:
            pytest.skip("torch-fidelity is not installed (`make` installs it with pip --no-deps)")
        package = types.ModuleType("torch_fidelity")
        package.__path__ = [str(Path(spec.origin).parent)]
        sys.modules["torch_fidelity"] = package
    root = Path(sys.modules["torch_fidelity"].__path__[0])
    name = "torch_fidelity.feature_extractor_inceptionv3"
    if name not in sys.modules:
        module_spec = importlib.util.spec_from_file_location(name, root / "feature_extractor_inceptionv3.py")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        module_spec.loader.exec_module(module)
    return sys.modules[name]


def _random_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Our network's keys in torch-fidelity's layout, random weights and BatchNorm statistics (a copy)."""
    return {k: v.clone() for k, v in _random_weights(seed).items()}


@functools.lru_cache(maxsize=2)
def _random_weights(seed: int) -> dict[str, torch.Tensor]:
    """Random convs, BN scales near 1, and BN statistics measured on one batch of random images: an untrained
    network whose every layer is normalised, so its deep features vary between images as a trained one's do
    (with arbitrary statistics the pool3 features come out nearly constant and FID ~1e-12)."""
    from ddpm.evaluation.inception import prepare

    torch.manual_seed(seed)
    model = FIDInceptionV3()
    g = torch.Generator().manual_seed(seed + 1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) * 0.4 + 0.8)
            m.bias.data.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            m.momentum = None  # running statistics = the calibration batch's
    images = torch.randint(0, 256, (2, 3, 48, 48), generator=g, dtype=torch.uint8)
    with torch.no_grad():
        model.train()(prepare(images, "tf"))
    return {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("inception") / "weights-inception-random.pth"
    torch.save(_random_state_dict(), path)
    return path


@pytest.fixture(scope="module")
def ours(weights):
    return load_inception(weights)  # BatchNorms folded into the convs, as users get it


@pytest.fixture(scope="module")
def reference(weights):
    module = _torch_fidelity_inception()
    assert "torchvision" not in sys.modules  # the reference really runs without it
    return module.FeatureExtractorInceptionV3(
        "inception-v3-compat", ["64", "192", "768", "2048", "logits"],
        feature_extractor_weights_path=str(weights),
    )


def _rel(a, b) -> float:
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return float((a - b).abs().max() / b.abs().max())


# ----------------------------------------------------------------------------------------------
# The network against the reference graph
# ----------------------------------------------------------------------------------------------


def test_tf_resize_matches_torch_fidelity():
    _torch_fidelity_inception()
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x as tf1

    g = torch.Generator().manual_seed(0)
    for h, w in ((32, 32), (17, 45), (400, 310), (299, 299)):
        x = torch.rand(2, 3, h, w, generator=g) * 255
        want = tf1(x, size=(299, 299), align_corners=False)
        assert torch.allclose(resize_tf1_bilinear(x), want, atol=1e-4, rtol=0)


def test_features_match_torch_fidelity_at_every_size(ours, reference):
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (1, 3, 37, 45), generator=g, dtype=torch.uint8)
    want = reference(images)
    for i, dims in enumerate((*DIMS, "logits")):
        got = ours.features(images, dims=dims, resize="tf")
        assert got.shape == want[i].shape
        assert _rel(got, want[i]) < 1e-4, dims


def test_pytorch_fid_resize_is_its_recipe(ours, reference):
    # pytorch-fid: F.interpolate(x / 255) to 299, then 2x - 1, then the same blocks; torch-fidelity's
    # modules applied in pytorch-fid's order give the reference.
    g = torch.Generator().manual_seed(2)
    images = torch.randint(0, 256, (2, 3, 40, 28), generator=g, dtype=torch.uint8)
    x = 2 * F.interpolate(images.float() / 255, size=(299, 299), mode="bilinear", align_corners=False) - 1
    r = reference
    with torch.no_grad():
        for layer in (r.Conv2d_1a_3x3, r.Conv2d_2a_3x3, r.Conv2d_2b_3x3, r.MaxPool_1):
            x = layer(x)
        want = x.mean((2, 3))
    assert _rel(ours.features(images, dims=64, resize="pytorch-fid"), want) < 1e-4
    tf = ours.features(images, dims=64, resize="tf")
    assert _rel(tf, want) > 1e-3  # the two recipes are really different inputs


def _write_folders(root: Path) -> tuple[Path, Path]:
    """Two small folders with mixed sizes and PIL modes (RGB, L, RGBA, P, JPEG)."""
    rng = np.random.default_rng(3)
    a, b = root / "a", root / "b"
    (a / "sub").mkdir(parents=True)
    b.mkdir()
    noise = lambda h, w: rng.integers(0, 256, (h, w, 3), dtype=np.uint8)  # noqa: E731
    Image.fromarray(noise(32, 32)).save(a / "0.png")
    Image.fromarray(noise(32, 32)[..., 0]).save(a / "1.png")  # L
    Image.fromarray(np.dstack([noise(32, 32), noise(32, 32)[..., :1]]), "RGBA").save(a / "sub" / "2.png")
    Image.fromarray(noise(40, 28)).save(a / "3.jpg", quality=80)
    ramp = np.linspace(0, 255, 48, dtype=np.uint8)
    for i in range(3):
        smooth = np.stack(np.broadcast_arrays(ramp[None, :], ramp[:, None] // (i + 1), ramp[None, ::-1]), -1)
        img = Image.fromarray(np.ascontiguousarray(smooth))
        (img.convert("P") if i == 1 else img).save(b / f"{i}.png")
    return a, b


def _fid_reference(fa: np.ndarray, fb: np.ndarray) -> float:
    """Independent FID of two feature sets: np.cov statistics and torch-fidelity's formula (the root's trace
    from the eigenvalues of S_a S_b) at 64 dims; at 2048 dims (a [2048, 2048] eigen-decomposition takes ~10 s
    on one core) the nonzero eigenvalues of S_a S_b are taken as those of the small Gram product, which are
    the same numbers when N < D."""
    diff = fa.mean(0) - fb.mean(0)
    sa, sb = np.cov(fa, rowvar=False), np.cov(fb, rowvar=False)
    if fa.shape[1] <= 256:
        eig = np.linalg.eigvals(sa @ sb)
    else:
        xa, xb = fa - fa.mean(0), fb - fb.mean(0)
        m = (xa @ xb.T) / np.sqrt((len(fa) - 1) * (len(fb) - 1))
        eig = np.linalg.eigvals(m @ m.T)
    return float(diff @ diff + np.trace(sa) + np.trace(sb) - 2 * np.sqrt(eig.astype(complex)).real.sum())


def test_fid_of_two_folders_matches_the_reference_at_64_and_2048(tmp_path, ours, reference):
    a, b = _write_folders(tmp_path)
    feats = {}
    for name, folder in (("a", a), ("b", b)):
        rows = [reference(torch.from_numpy(np.array(Image.open(p).convert("RGB"))).permute(2, 0, 1)[None])
                for p in sorted(p for p in folder.rglob("*") if p.is_file())]  # fmt: skip
        feats[name] = {d: torch.cat([r[i] for r in rows]).double().numpy() for i, d in ((0, 64), (3, 2048))}
    for dims in (64, 2048):
        got = fs.fid(a, b, model=ours, dims=dims, cache=False, batch_size=3)
        want = _fid_reference(feats["a"][dims], feats["b"][dims])
        assert want > 0 and got.fid == pytest.approx(want, rel=1e-3), dims
        assert (got.num_a, got.num_b, got.dims) == (4, 3, dims)


# ----------------------------------------------------------------------------------------------
# Weights files
# ----------------------------------------------------------------------------------------------

# Key names of pytorch-fid's file (a torchvision Inception3 state dict; src/pytorch_fid/inception.py builds
# `_inception_v3(num_classes=1008, aux_logits=False)` and loads pt_inception-2015-12-05-6726825d.pth into it)
# and of its InceptionV3 wrapper (`self.blocks`: four nn.Sequential blocks).
PYTORCH_FID_KEYS = {
    "Conv2d_1a_3x3.conv.weight": "Conv2d_1a_3x3.conv.weight",
    "Conv2d_4a_3x3.bn.running_var": "Conv2d_4a_3x3.bn.running_var",
    "Mixed_5b.branch5x5_1.conv.weight": "Mixed_5b.branch5x5_1.conv.weight",
    "Mixed_6e.branch7x7dbl_5.bn.bias": "Mixed_6e.branch7x7dbl_5.bn.bias",
    "Mixed_7c.branch3x3dbl_3b.conv.weight": "Mixed_7c.branch3x3dbl_3b.conv.weight",
    "fc.weight": "fc.weight",
}
PYTORCH_FID_MODULE_KEYS = {
    "blocks.0.0.conv.weight": "Conv2d_1a_3x3.conv.weight",
    "blocks.0.2.bn.running_mean": "Conv2d_2b_3x3.bn.running_mean",
    "blocks.1.1.conv.weight": "Conv2d_4a_3x3.conv.weight",
    "blocks.2.0.branch_pool.conv.weight": "Mixed_5b.branch_pool.conv.weight",
    "blocks.2.3.branch3x3.conv.weight": "Mixed_6a.branch3x3.conv.weight",
    "blocks.2.7.branch7x7_3.bn.weight": "Mixed_6e.branch7x7_3.bn.weight",
    "blocks.3.0.branch7x7x3_4.conv.weight": "Mixed_7a.branch7x7x3_4.conv.weight",
    "blocks.3.2.branch3x3_2b.bn.running_var": "Mixed_7c.branch3x3_2b.bn.running_var",
}


def test_weights_layouts_are_told_apart_and_map_to_ours():
    sd = _random_state_dict(0)
    assert detect_layout(sd) == "torch-fidelity" and to_ours(sd)[0].keys() == sd.keys()
    for layout, known in (("pytorch-fid", PYTORCH_FID_KEYS), ("pytorch-fid-module", PYTORCH_FID_MODULE_KEYS)):
        theirs = from_ours(sd, layout)
        assert set(known) <= set(theirs), layout  # their known names are what we write
        back, found = to_ours(theirs)
        assert found == layout
        for their_key, our_key in known.items():
            assert torch.equal(back[our_key], theirs[their_key])
        expected = {k for k in sd if not (layout == "pytorch-fid-module" and k.startswith("fc."))}
        assert set(back) == expected
    theirs = from_ours(sd, "pytorch-fid")
    assert any(k.endswith("num_batches_tracked") for k in theirs)
    theirs["AuxLogits.fc.weight"] = torch.zeros(1000, 768)  # a kept auxiliary head is dropped too
    assert detect_layout(theirs) == "pytorch-fid" and set(to_ours(theirs)[0]) == set(sd)
    assert set(BLOCKS) == {k.split(".")[0] for k in sd} - {"fc"}


def test_every_layout_loads_the_same_weights(tmp_path):
    from ddpm.io.checkpoint import load_state_dict

    sd = _random_state_dict(0)
    for layout in ("pytorch-fid", "pytorch-fid-module"):
        path = tmp_path / f"{layout}.pth"
        torch.save(from_ours(sd, layout), path)
        back, found = to_ours(load_state_dict(path))
        assert found == layout
        assert all(torch.equal(v, sd[k]) for k, v in back.items())
    model = load_inception(path, fold=False)  # the wrapper's layout: no head, and it says so
    assert model.layout == "pytorch-fid-module" and not model.has_head
    ours = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert all(torch.equal(v, sd[k]) for k, v in ours.items() if not k.startswith("fc."))
    with pytest.raises(ValueError, match="no 1008-class layer"):
        model.features(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), dims="logits")


def test_weights_errors_name_the_file_and_where_to_get_it(tmp_path, monkeypatch):
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    with pytest.raises(FileNotFoundError, match="downloads nothing: get pt_inception-2015-12-05-6726825d"):
        load_inception()
    with pytest.raises(FileNotFoundError, match=r"nope\.pth \(--weights\) does not exist.*releases"):
        load_inception(tmp_path / "nope.pth")
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path / "env.pth"))
    with pytest.raises(FileNotFoundError, match=rf"env\.pth \({WEIGHTS_ENV}\) does not exist"):
        load_inception()
    bad = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(3)}, bad)
    with pytest.raises(ValueError, match="not an FID Inception-v3 weights file: .*missing.*unexpected"):
        load_inception(bad)
    sd = _random_state_dict(0)
    sd["fc.weight"] = torch.zeros(1000, 2048)  # torchvision's ImageNet head, not the 1008-class one
    torch.save(sd, bad)
    with pytest.raises(ValueError, match=r"wrong shape.*fc.weight \(1000, 2048\) \(expected \(1008, 2048"):
        load_inception(bad)


# ----------------------------------------------------------------------------------------------
# The metrics against direct formulas
# ----------------------------------------------------------------------------------------------


def _torch_fidelity_fid(a: fm.Stats, b: fm.Stats) -> float:
    # torch-fidelity's formula (metric_fid.fid_statistics_to_metric), written out: it imports torchvision.
    diff = a.mu - b.mu
    tr = np.sqrt(np.linalg.eigvals(a.sigma @ b.sigma).astype(complex)).real.sum()
    return float(diff @ diff + np.trace(a.sigma) + np.trace(b.sigma) - 2 * tr)


def test_fid_routes_agree_with_torch_fidelitys_formula():
    rng = np.random.default_rng(0)
    for n in (20, 150):  # fewer images than dimensions (singular covariances), then more
        fa, fb = rng.normal(size=(n, 64)), rng.normal(size=(n + 3, 64)) * 1.3 + 0.2
        a, b = fm.stats_of(fa), fm.stats_of(fb)
        want = _torch_fidelity_fid(a, b)
        assert fm.fid_from_stats(a, b, method="sqrtm") == pytest.approx(want, rel=1e-6)
        if n < 64:
            assert a.features is not None
            assert fm.fid_from_stats(a, b, method="low-rank") == pytest.approx(want, rel=1e-6)
        else:
            assert a.features is None
        assert fm.fid_from_stats(a, b) == pytest.approx(want, rel=1e-6)
    same = fm.stats_of(fa)
    assert abs(fm.fid_from_stats(same, same)) < 1e-8
    with pytest.raises(ValueError, match="do not match.*same --dims"):
        fm.fid_from_stats(fm.stats_of(fa), fm.stats_of(fa[:, :10]))


def test_kid_equals_the_direct_unbiased_mmd():
    rng = np.random.default_rng(1)
    m, d = 9, 5
    x, y = rng.normal(size=(m, d)), rng.normal(size=(m, d)) + 0.4

    def k(u, v):
        return (u @ v / d + 1) ** 3

    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    mean, std, size = fm.kernel_inception_distance(x, y, subsets=1, subset_size=m)  # one subset: all of them
    assert size == m and std == 0.0
    assert mean == pytest.approx(xx + yy - 2 * xy, rel=1e-10)
    # Many subsets: the mean of the subsets' values; the same distribution scores near 0, a shift above it.
    big_x, big_y = rng.normal(size=(300, d)), rng.normal(size=(300, d))
    near, spread, size = fm.kernel_inception_distance(big_x, big_y, subsets=20, subset_size=100)
    far, _, _ = fm.kernel_inception_distance(big_x, big_y + 1.0, subsets=20, subset_size=100)
    assert size == 100 and spread > 0 and abs(near) < 3 * spread and far > 20 * spread


def test_precision_recall_on_gaussian_clouds_with_known_overlap():
    rng = np.random.default_rng(2)
    n, d = 1000, 4
    real = rng.normal(size=(n, d))
    same = rng.normal(size=(n, d))
    p_same, r_same = fm.precision_recall(real, same)
    assert p_same > 0.8 and r_same > 0.8  # one distribution: nearly everything inside the other's balls
    far = rng.normal(size=(n, d)) + 50.0
    assert fm.precision_recall(real, far) == (0.0, 0.0)
    # Half the fakes from the real distribution, half far away: precision halves, recall stays.
    half = np.concatenate([rng.normal(size=(n // 2, d)), rng.normal(size=(n // 2, d)) + 50.0])
    p_half, r_half = fm.precision_recall(real, half)
    assert p_half == pytest.approx(p_same / 2, abs=0.05)
    assert r_half > r_same - 0.1
    with pytest.raises(ValueError, match="more than 3 images"):
        fm.precision_recall(real[:3], same)


# ----------------------------------------------------------------------------------------------
# Statistics files, the cache, the Python call
# ----------------------------------------------------------------------------------------------


def test_npz_round_trip_and_pytorch_fid_files(tmp_path):
    rng = np.random.default_rng(4)
    for n in (5, 40):  # features kept (n <= D) and not
        stats = fm.stats_of(rng.normal(size=(n, 16)))
        back = fm.load_stats(fm.save_stats(tmp_path / f"s{n}.npz", stats))
        assert np.array_equal(back.mu, stats.mu) and np.array_equal(back.sigma, stats.sigma)
        assert back.count == n and (back.features is None) == (n > 16)
    theirs = tmp_path / "pytorch-fid.npz"  # pytorch-fid's --save-stats writes exactly mu and sigma
    np.savez(theirs, mu=stats.mu, sigma=stats.sigma)
    assert fs.fid(theirs, tmp_path / "s40.npz").fid == pytest.approx(0.0, abs=1e-9)  # no weights needed
    np.savez(tmp_path / "other.npz", m=stats.mu)
    with pytest.raises(ValueError, match="no 'mu' and 'sigma'.*--save-stats"):
        fm.load_stats(tmp_path / "other.npz")
    with pytest.raises(ValueError, match="KID and precision/recall need images"):
        fs.fid(theirs, theirs, kid=True)


def test_folder_statistics_are_cached_by_content(tmp_path, weights, monkeypatch):
    a, b = _write_folders(tmp_path)
    cache = tmp_path / "cache"
    first = fs.fid(a, b, weights=weights, dims=64, cache=cache, device="cpu")
    assert len(list(cache.glob("*.npz"))) == 2

    def no_network(*args, **kwargs):
        raise AssertionError("a cached folder was pushed through the network again")

    monkeypatch.setattr(fs, "folder_features", no_network)
    assert fs.fid(a, b, weights=weights, dims=64, cache=cache, device="cpu").fid == first.fid
    monkeypatch.undo()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(b / "0.png")  # new content, new key
    changed = fs.fid(a, b, weights=weights, dims=64, cache=cache, device="cpu")
    assert changed.fid != first.fid and len(list(cache.glob("*.npz"))) == 3


def test_tensors_kid_and_pr_through_the_python_call(ours):
    g = torch.Generator().manual_seed(8)
    real = torch.rand(5, 3, 24, 24, generator=g) * 2 - 1
    fake = torch.rand(5, 1, 24, 24, generator=g) * 2 - 1  # grey samples are repeated to RGB
    res = fs.fid(real, fake, model=ours, dims=64, kid=True, pr=True, kid_subsets=4)
    assert res.fid > 0 and res.kid_subset_size == 5 and res.kid_std < 1e-12  # 5 of 5: subsets alike
    assert 0 <= res.precision <= 1 and 0 <= res.recall <= 1
    assert [line.split(":")[0] for line in res.lines()] == ["FID", "KID", "precision"]


# ----------------------------------------------------------------------------------------------
# `ddpm fid`
# ----------------------------------------------------------------------------------------------


def _cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(["fid", *map(str, argv)])
    return code, out.getvalue(), err.getvalue()


def test_cli_compares_saves_stats_and_reads_them_back(tmp_path, weights, monkeypatch):
    monkeypatch.setenv("DDPM_CACHE", str(tmp_path / "cache"))
    a, b = _write_folders(tmp_path)
    code, out, err = _cli(a, b, "--weights", weights, "--dims", "64", "--device", "cpu", "--quiet")
    assert code == 0, err
    value = float(out.split("FID:")[1].split()[0])
    code, out, err = _cli("--save-stats", a, tmp_path / "a.npz", "--weights", weights, "--dims", "64",
                          "--quiet")  # fmt: skip
    assert code == 0 and "wrote" in out and "of 4 images" in out, err
    monkeypatch.setenv(WEIGHTS_ENV, str(weights))
    code, out, err = _cli(tmp_path / "a.npz", b, "--dims", "64", "--quiet", "--no-cache")
    assert code == 0, err
    assert float(out.split("FID:")[1].split()[0]) == pytest.approx(value, rel=1e-6)


def test_cli_errors_are_one_clear_line(tmp_path, weights, monkeypatch):
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    a, b = _write_folders(tmp_path)
    (tmp_path / "empty").mkdir()
    cases = [
        ((a, b), "needs the Inception-v3 weights file and none was given"),
        ((a, b, "--weights", tmp_path / "nope.pth"), "nope.pth (--weights) does not exist"),
        ((a, b, "--dims", "100"), "argument --dims: invalid choice: 100 (choose from 64, 192, 768, 2048)"),
        ((a, tmp_path / "empty", "--weights", weights), "no images in"),
        ((a, tmp_path / "missing", "--weights", weights), "no such folder or statistics file"),
        ((a, b, "--resize", "lanczos"), "argument --resize: invalid choice"),
        (("--save-stats", a, tmp_path / "x.txt"), "must end in .npz"),
        ((a, b, "--weights", weights, "--device", "cuda:7" if not torch.cuda.is_available() else "nope"),
         "--device"),
    ]
    for argv, says in cases:
        code, out, err = _cli(*argv)
        assert code == 2 and says in err and "Traceback" not in err, (argv, err)
        assert err.strip().splitlines()[-1].startswith("ddpm fid: error:"), err
    assert not (tmp_path / "x.txt").exists()


def test_cli_choices_are_the_libraries():
    from ddpm.cli import fid as cli_fid

    assert cli_fid.DIMS == DIMS and cli_fid.RESIZE_MODES == RESIZE_MODES


# ----------------------------------------------------------------------------------------------
# `ddpm eval --metric fid`
# ----------------------------------------------------------------------------------------------


class _NoisePipe:
    """An unconditional stand-in model: image i is noise from seed + i (as PixelPipeline seeds images)."""

    def __init__(self):
        from ddpm.io.model_meta import ConditioningMeta, DataMeta, ModelMeta

        self.meta = ModelMeta(conditioning=ConditioningMeta(type="none"), data=DataMeta(dataset="x"))
        self.calls = []

    def resolve(self, options):
        from ddpm.pipelines import SamplingOptions

        return options or SamplingOptions()

    def generate(self, num, *, class_labels=None, options=None, **kwargs):
        self.calls.append((num, options.seed))
        gens = [torch.Generator().manual_seed(options.seed + i) for i in range(num)]
        return torch.stack([torch.rand(3, 16, 16, generator=g) * 2 - 1 for g in gens]), [{}] * num


def test_eval_metric_fid_samples_in_chunks_and_scores_them(tmp_path, weights, ours):
    from ddpm.evaluation import EvalContext, EvalOptions, evaluate

    a, _ = _write_folders(tmp_path)
    pipe = _NoisePipe()
    options = EvalOptions(num=5, batch_size=2, fid_reference=str(a), fid_weights=str(weights), fid_dims=64)
    res = evaluate(EvalContext(pipe, options), "fid")["fid"]
    assert pipe.calls == [(2, 0), (2, 2), (1, 4)]  # chunks seeded seed + start: the same images as one call
    samples = torch.cat([pipe.generate(5, options=pipe.resolve(None).replace(seed=0))[0]])
    want = fs.fid(a, samples, model=ours, dims=64, cache=False).fid
    assert res.value == pytest.approx(want, rel=1e-5)
    assert res.details["num_b"] == 5 and "64" in res.note


def test_eval_metric_fid_needs_a_reference_before_any_work(tmp_path, capsys):
    code = main(["eval", "--model", str(tmp_path / "nope.safetensors"), "--metric", "fid"])
    assert code == 2 and "--metric fid needs --reference DIR_OR_NPZ" in capsys.readouterr().err
    code = main(["eval", "--model", str(tmp_path / "nope.safetensors"), "--metric", "fid",
                 "--reference", str(tmp_path / "real")])  # fmt: skip
    assert code == 2 and "--reference" in capsys.readouterr().err
