"""Reading checkpoints by content, safely: formats found whatever the file is called, pickles that would run
code refused with nothing run, damaged files and non-finite weights reported clearly."""

from __future__ import annotations

import json
import os
import pickle
import struct
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from ddpm.io.checkpoint import (
    UnsafeCheckpointError,
    check_finite,
    detect_format,
    load_state_dict,
    read_safetensors_header,
)
from ddpm.io.sd import load_stable_diffusion

WEIGHTS = {"a.weight": torch.arange(6, dtype=torch.float32).reshape(2, 3), "a.bias": torch.ones(2)}


def _same(got: dict, want: dict) -> bool:
    return got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


# ------------------------------------------------------------------------------------------- formats
@pytest.mark.parametrize("name", ["model.safetensors", "model.ckpt", "model.bin", "model"])
def test_every_format_is_found_by_content_whatever_the_name(tmp_path, name):
    writers = {
        "safetensors": lambda p: save_file(WEIGHTS, p),
        "torch_zip": lambda p: torch.save({"state_dict": WEIGHTS, "epoch": 3}, p),
        "torch_pickle": lambda p: torch.save(WEIGHTS, p, _use_new_zipfile_serialization=False),
    }
    for fmt, write in writers.items():
        path = tmp_path / fmt / name
        path.parent.mkdir()
        write(path)
        assert detect_format(path) == fmt
        assert _same(load_state_dict(path), WEIGHTS)


def test_nested_state_dict_is_unwrapped_and_non_tensors_dropped(tmp_path):
    path = tmp_path / "x.ckpt"
    torch.save({"state_dict": {"state_dict": {**WEIGHTS, "step": 5, "name": "x"}}}, path)
    assert _same(load_state_dict(path), WEIGHTS)
    torch.save([torch.ones(1)], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="not a state dict"):
        load_state_dict(tmp_path / "list.pt")
    torch.save({"epoch": 1}, tmp_path / "empty.pt")
    with pytest.raises(ValueError, match="holds no tensors"):
        load_state_dict(tmp_path / "empty.pt")


def test_lightning_bookkeeping_loads_as_inert_placeholders(tmp_path, monkeypatch):
    """SD 1.x .ckpt files carry a pickled Lightning ModelCheckpoint and numpy scalars: those load, as
    placeholders the weights never see, without pytorch_lightning installed or imported."""
    names = ["pytorch_lightning", "pytorch_lightning.callbacks",
             "pytorch_lightning.callbacks.model_checkpoint"]
    for name in names:
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    calls = []

    class ModelCheckpoint:
        def __init__(self):
            self.best_model_path = "last.ckpt"

        def __setstate__(self, state):  # would run if the real class were used
            calls.append(state)

    ModelCheckpoint.__module__ = names[-1]
    ModelCheckpoint.__qualname__ = "ModelCheckpoint"
    sys.modules[names[-1]].ModelCheckpoint = ModelCheckpoint
    checkpoint = {"state_dict": WEIGHTS, "global_step": np.int64(470000),
                  "callbacks": {"cb": ModelCheckpoint()}}
    torch.save(checkpoint, tmp_path / "zip.ckpt")
    torch.save(checkpoint, tmp_path / "legacy.ckpt", _use_new_zipfile_serialization=False)
    for name in names:
        monkeypatch.delitem(sys.modules, name)
    for file in ("zip.ckpt", "legacy.ckpt"):
        assert _same(load_state_dict(tmp_path / file), WEIGHTS)
    assert calls == []


# ------------------------------------------------------------------------------------------ security
def _payloads(marker: Path) -> dict[str, object]:
    class SystemCall:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    class Exec:
        def __reduce__(self):
            return exec, (f"open({str(marker)!r}, 'w').close()",)

    return {"os.system": SystemCall(), "exec": Exec()}


def _malicious_files(tmp_path: Path, marker: Path) -> list[Path]:
    files = []
    for label, payload in _payloads(marker).items():
        obj = {"state_dict": WEIGHTS, "extra": payload}
        for suffix in (".ckpt", ".safetensors", ".bin"):
            for kind in ("zip", "legacy", "raw"):
                path = tmp_path / f"{label}-{kind}{suffix}"
                if kind == "zip":
                    torch.save(obj, path)
                elif kind == "legacy":
                    torch.save(obj, path, _use_new_zipfile_serialization=False)
                else:
                    path.write_bytes(pickle.dumps(obj, protocol=4))
                files.append(path)
    return files


