"""Model files: one self-describing .safetensors (weights + "ddpm" JSON metadata), written atomically."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from safetensors.torch import save_file

from ddpm.io.model_file import FORMAT, file_hash, load_model_file, read_model_meta, save_model_file


def _meta() -> dict:
    return {
        "unet": {"model_channels": 8},
        "diffusion": {"schedule": {"name": "linear", "num_timesteps": 10}, "prediction": "eps"},
        "training": {"step": 3, "run": "x"},
    }


def test_round_trip_tensors_and_meta(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {"unet.a": torch.randn(3, 4, generator=g), "unet.b": torch.arange(5)}
    tensors["text_encoder.c"] = torch.ones(2, dtype=torch.bfloat16)
    path = save_model_file(tmp_path / "m.safetensors", tensors, _meta())
    loaded, meta = load_model_file(path)
    assert set(loaded) == set(tensors)
    for k in tensors:
        assert torch.equal(loaded[k], tensors[k]) and loaded[k].dtype == tensors[k].dtype
    assert meta["format"] == FORMAT and meta["version"] == 1
    assert meta["unet"] == {"model_channels": 8} and meta["training"]["step"] == 3
    assert read_model_meta(path) == meta
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary file left behind"


def test_shared_storage_and_views_are_saved(tmp_path):
    base = torch.arange(12.0)
    tensors = {"a": base[:6], "b": base[6:].view(2, 3), "c": base}
    loaded, _ = load_model_file(save_model_file(tmp_path / "m.safetensors", tensors, _meta()))
    assert torch.equal(loaded["b"], torch.arange(6.0, 12.0).view(2, 3)) and torch.equal(loaded["c"], base)


def test_file_hash_is_sha256_prefix(tmp_path):
    path = save_model_file(tmp_path / "m.safetensors", {"w": torch.ones(3)}, _meta())
    full = hashlib.sha256(path.read_bytes()).hexdigest()
    assert file_hash(path) == full[:10]
    assert file_hash(path, full=True) == full
    # A rewritten file gets a new hash (the cache is keyed on size and mtime).
    save_model_file(path, {"w": torch.zeros(30)}, _meta())
    assert file_hash(path, full=True) == hashlib.sha256(path.read_bytes()).hexdigest() != full


def test_bad_inputs_say_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model_file(tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match=r"\.safetensors"):
        save_model_file(tmp_path / "m.pt", {"w": torch.ones(1)}, _meta())
    with pytest.raises(ValueError, match="plain JSON"):
        save_model_file(tmp_path / "m.safetensors", {"w": torch.ones(1)}, {"x": float("nan")})
    with pytest.raises(ValueError, match="not a torch.Tensor"):
        save_model_file(tmp_path / "m.safetensors", {"w": [1.0]}, _meta())
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.ones(1)}, str(foreign))
    with pytest.raises(ValueError, match="ddpm export"):
        load_model_file(foreign)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file at all")
    with pytest.raises(ValueError, match="not a readable"):
        load_model_file(junk)
    future = tmp_path / "future.safetensors"
    newer = json.dumps({"format": FORMAT, "version": 99})
    save_file({"w": torch.ones(1)}, str(future), metadata={"ddpm": newer})
    with pytest.raises(ValueError, match="Upgrade ddpm"):
        load_model_file(future)


def test_metadata_is_checked_on_load_naming_the_section_and_field(tmp_path):
    def write(meta: dict):
        path = tmp_path / "m.safetensors"
        save_file({"w": torch.ones(1)}, str(path), metadata={"ddpm": json.dumps({"format": FORMAT, **meta})})
        return path

    cases = [
        ({**_meta(), "extra": 1}, r"unknown section\(s\) \['extra'\]"),
        ({"unet": {}}, "lacks the 'diffusion' section"),
        ({**_meta(), "diffusion": {"prediction": "eps"}}, r"'diffusion'.*lacks the field\(s\) \['schedule"),
        ({**_meta(), "sampling": {"sampler": "nope"}}, "'sampling'.*sampler 'nope' is not one of"),
        ({**_meta(), "conditioning": {"type": "class"}}, "needs num_classes"),
        ({**_meta(), "data": {"image_size": "big"}}, "image_size = 'big' is not a int"),
        ({**_meta(), "training": {"step": 1, "by": "me"}}, r"'training'.*unknown field\(s\) \['by'\]"),
        ({"data": {}}, "exactly one of the sections 'unet'"),
    ]
    for meta, message in cases:
        with pytest.raises(ValueError, match=message):
            load_model_file(write(meta))
    with pytest.raises(ValueError, match="exactly one of"):  # and nothing unreadable is ever written
        save_model_file(tmp_path / "w.safetensors", {"w": torch.ones(1)}, {"data": {}})
    assert not (tmp_path / "w.safetensors").exists()


def test_typed_metadata_round_trips_and_answers_questions(tmp_path):
    from ddpm.io.model_file import read_meta
    from ddpm.io.model_meta import ConditioningMeta, DataMeta

    path = save_model_file(tmp_path / "m.safetensors", {"w": torch.ones(1)}, _meta())
    meta = read_meta(path)
    assert meta.to_dict() == read_model_meta(path) and meta.kind == "diffusion" and meta.condition == "none"
    labelled = meta.with_sections(conditioning=ConditioningMeta(type="class", num_classes=3),
                                  data=DataMeta(dataset="d", image_size=8, channels=1))
    assert labelled.class_names == ["0", "1", "2"] and labelled.to_dict()["data"]["options"] == {}
    again = read_meta(save_model_file(tmp_path / "n.safetensors", {"w": torch.ones(1)}, labelled))
    assert again == labelled


def test_atomic_writes_follow_the_umask_and_leave_nothing_on_error(tmp_path):
    import os

    from ddpm.io.atomic import atomic_write

    old = os.umask(0o022)
    try:
        path = save_model_file(tmp_path / "m.safetensors", {"w": torch.ones(1)}, _meta())
        assert path.stat().st_mode & 0o777 == 0o644  # safetensors alone creates 0600
        os.umask(0o077)
        with atomic_write(tmp_path / "private.bin") as tmp:
            tmp.write_bytes(b"x")
        assert (tmp_path / "private.bin").stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)
    with pytest.raises(RuntimeError), atomic_write(path) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("crash mid-write")
    assert read_model_meta(path)["training"]["step"] == 3  # the old file is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors", "private.bin"]


def test_an_unwritable_destination_is_an_oserror_naming_it():
    """/proc takes no new files, even from root; safetensors' own error type becomes an OSError."""
    with pytest.raises(OSError, match="could not write /proc/m.safetensors"):
        save_model_file("/proc/m.safetensors", {"a": torch.ones(1)}, _meta())
