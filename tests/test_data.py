"""ddpm.data: built-in datasets, splits, flips, transforms, image folders and image modes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm.data import (
    ImageDataset,
    TensorImageDataset,
    builtin_names,
    flip_mask,
    holdout_split,
    load_dataset,
    register_builtin,
    split_factory,
)
from ddpm.data import transforms as T

# -- built-in datasets -------------------------------------------------------------------------------


def test_digits_all_is_sklearn_digits_at_16px():
    from sklearn.datasets import load_digits

    ds = load_dataset("digits", split="all")
    assert len(ds) == 1797
    assert (ds.channels, ds.image_size, ds.num_classes) == (1, 16, 10)
    assert ds.class_names == [str(d) for d in range(10)]
    assert not ds.has_captions
    x, y = ds.as_tensor()
    assert x.shape == (1797, 1, 16, 16) and x.dtype == torch.float32
    assert float(x.min()) == -1.0 and float(x.max()) == 1.0
    ref = load_digits()
    assert torch.equal(y, torch.from_numpy(ref.target.astype(np.int64)))
    # Served pixels are PIL's bilinear resize of the 8x8 images scaled to [0, 1] (an independent
    # implementation of the same filter).
    want = np.stack([_pil_resize(a / 16.0, (16, 16)) for a in ref.images[:50]])
    assert np.abs(T.to_unit(x[:50, 0]).numpy() - want).max() < 1e-5
    item = ds[5]
    assert set(item) == {"image", "label"} and item["label"] == int(ref.target[5])
    assert item["image"].shape == (1, 16, 16)


def test_digits_options_size_and_channels():
    ds = load_dataset("digits", split="all", image_size=8, channels=3)
    x, _ = ds.as_tensor()
    from sklearn.datasets import load_digits

    ref = torch.from_numpy(load_digits().images).float() / 16.0 * 2 - 1
    assert x.shape == (1797, 3, 8, 8)
    assert torch.allclose(x[:, 0], ref) and torch.equal(x[:, 0], x[:, 2])


def test_faces_200_at_32px_with_face_and_non_face_labels():
    ds = load_dataset("faces", split="all")
    assert len(ds) == 200 and (ds.channels, ds.image_size) == (1, 32)
    assert ds.class_names == ["face", "non_face"]
    x, y = ds.as_tensor()
    assert x.shape == (200, 1, 32, 32)
    assert -1.0 <= float(x.min()) and float(x.max()) <= 1.0 and float(x.std()) > 0.1
    assert y[:100].eq(0).all() and y[100:].eq(1).all()


def test_builtin_rejects_folder_options_and_bad_arguments():
    with pytest.raises(ValueError, match="no options"):
        load_dataset("digits", labels="none")
    with pytest.raises(ValueError, match="split"):
        load_dataset("digits", split="val")
    with pytest.raises(ValueError, match="channels"):
        load_dataset("digits", channels=2)
    with pytest.raises(FileNotFoundError, match="digits"):
        load_dataset("no_such_dataset_or_folder")


def test_register_builtin_serves_through_load_dataset():
    def tiny(*, image_size=None, channels=None):
        images = torch.linspace(-1, 1, 20 * 4).reshape(20, 1, 2, 2)
        return TensorImageDataset(images, labels=torch.arange(20) % 2)

    register_builtin("tiny_test_set", split_factory(tiny), replace=True)
    assert "tiny_test_set" in builtin_names()
    with pytest.raises(ValueError, match="already registered"):
        register_builtin("tiny_test_set", lambda **kw: None)
    train = load_dataset("tiny_test_set", holdout_fraction=0.2)
    test = load_dataset("tiny_test_set", split="test", holdout_fraction=0.2)
    assert (len(train), len(test)) == (16, 4)
    assert test.labels.bincount().tolist() == [2, 2]
    register_builtin("not_a_dataset", split_factory(lambda **kw: [1, 2, 3]), replace=True)
    with pytest.raises(TypeError, match="ImageDataset"):
        load_dataset("not_a_dataset")
    # A factory that makes its own splits receives every keyword of load_dataset.
    seen = {}
    register_builtin("echo_test_set", lambda **kw: seen.update(kw) or "made", replace=True)
    assert load_dataset("echo_test_set", split="test_heldout", num=5) == "made"
    assert seen == dict(split="test_heldout", image_size=None, channels=None, flip=False, seed=0,
                        holdout_fraction=0.1, num=5)


# -- splits ------------------------------------------------------------------------------------------


def test_digit_splits_disjoint_deterministic_stratified():
    train = load_dataset("digits", split="train")
    test = load_dataset("digits", split="test")
    assert len(train) + len(test) == 1797 and len(test) == 180
    tr, te = set(train.indices.tolist()), set(test.indices.tolist())
    assert not tr & te and len(tr | te) == 1797
    # Every class gives 10% of its images (rounded), whatever the seed of the run.
    counts = test.labels.bincount(minlength=10)
    total = load_dataset("digits", split="all").labels.bincount()
    assert (counts - total * 0.1).abs().max() < 1.0
    again = load_dataset("digits", split="test", seed=7, flip=True)
    assert torch.equal(again.indices, test.indices)
    assert torch.equal(again.get_batch(range(3))["label"], test.labels[:3])


def test_holdout_split_properties():
    train, test = holdout_split(101, fraction=0.25)
    assert len(test) == 25 and len(train) == 76
    assert torch.equal(torch.sort(torch.cat([train, test])).values, torch.arange(101))
    assert torch.equal(holdout_split(101, fraction=0.25)[1], test)
    # Stratified with an unbalanced class: a singleton class stays in training.
    labels = torch.tensor([0] * 30 + [1] * 9 + [2])
    train, test = holdout_split(labels, fraction=0.2)
    assert labels[test].bincount(minlength=3).tolist() == [6, 2, 0]
    assert 2 in labels[train].tolist()
    with pytest.raises(ValueError, match="holdout_fraction"):
        holdout_split(10, fraction=1.0)
    with pytest.raises(ValueError, match="split='all'"):
        holdout_split(3, fraction=0.1)


# -- flips -------------------------------------------------------------------------------------------


def test_flip_is_a_function_of_seed_epoch_index():
    a = load_dataset("digits", flip=True, seed=3)
    b = load_dataset("digits", flip=True, seed=3)
    plain = load_dataset("digits")
    a.set_epoch(4)
    b.set_epoch(4)
    for i in (0, 1, 2, 100, -1):
        assert torch.equal(a[i]["image"], b[i]["image"])
    m = a.flips()
    assert 0.4 < m.float().mean() < 0.6
    assert torch.equal(m, flip_mask(len(a), seed=3, epoch=4))
    for i in range(20):
        want = plain[i]["image"].flip(-1) if m[i] else plain[i]["image"]
        assert torch.equal(a[i]["image"], want)
    assert not torch.equal(a.flips(5), m) and not torch.equal(flip_mask(len(a), seed=4, epoch=4), m)
    batch = a.get_batch(torch.arange(30))
    assert torch.equal(batch["image"], torch.stack([a[i]["image"] for i in range(30)]))
    # as_tensor is the unflipped data; flip=False never mirrors.
    assert torch.equal(a.as_tensor()[0], plain.as_tensor()[0])
    assert not plain.flips().any()


# -- transforms --------------------------------------------------------------------------------------


def test_resize_keeps_range_and_constant_images():
    x = torch.rand(3, 37, 53)
    for size in [(10, 12), (80, 90)]:
        y = T.resize(x, size)
        assert y.shape == (3, *size)
        assert float(y.min()) >= float(x.min()) - 1e-6 and float(y.max()) <= float(x.max()) + 1e-6
    c = torch.full((1, 9, 13), 0.25)
    assert torch.allclose(T.fit_square(c, 4), torch.full((1, 4, 4), 0.25))
    assert T.fit_square(x, 16).shape == (3, 16, 16)
    # Centre crop takes the middle of the long side.
    ramp = torch.arange(10.0).expand(1, 4, 10)
    assert torch.equal(T.center_crop(ramp, 4)[0, 0], torch.tensor([3.0, 4.0, 5.0, 6.0]))
    with pytest.raises(ValueError, match="resize it first"):
        T.center_crop(ramp, 5)


def _pil_resize(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    im = Image.fromarray(np.asarray(a, dtype=np.float32), mode="F")
    return np.asarray(im.resize((size[1], size[0]), Image.Resampling.BILINEAR))


def test_resize_matches_pil_bilinear_both_ways():
    rng = np.random.default_rng(0)
    a = rng.random((25, 31)).astype(np.float32)
    for size in [(8, 8), (10, 17), (50, 40), (25, 62)]:
        ours = T.resize(torch.from_numpy(a)[None], size)[0].numpy()
        assert np.abs(ours - _pil_resize(a, size)).max() < 1e-5, size


def test_channel_conversions():
    grey = torch.rand(1, 4, 4)
    rgb = T.match_channels(grey, 3)
    assert rgb.shape == (3, 4, 4) and torch.equal(T.rgb_to_grey(rgb), grey)
    red = torch.zeros(3, 2, 2)
    red[0] = 1.0
    assert torch.allclose(T.rgb_to_grey(red), torch.full((1, 2, 2), 0.299))
    with pytest.raises(ValueError, match="channels"):
        T.match_channels(grey, 2)


def test_tensor_dataset_validates_input():
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        TensorImageDataset(torch.rand(2, 1, 4, 4) * 3)
    with pytest.raises(ValueError, match="square"):
        TensorImageDataset(torch.zeros(2, 1, 4, 5))
    with pytest.raises(ValueError, match="labels"):
        TensorImageDataset(torch.zeros(2, 1, 4, 4), labels=[0, 1, 2])
    ds = TensorImageDataset(torch.zeros(3, 3, 4, 4), captions=["a", "b", "c"])
    assert isinstance(ds, ImageDataset) and ds.has_captions and ds.num_classes is None
    assert ds[-1]["caption"] == "c" and "label" not in ds[0]
    with pytest.raises(IndexError):
        ds[3]
