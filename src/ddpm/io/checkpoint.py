"""Read a checkpoint's tensors by what the file holds, not by its name, without ever running its code.

| format         | recognised by                              | read with                            |
| -------------- | ------------------------------------------ | ------------------------------------ |
| `safetensors`  | 8-byte little-endian header length, `{`    | header checked here, `safetensors`   |
| `torch_zip`    | zip magic `PK\\x03\\x04` (torch >= 1.6 save)   | `torch.load(weights_only, mmap)`     |
| `torch_pickle` | pickle opcode `\\x80` + protocol 2..5        | `torch.load(weights_only=True)`      |

Pickles go only through torch's restricted unpickler, which builds tensors and plain containers and
refuses every other global; a refused file is refused, never reloaded with full unpickling. One
narrow allowance: training bookkeeping that Stable Diffusion 1.x `.ckpt` files carry next to their
weights (PyTorch Lightning callback objects, numpy scalars for the step count) is replaced by inert
placeholders registered with that same restricted unpickler. A placeholder runs nothing: it has no
behaviour and keeps none of the pickled state, and placeholders never reach the returned state dict.
A refusal names the globals the file wanted; one naming globals that only code-running pickles use
(`posix.system`, `builtins.eval`, …) is called malicious and gets no hint on how to load it anyway.
"""

from __future__ import annotations

import json
import pickle
import re
import struct
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import Tensor

__all__ = [
    "FORMATS",
    "UnsafeCheckpointError",
    "detect_format",
    "dangerous_globals",
    "load_pickle",
    "read_safetensors_header",
    "load_state_dict",
    "check_finite",
]

FORMATS = ("safetensors", "torch_zip", "torch_pickle")
# Modules whose objects only hold training bookkeeping in SD-era checkpoints; they load as placeholders.
BOOKKEEPING_MODULES = ("pytorch_lightning.", "lightning.", "lightning_fabric.", "numpy.")
_MAX_HEADER = 100 * 2**20  # safetensors' own limit on the JSON header
_ST_DTYPES = {"F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL", "F8_E4M3", "F8_E5M2",
              "U16", "U32", "U64", "C64"}
_HOW_TO_CONVERT = (
    "convert it in an environment you trust (e.g. `torch.load(path, weights_only=False)` then "
    "`safetensors.torch.save_file(state_dict, 'model.safetensors')`), or get a .safetensors version "
    "of this model"
)


# Globals no weights file needs and that code-running pickles call: a file naming one looks malicious.
_DANGEROUS_MODULES = ("os", "posix", "nt", "subprocess", "sys", "socket", "shutil", "runpy", "pty", "ctypes",
                      "importlib", "code", "codeop", "pdb", "bdb", "webbrowser", "commands", "marshal",
                      "pickle", "_pickle", "dill", "asyncio", "multiprocessing", "requests", "urllib",
                      "http", "ftplib", "smtplib", "telnetlib", "signal")
_DANGEROUS_NAMES = {f"{m}.{n}" for m in ("builtins", "__builtin__") for n in (
    "eval", "exec", "execfile", "compile", "open", "__import__", "getattr", "setattr", "delattr",
    "globals", "locals", "vars", "breakpoint", "input", "apply", "file", "memoryview")}
_DANGEROUS_NAMES |= {"operator.attrgetter", "operator.methodcaller", "functools.partial", "types.CodeType",
                     "types.FunctionType", "torch.hub.load", "torch.load"}
_MALICIOUS_ADVICE = (
    "which no weights file needs, so it looks malicious: do not open it with torch.load or any other "
    "unpickling tool; delete it and get a .safetensors version of this model from a source you trust"
)


class UnsafeCheckpointError(ValueError):
    """A pickled checkpoint that needs arbitrary code to load; it was refused and nothing in it ran."""


def dangerous_globals(names: list[str]) -> list[str]:
    """The names among `names` (pickle globals, "module.name"; torch names builtins bare, as "exec") that
    only code-running pickles reference."""
    full = {n: n if "." in n else f"builtins.{n}" for n in names}
    return [n for n, f in full.items() if f in _DANGEROUS_NAMES or f.split(".")[0] in _DANGEROUS_MODULES]