def test_code_carrying_pickles_are_refused_and_never_run(tmp_path):
    marker = tmp_path / "PWNED"
    control = tmp_path / "control"
    # The payloads work: plain unpickling runs them (here, harmlessly, into a control marker).
    for payload in _payloads(control).values():
        pickle.loads(pickle.dumps(payload))
        assert control.exists()
        control.unlink()
    files = _malicious_files(tmp_path, marker)
    assert len(files) == 18
    for path in files:
        with pytest.raises(UnsafeCheckpointError, match="refused") as info:
            load_state_dict(path)
        assert "nothing in it ran" in str(info.value) and "get a .safetensors version" in str(info.value)
        # a file that calls os.system or exec is called malicious and gets no way to load it anyway
        assert "looks malicious" in str(info.value) and "weights_only=False" not in str(info.value)
        with pytest.raises(UnsafeCheckpointError):
            load_stable_diffusion(path)
    assert not marker.exists()


def test_pickle_that_only_the_restricted_unpickler_refuses_is_not_retried(tmp_path, monkeypatch):
    """An object of an unknown class (not bookkeeping) is refused even though it carries no payload, and
    torch.load is only ever called with weights_only=True."""
    module = types.ModuleType("mylib")
    monkeypatch.setitem(sys.modules, "mylib", module)

    class Thing:
        pass

    Thing.__module__, Thing.__qualname__ = "mylib", "Thing"
    module.Thing = Thing
    # The legacy format: torch.load itself meets the class (zip files are screened before loading).
    torch.save({"state_dict": WEIGHTS, "thing": Thing()}, tmp_path / "x.ckpt",
               _use_new_zipfile_serialization=False)
    seen = []
    real_load = torch.load

    def spy(*args, **kwargs):
        seen.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    with pytest.raises(UnsafeCheckpointError, match=r"mylib\.Thing") as info:
        load_state_dict(tmp_path / "x.ckpt")
    assert seen and all(flag is True for flag in seen)
    # nothing in it looks malicious: the refusal says how to convert it where it is trusted
    assert "looks malicious" not in str(info.value) and "weights_only=False" in str(info.value)


def test_a_pickled_module_gets_the_conversion_hint_not_a_malware_warning(tmp_path):
    """A whole pickled nn.Module (legacy practice) references torch classes only: benign, so it is refused
    with the conversion hint."""
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pt")
    with pytest.raises(UnsafeCheckpointError, match="torch.nn.modules.linear.Linear") as info:
        load_state_dict(tmp_path / "module.pt")
    assert "looks malicious" not in str(info.value) and "weights_only=False" in str(info.value)


