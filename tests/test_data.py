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
    assert isinstance(ds, ImageDataset) and ds.has_captions and ds.num_classes is None and ds.in_memory
    assert ds[-1]["caption"] == "c" and "label" not in ds[0]
    with pytest.raises(IndexError):
        ds[3]


# -- image modes -------------------------------------------------------------------------------------


def _saved(tmp_path, im, name, **save):
    path = tmp_path / name
    im.save(path, **save)
    return path


def test_grey_modes_keep_their_full_range(tmp_path):
    from ddpm.data.decode import read_image

    # 16-bit: 65535 is white and 300 stays 300/65535 (an 8-bit clip would make it 1.0).
    a16 = np.array([[0, 300, 32768, 65535]], dtype=np.uint16)
    path = _saved(tmp_path, Image.fromarray(a16), "g16.png")
    assert Image.open(path).mode == "I;16"
    x = read_image(path)
    assert x.shape == (1, 1, 4)
    assert torch.allclose(x[0, 0], torch.tensor([0.0, 300 / 65535, 32768 / 65535, 1.0]))
    # 32-bit int holding 16-bit data (how some TIFFs arrive): the same scale.
    x = read_image(_saved(tmp_path, Image.fromarray(a16.astype(np.int32)), "g32.tif"))
    assert torch.allclose(x[0, 0], torch.tensor([0.0, 300 / 65535, 32768 / 65535, 1.0]))
    # Float: kept when in [0, 1], else scaled by its own range (no clipping at 1).
    f = np.array([[0.0, 0.25, 1.0]], dtype=np.float32)
    x = read_image(_saved(tmp_path, Image.fromarray(f), "f1.tif"))
    assert torch.allclose(x[0, 0], torch.tensor(f[0]))
    x = read_image(_saved(tmp_path, Image.fromarray(f * 4 - 1), "f4.tif"))
    assert torch.allclose(x[0, 0], torch.tensor([0.0, 0.25, 1.0]))
    # 8-bit and 1-bit grey.
    x = read_image(_saved(tmp_path, Image.fromarray(np.array([[0, 51, 255]], np.uint8)), "l.png"))
    assert torch.allclose(x[0, 0], torch.tensor([0.0, 0.2, 1.0]))
    bw = Image.fromarray(np.array([[0, 255, 0]], np.uint8)).convert("1")
    assert torch.equal(read_image(_saved(tmp_path, bw, "bw.png"))[0, 0], torch.tensor([0.0, 1.0, 0.0]))


def test_transparency_composites_on_white(tmp_path):
    from ddpm.data.decode import read_image, to_unit

    rgba = Image.new("RGBA", (3, 1))
    rgba.putpixel((0, 0), (255, 0, 0, 0))  # fully transparent red -> white
    rgba.putpixel((1, 0), (255, 0, 0, 255))  # opaque red
    rgba.putpixel((2, 0), (0, 0, 255, 128))  # half-transparent blue -> light blue
    x = read_image(_saved(tmp_path, rgba, "rgba.png"))
    a = 128 / 255
    want = torch.tensor([[1.0, 1.0, 1 - a], [1.0, 0.0, 1 - a], [1.0, 0.0, 1.0]])
    assert x.shape == (3, 1, 3) and torch.allclose(x[:, 0], want, atol=1e-6)
    la = Image.new("LA", (2, 1))
    la.putpixel((0, 0), (0, 0))
    la.putpixel((1, 0), (51, 255))
    x = read_image(_saved(tmp_path, la, "la.png"))
    assert x.shape == (1, 1, 2) and torch.allclose(x[0, 0], torch.tensor([1.0, 0.2]))
    # Modes PIL cannot write to PNG, converted in memory: premultiplied RGBa and palette+alpha PA.
    assert torch.allclose(to_unit(rgba.convert("RGBa"))[:, 0, :2], want[:, :2], atol=1e-6)
    pa = Image.new("PA", (1, 1))
    pa.putpalette([0, 255, 0] + [0] * 765)
    pa.putpixel((0, 0), (0, 0))
    assert torch.allclose(to_unit(pa)[:, 0, 0], torch.ones(3))


def test_palette_images_give_their_colours(tmp_path):
    from ddpm.data.decode import read_image

    p = Image.new("P", (3, 1))
    p.putpalette([255, 0, 0, 0, 128, 255, 10, 20, 30] + [0] * (256 * 3 - 9))
    for i in range(3):
        p.putpixel((i, 0), i)
    x = read_image(_saved(tmp_path, p, "p.png"))
    want = torch.tensor([[255, 0, 10], [0, 128, 20], [0, 255, 30]]) / 255
    assert x.shape == (3, 1, 3) and torch.allclose(x[:, 0], want)
    p.info["transparency"] = 1  # palette index 1 is transparent -> white
    x = read_image(_saved(tmp_path, p, "pt.png", transparency=1))
    assert torch.allclose(x[:, 0, 1], torch.ones(3)) and torch.allclose(x[:, 0, 0], want[:, 0])
    grey = Image.new("P", (2, 1))
    grey.putpalette([7, 7, 7, 200, 200, 200] + [0] * (256 * 3 - 6))
    grey.putpixel((1, 0), 1)
    x = read_image(_saved(tmp_path, grey, "pg.gif"))
    assert x.shape == (1, 1, 2) and torch.allclose(x[0, 0], torch.tensor([7, 200]) / 255)