def _refusal(path: Path, names: list[str], detail: str = "") -> UnsafeCheckpointError:
    """The refusal of a pickle that needs `names` (a suspicious file gets no conversion hint); where torch
    named none (it stops at the first opcode it does not take), the file's opcodes are read for them."""
    bad = dangerous_globals(names or _scan_globals(path))
    if bad:
        return UnsafeCheckpointError(f"{path} was refused and nothing in it ran: it calls "
                                     f"{', '.join(bad[:4])}, {_MALICIOUS_ADVICE}")
    what = f"it references {names[:4]}" if names else (detail or "a forbidden operation")
    return UnsafeCheckpointError(f"{path} is a pickle that needs arbitrary code to load ({what}); it was "
                                 f"refused and nothing in it ran. If it is a genuine checkpoint, "
                                 f"{_HOW_TO_CONVERT}")


def _scan_globals(path: Path, limit: int = 64 * 2**20) -> list[str]:
    """The globals a plain pickle file names, from its opcodes (read, never executed; the first pickle of
    the file, up to `limit` bytes). STACK_GLOBAL takes the two strings pushed last."""
    import io
    import pickletools

    names: list[str] = []
    strings: list[str] = []
    with open(path, "rb") as f:
        data = f.read(limit)
    try:
        for op, arg, _ in pickletools.genops(io.BytesIO(data)):
            if op.name == "GLOBAL" and isinstance(arg, str):
                names.append(arg.replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                names.append(f"{strings[-2]}.{strings[-1]}")
            elif isinstance(arg, str) and "UNICODE" in op.name:
                strings.append(arg)
    except Exception:  # noqa: BLE001  (a truncated or odd pickle: keep what was read)
        pass
    return names


# ------------------------------------------------------------------------------------------ sniffing
def detect_format(path: str | Path) -> str:
    """The container format of `path` from its first bytes: one of `FORMATS` (see module table)."""
    path = _existing(path)
    with open(path, "rb") as f:
        head = f.read(64)
    if len(head) < 8:
        raise ValueError(f"{path} is {len(head)} bytes long, too short for any checkpoint format; it is "
                         "truncated or empty: download it again")
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return "torch_zip"
    if head[0] == 0x80 and 2 <= head[1] <= 5:
        return "torch_pickle"
    (n,) = struct.unpack("<Q", head[:8])
    if head[8:9] == b"{" and n > 1:
        return "safetensors"
    text = head.lstrip()
    if text.startswith(b"version https://git-lfs"):
        hint = "a Git LFS pointer, not the weights: run `git lfs pull` in that repository"
    elif text[:15].lower().startswith((b"<!doctype", b"<html")):
        hint = "an HTML page (a download that returned a web page): download the file itself"
    elif head[0] == 0x80 or head[:1] in (b"(", b"}", b"]"):
        hint = "a pickle of a protocol torch never writes"
    else:
        hint = f"it starts with bytes {head[:8]!r}"
    raise ValueError(f"{path} is not a checkpoint this loader knows (.safetensors, or a torch.save "
                     f"zip/pickle): {hint}")


def read_safetensors_header(path: str | Path) -> dict[str, Any]:
    """The JSON header of a safetensors file, checked against the file size before any tensor is read."""
    path = _existing(path)
    size = path.stat().st_size
    if size < 10:  # the 8-byte length field and at least "{}"
        raise ValueError(f"{path} is {size} bytes long, too short for a safetensors file; it is truncated "
                         "or empty: download it again")
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if not 2 <= n <= min(_MAX_HEADER, size - 8):
            raise ValueError(f"{path}: the safetensors header claims {n} bytes but the file has {size - 8} "
                             "after the length field; the file is truncated or not a safetensors file")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: the safetensors header is not valid JSON ({e}); the file is corrupted") \
            from e
    if not isinstance(header, dict):
        raise ValueError(f"{path}: the safetensors header is a {type(header).__name__}, not a JSON object")
    data = size - 8 - n
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        ok = (isinstance(entry, dict) and entry.get("dtype") in _ST_DTYPES
              and isinstance(entry.get("shape"), list) and isinstance(entry.get("data_offsets"), list)
              and len(entry["data_offsets"]) == 2)
        if not ok:
            raise ValueError(f"{path}: safetensors header entry {name!r} is malformed ({entry!r})")
        start, stop = entry["data_offsets"]
        if not (isinstance(start, int) and isinstance(stop, int) and 0 <= start <= stop):
            raise ValueError(f"{path}: tensor {name!r} has bad data offsets {entry['data_offsets']}")
        end = max(end, stop)
    if end > data:
        raise ValueError(f"{path}: the header places tensor data up to byte {end} but the file holds {data} "
                         "bytes of data; the file is truncated: download it again")
    if end < data:
        raise ValueError(f"{path}: {data - end} bytes follow the last tensor; the file is damaged or was "
                         "appended to: download it again")
    return header


# ------------------------------------------------------------------------------------------- loading
def load_state_dict(
    path: str | Path,
    *,
    device: str | torch.device = "cpu",
    nonfinite: str = "warn",
    mmap: bool = True,
    prefix: str | None = None,
) -> dict[str, Tensor]:
    """All tensors of a checkpoint file by name, its format found by content (see module docstring).

    A `state_dict` level (Lightning checkpoints) is unwrapped and non-tensor entries dropped. With `prefix`,
    only the tensors whose names start with it are kept (safetensors reads no others from disk; pickles are
    memory-mapped, so the rest is not read either).
    `nonfinite` says what NaN/Inf in a floating tensor does: "warn", "error" (ValueError) or "ignore";
    either message names the tensors.
    """
    if nonfinite not in ("warn", "error", "ignore"):
        raise ValueError(f"nonfinite must be 'warn', 'error' or 'ignore', got {nonfinite!r}")
    path = _existing(path)
    fmt = detect_format(path)
    if fmt == "safetensors":
        tensors = _load_safetensors(path, device, prefix)
    else:
        tensors = _state_dict_of(_load_pickled(path, fmt, mmap=mmap), path)
        if prefix is not None:
            tensors = {k: v for k, v in tensors.items() if k.startswith(prefix)}
            if not tensors:
                raise ValueError(f"{path} holds no tensors named {prefix}*; not the weights file expected")
        if str(device) != "cpu":
            tensors = {k: v.to(device) for k, v in tensors.items()}
    if nonfinite != "ignore":
        check_finite(tensors, source=str(path), error=nonfinite == "error")
    return tensors


def check_finite(
    tensors: Mapping[str, Tensor], *, source: str = "checkpoint", error: bool = False
) -> list[str]:
    """Names of floating tensors holding NaN or Inf; warns (RuntimeWarning) or, with `error`, raises."""
    bad = [k for k, v in tensors.items() if v.is_floating_point() and v.numel() and not _finite(v)]
    if bad:
        more = " …" if len(bad) > 6 else ""
        text = (f"{source}: {len(bad)} tensor(s) hold NaN or Inf values: {bad[:6]}{more}; "
                "the weights are broken (a failed fp16 conversion or a diverged training run)")
        if error:
            raise ValueError(text)
        warnings.warn(text, RuntimeWarning, stacklevel=2)
    return bad


def _finite(v: Tensor) -> bool:
    """No NaN or Inf in `v`: min and max propagate NaN and expose +-Inf, in one pass that is ~30x faster
    than `isfinite().all()` on float16 (which matters for a 1.07B-parameter checkpoint)."""
    lo, hi = torch.aminmax(v.detach().reshape(-1))
    return bool(torch.isfinite(lo)) and bool(torch.isfinite(hi))


def _load_safetensors(path: Path, device: str | torch.device, prefix: str | None = None) -> dict[str, Tensor]:
    read_safetensors_header(path)
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            names = [k for k in f.keys() if prefix is None or k.startswith(prefix)]
            tensors = {k: f.get_tensor(k) for k in names}
    except Exception as e:  # safetensors raises its own error types (SafetensorError) on bad files
        raise ValueError(f"{path} is a damaged .safetensors file ({e}); download it again") from e
    if not tensors:
        what = "no tensors" if prefix is None else f"no tensors named {prefix}*"
        raise ValueError(f"{path} holds {what}; it is not the weights file expected")
    return tensors


def _load_pickled(path: Path, fmt: str, *, mmap: bool) -> Any:
    """torch.load with weights_only=True; lightning/numpy bookkeeping becomes inert placeholders."""
    allowed: dict[str, type] = {}
    if fmt == "torch_zip":
        try:
            names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        except Exception as e:  # a damaged zip fails here already
            raise _damaged(path, e) from e
        _allow(names, allowed, path)
    for _ in range(32):  # legacy pickles name one refused global per attempt
        try:
            with torch.serialization.safe_globals([(cls, name) for name, cls in allowed.items()]):
                return _torch_load(path, mmap=mmap and fmt == "torch_zip")
        except pickle.UnpicklingError as e:
            if "Weights only load failed" not in str(e):
                raise _damaged(path, e) from e
            names = re.findall(r"GLOBAL ([\w.]+)", str(e))
            if not names or all(n in allowed for n in names):
                detail = " ".join(str(e).split("\n\n")[-2:-1]).strip()[:200]
                raise _refusal(path, names, f"refused by the restricted unpickler: {detail}") from e
            _allow(names, allowed, path)
        except (RuntimeError, EOFError, ValueError, OSError, struct.error, IndexError, KeyError) as e:
            raise _damaged(path, e) from e
    raise UnsafeCheckpointError(f"{path} references too many foreign objects to load; {_HOW_TO_CONVERT}")


def load_pickle(path: str | Path, *, fix: str = "download it again") -> Any:
    """`torch.load(path, weights_only=True)` of a pickle this package wrote (a run's state.pt), with no
    allowances; a refused or damaged file raises UnsafeCheckpointError / ValueError (ending in `fix`)."""
    path = _existing(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" not in str(e):
            raise _damaged(path, e, fix) from e
        detail = " ".join(str(e).split("\n\n")[-2:-1]).strip()[:200]
        raise _refusal(path, re.findall(r"GLOBAL ([\w.]+)", str(e)), detail) from e
    except (RuntimeError, EOFError, ValueError, OSError, struct.error, IndexError, KeyError) as e:
        raise _damaged(path, e, fix) from e


def _torch_load(path: Path, *, mmap: bool) -> Any:
    """torch.load(weights_only=True) of `path`; through a file object where the name ends in .safetensors,
    since torch.load would then hand the file to safetensors by its name, not its content. torch's note on
    pickle protocols it did not write is dropped: such a file loads, or is refused with its own message."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
        if path.suffix == ".safetensors":
            with open(path, "rb") as f:
                return torch.load(f, map_location="cpu", weights_only=True)
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)


def _allow(names: list[str], allowed: dict[str, type], path: Path) -> None:
    refused = [n for n in names if not n.startswith(BOOKKEEPING_MODULES)]
    if refused:
        raise _refusal(path, refused)
    for name in names:
        if name not in allowed:
            module, _, qualname = name.rpartition(".")
            allowed[name] = type(qualname, (_Placeholder,), {"__module__": module, "__qualname__": qualname})


class _Placeholder:
    """Stands in for a bookkeeping object of a pickled checkpoint: takes any arguments, keeps nothing."""

    def __new__(cls, *args: Any, **kwargs: Any) -> _Placeholder:
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass


def _damaged(path: Path, error: BaseException, fix: str = "download it again") -> ValueError:
    detail = " ".join(str(error).split())[:200] or type(error).__name__
    return ValueError(f"{path} could not be read as a torch checkpoint: it is truncated or corrupted "
                      f"({detail}); {fix}")


def _state_dict_of(obj: Any, path: Path) -> dict[str, Tensor]:
    """The tensors of a loaded pickle, unwrapping `state_dict` levels (Lightning and friends)."""
    for _ in range(3):
        if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
            obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path} holds a {type(obj).__name__}, not a state dict of named tensors")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}
    if not tensors:
        raise ValueError(f"{path} holds no tensors (its top-level keys are {list(obj)[:6]}); it is not a "
                         "weights file")
    return tensors


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{str(path)!r} is a folder; pass a checkpoint file (or use "
                                "ddpm.io.load_stable_diffusion for a diffusers folder)")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    return path