# ------------------------------------------------------------------------------------ damaged files
def test_truncated_files_are_reported(tmp_path):
    good = {"zip": tmp_path / "z.ckpt", "legacy": tmp_path / "l.ckpt", "st": tmp_path / "s.safetensors"}
    big = {"w": torch.randn(64, 64)}
    torch.save(big, good["zip"])
    torch.save(big, good["legacy"], _use_new_zipfile_serialization=False)
    save_file(big, good["st"])
    for name, path in good.items():
        data = path.read_bytes()
        for cut in (len(data) // 2, len(data) - 7):
            broken = tmp_path / f"{name}-{cut}{path.suffix}"
            broken.write_bytes(data[:cut])
            with pytest.raises(ValueError, match="truncated"):
                load_state_dict(broken)
    (tmp_path / "tiny.ckpt").write_bytes(b"PK\x03")
    with pytest.raises(ValueError, match="too short"):
        load_state_dict(tmp_path / "tiny.ckpt")
    for size in (0, 7, 9):  # shorter than the length field, or than it and "{}"
        (tmp_path / "short.safetensors").write_bytes(b"\x02\0\0\0\0\0\0\0{}"[:size])
        with pytest.raises(ValueError, match=f"is {size} bytes long, too short for a safetensors file"):
            read_safetensors_header(tmp_path / "short.safetensors")


@pytest.mark.parametrize(
    "content, message",
    [
        (b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 4265146304\n", "git lfs pull"),
        (b"<!DOCTYPE html><html><body>Sign in</body></html>", "HTML page"),
        (bytes(range(7, 64)), "not a checkpoint this loader knows"),
    ],
    ids=["lfs-pointer", "html", "random"],
)
def test_files_that_are_no_checkpoint_say_what_they_are(tmp_path, content, message):
    path = tmp_path / "model.ckpt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        load_state_dict(path)


def _safetensors_with_header(tmp_path: Path, header: bytes, data: bytes = b"\0" * 16, n: int | None = None):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", len(header) if n is None else n) + header + data)
    return path


@pytest.mark.parametrize(
    "header, n, message",
    [
        (b'{"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}', 10**9, "header claims"),
        (b'{"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]', None, "not valid JSON"),
        (b'{"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}', None, "8 bytes follow"),
        (b'{"w": {"dtype": "F99", "shape": [4], "data_offsets": [0, 16]}}', None, "malformed"),
        (b'{"w": {"dtype": "F32", "shape": [8], "data_offsets": [0, 32]}}', None, "truncated"),
        (b'{"w": {"dtype": "F32", "shape": [4], "data_offsets": [8, 4]}}', None, "bad data offsets"),
        (b'{"w": {"dtype": "F32", "shape": [5], "data_offsets": [0, 16]}}', None, "damaged"),
    ],
    ids=["length", "json", "extra-data", "dtype", "short-data", "offsets", "shape"],
)
def test_safetensors_with_bad_header_give_clear_errors(tmp_path, header, n, message):
    path = _safetensors_with_header(tmp_path, header, n=n)
    with pytest.raises(ValueError, match=message):
        load_state_dict(path)


def test_safetensors_header_is_read_without_the_tensors(tmp_path):
    save_file(WEIGHTS, tmp_path / "w.safetensors", metadata={"note": "hi"})
    header = read_safetensors_header(tmp_path / "w.safetensors")
    assert header["__metadata__"] == {"note": "hi"}
    assert header["a.weight"]["shape"] == [2, 3]
    save_file({}, tmp_path / "empty.safetensors")
    with pytest.raises(ValueError, match="holds no tensors"):
        load_state_dict(tmp_path / "empty.safetensors")


def test_non_finite_weights_warn_or_fail_naming_the_tensors(tmp_path):
    bad = {**WEIGHTS, "b.nan": torch.tensor([1.0, float("nan")]),
           "c.inf": torch.tensor([float("-inf")]).half()}
    save_file(bad, tmp_path / "nan.safetensors")
    with pytest.warns(RuntimeWarning, match=r"2 tensor\(s\) hold NaN or Inf.*'b\.nan', 'c\.inf'"):
        load_state_dict(tmp_path / "nan.safetensors")
    with pytest.raises(ValueError, match="b.nan"):
        load_state_dict(tmp_path / "nan.safetensors", nonfinite="error")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert set(load_state_dict(tmp_path / "nan.safetensors", nonfinite="ignore")) == set(bad)
        assert check_finite(WEIGHTS) == []
    with pytest.raises(ValueError, match="nonfinite must be"):
        load_state_dict(tmp_path / "nan.safetensors", nonfinite="maybe")


def test_missing_paths_and_folders_are_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_state_dict(tmp_path / "nope.ckpt")
    with pytest.raises(IsADirectoryError, match="load_stable_diffusion"):
        load_state_dict(tmp_path)
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    with pytest.raises(FileNotFoundError, match="unet component is missing"):
        load_stable_diffusion(tmp_path)


def test_prefix_reads_only_the_named_tensors(tmp_path):
    from safetensors.torch import save_file

    from ddpm.io.checkpoint import load_state_dict as load

    tensors = {"first_stage_model.a": torch.ones(2), "model.diffusion_model.b": torch.zeros(3)}
    st = tmp_path / "m.safetensors"
    save_file(tensors, str(st))
    pt = tmp_path / "m.ckpt"
    torch.save({"state_dict": tensors}, pt)
    for path in (st, pt):
        assert list(load(path, prefix="first_stage_model.")) == ["first_stage_model.a"]
        with pytest.raises(ValueError, match="no tensors named cond_stage_model"):
            load(path, prefix="cond_stage_model.")