def test_cmyk_ycbcr_and_exif_rotation(tmp_path):
    from ddpm.data.decode import read_image, to_unit

    cyan = Image.new("CMYK", (1, 1), (255, 0, 0, 0))
    assert torch.allclose(to_unit(cyan)[:, 0, 0], torch.tensor([0.0, 1.0, 1.0]))
    ycc = Image.new("RGB", (1, 1), (200, 100, 50)).convert("YCbCr")
    assert torch.allclose(to_unit(ycc)[:, 0, 0], torch.tensor([200, 100, 50]) / 255, atol=3 / 255)
    # A 3x2 image stored sideways with EXIF orientation 6 ("rotate 90 degrees clockwise to view").
    a = np.arange(6, dtype=np.uint8).reshape(2, 3) * 40
    exif = Image.Exif()
    exif[0x0112] = 6
    path = _saved(tmp_path, Image.fromarray(a), "rot.png", exif=exif)
    x = read_image(path)
    assert x.shape == (1, 3, 2)
    assert torch.allclose(x[0], torch.from_numpy(np.rot90(a, k=-1).copy()).float() / 255)


def test_large_jpeg_is_read_shrunk_but_alike(tmp_path):
    from ddpm.data.decode import read_image

    yy, xx = np.mgrid[0:192, 0:256]
    rgb = np.stack([xx, yy, (xx + yy) // 2], -1).astype(np.uint8)
    path = _saved(tmp_path, Image.fromarray(rgb), "big.jpg", quality=95)
    full, small = read_image(path), read_image(path, min_side=16)
    assert full.shape == (3, 192, 256) and min(small.shape[1:]) >= 16 and small.shape[1] < 192
    assert (T.fit_square(full, 16) - T.fit_square(small, 16)).abs().mean() < 0.01


# -- image folders -----------------------------------------------------------------------------------


def _png_bomb(path, width=30_000, height=30_000):
    """A tiny PNG whose header claims a huge image (never decoded by the loader)."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)


def _folder(tmp_path, *, bad=False):
    root = tmp_path / "imgs"
    for cls, colour in [("cats", (200, 30, 30)), ("dogs", (30, 30, 200))]:
        (root / cls / "deep").mkdir(parents=True)
        for i in range(6):
            sub = "deep/" if i == 5 else ""
            Image.new("RGB", (24 + i, 20), colour).save(root / cls / f"{sub}{i}.png")
    (root / "cats" / "0.txt").write_text("a red cat\n", encoding="utf-8")
    (root / "dogs" / "deep" / "5.txt").write_text("a blue dog", encoding="utf-8")
    (root / ".hidden.png").write_bytes(b"not even looked at")
    (root / "cats" / "notes.md").write_text("not an image extension: ignored")
    if bad:
        (root / "cats" / "empty.png").write_bytes(b"")
        (root / "cats" / "text.jpg").write_text("hello, I am not a JPEG")
        good = (root / "cats" / "1.png").read_bytes()
        (root / "dogs" / "truncated.png").write_bytes(good[: len(good) // 2])
        (root / "dogs" / "garbled.png").write_bytes(good[:40] + b"\x00" * 60 + good[100:])
        _png_bomb(root / "dogs" / "bomb.png")
        _png_bomb(root / "dogs" / "bomb2.png", 10_000, 9_000)  # over PIL's warning limit only
        (root / "dogs" / "0.txt").write_bytes(b"caf\xe9 au lait")  # Latin-1, not UTF-8
    return root


@pytest.mark.filterwarnings("ignore:10 of 12 images")
def test_folder_classes_captions_and_geometry(tmp_path):
    root = _folder(tmp_path)
    ds = load_dataset(root, split="all", image_size=8)
    assert len(ds) == 12 and ds.class_names == ["cats", "dogs"] and ds.num_classes == 2
    assert ds.labels.tolist() == [0] * 6 + [1] * 6
    assert (ds.channels, ds.image_size, ds.has_captions) == (3, 8, True)
    assert ds[0]["caption"] == "a red cat" and ds[11]["caption"] == "a blue dog" and ds[1]["caption"] == ""
    assert ds.missing_captions == 10
    item = ds[7]
    assert set(item) == {"image", "label", "caption"} and item["label"] == 1
    blue = T.to_signed(torch.tensor([30, 30, 200]) / 255)[:, None, None]
    assert torch.allclose(item["image"], blue.expand(3, 8, 8))
    # image_size=None: the smallest shorter side in the folder (all are 20 high).
    assert load_dataset(root, split="all").image_size == 20
    # Grey only when asked; labels can be turned off.
    grey = load_dataset(root, split="all", image_size=4, channels=1, labels="none")
    assert grey.channels == 1 and grey.labels is None and "label" not in grey[0]
    luma = torch.tensor(0.299 * 200 + 0.587 * 30 + 0.114 * 30) / 255
    assert torch.allclose(grey[0]["image"], T.to_signed(luma).expand(1, 4, 4))


@pytest.mark.filterwarnings("ignore:.*no caption sidecar")
def test_folder_auto_labels_need_every_image_in_a_class_folder(tmp_path):
    root = _folder(tmp_path)
    Image.new("L", (9, 9), 128).save(root / "loose.png")
    ds = load_dataset(root, split="all", image_size=4)
    assert ds.labels is None and ds.num_classes is None and len(ds) == 13
    with pytest.raises(ValueError, match="loose.png"):
        load_dataset(root, split="all", labels="folders")
    with pytest.raises(ValueError, match="labels must be one of"):
        load_dataset(root, labels="yes")
    with pytest.raises(ValueError, match="takes no option 'colour'; its options: labels, max_pixels"):
        load_dataset(root, colour="red")


def test_grey_folder_is_one_channel_and_lazy_equals_in_memory(tmp_path):
    root = tmp_path / "grey"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (12, 16), dtype=np.uint8)).save(root / f"{i}.png")
    Image.fromarray((rng.integers(0, 65536, (16, 12))).astype(np.uint16)).save(root / "deep16.png")
    mem = load_dataset(root, split="all", image_size=6, in_memory=True)
    lazy = load_dataset(root, split="all", image_size=6, in_memory=False)
    assert mem.channels == 1 and mem.in_memory and not lazy.in_memory
    assert torch.equal(mem.as_tensor()[0], lazy.as_tensor()[0])
    assert torch.equal(mem[5]["image"], lazy[5]["image"]) and mem.as_tensor()[1] is None
    pixels = torch.from_numpy(np.array(Image.open(root / "0.png"))).float()[None] / 255
    direct = T.to_signed(T.fit_square(pixels, 6))
    assert torch.allclose(mem[0]["image"], direct, atol=1e-6)


def test_bad_files_skipped_counted_and_reported_once(tmp_path):
    from ddpm.data.folder import BadImageWarning

    root = _folder(tmp_path, bad=True)
    with pytest.warns(BadImageWarning) as record:
        train = load_dataset(root, image_size=8, holdout_fraction=0.25)
        test = load_dataset(root, split="test", image_size=8, holdout_fraction=0.25)
    assert len(record) == 1  # the test split reuses the indexed folder: one report
    msg = str(record[0].message)
    assert "skipped 7 of 18 files" in msg and "2 decompression bomb" in msg and "1 empty file" in msg
    assert train.skipped == {
        "corrupt": ["dogs/garbled.png", "dogs/truncated.png"],
        "decompression bomb": ["dogs/bomb.png", "dogs/bomb2.png"],
        "empty file": ["cats/empty.png"],
        "not an image": ["cats/text.jpg"],
        "unreadable caption (not UTF-8 text)": ["dogs/0.png"],
    }
    # 11 usable images (6 cats, 5 dogs); 3 held out, the rounding remainder going to the larger class.
    assert len(train) + len(test) == 11 and test.labels.bincount().tolist() == [2, 1]
    assert not set(train.paths) & set(test.paths)
    # A lower pixel limit makes ordinary images "bombs" too.
    with pytest.raises(ValueError, match="none of the 12 image files"):
        load_dataset(_folder(tmp_path / "again"), split="all", max_pixels=100)


def test_empty_missing_or_unreadable_folders_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a built-in dataset"):
        load_dataset(tmp_path / "nowhere")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(ValueError, match=r"no images found under .*\.png"):
        load_dataset(tmp_path / "empty")
    with pytest.raises(NotADirectoryError, match="expected a folder"):
        load_dataset(tmp_path / "empty" / "readme.txt")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.png").write_bytes(b"")
    with pytest.raises(ValueError, match="1 empty file"):
        load_dataset(tmp_path / "junk")


@pytest.mark.filterwarnings("ignore:.*no caption sidecar")
def test_folder_split_is_stratified_and_flip_deterministic(tmp_path):
    root = _folder(tmp_path)
    test = load_dataset(root, split="test", image_size=8, holdout_fraction=1 / 6)
    assert test.labels.tolist() == [0, 1]
    a = load_dataset(root, image_size=8, flip=True, seed=1)
    b = load_dataset(root, image_size=8, flip=True, seed=1)
    a.set_epoch(3)
    b.set_epoch(3)
    assert torch.equal(a.get_batch(range(len(a)))["image"], b.get_batch(range(len(b)))["image"])
    assert torch.equal(a.flips(), flip_mask(len(a), seed=1, epoch=3))
