"""Every failure of the real `ddpm` command, run in a subprocess as a user would: one line naming the cause
and the fix, the exit status of its kind (2 bad input, 1 a failure during the work, 130 / 143 interrupted),
no traceback unless --debug asks for one, nothing written where it should not be, and no payload of a
malicious pickle ever run.

The cases run two at a time in one module fixture (most start torch, ~2 s each); each is then one test.
"""

from __future__ import annotations

import csv
import json
import os
import pickle
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from ddpm.config import dump_config
from ddpm.io.model_file import load_model_file, save_model_file
from ddpm.training import export_model, train
from test_training import tiny_config

CLI = (sys.executable, "-m", "ddpm.cli")
EXTENSIONS = (".safetensors", ".ckpt", ".pt", ".bin")
MARKER = "PWNED"  # what the malicious pickles would create, in the world folder
WEIGHTS = {"a.weight": torch.arange(4096, dtype=torch.float32).reshape(64, 64)}


@dataclass(frozen=True)
class Case:
    """One command line ("{w}" = the world folder), its exit status and what stderr must say."""

    name: str
    argv: tuple[str, ...]
    code: int
    says: tuple[str, ...]
    absent: tuple[str, ...] = ()  # paths under the world folder that must not exist afterwards
    env: dict[str, str] = field(default_factory=dict)
    traceback: bool = False  # --debug: the traceback comes first


def _c(name, argv, code, *says, absent=(), env=None, traceback=False):
    return Case(name, tuple(argv.split()), code, says, tuple(absent), env or {}, traceback)


SD = "--size 64x64"
CASES = [
    # missing paths, with and without SD-only flags: the real cause, not the flags
    _c("txt2img-missing", "txt2img --model {w}/typo.safetensors x --out {w}/o", 2,
       "no such run folder or model file", "typo.safetensors", absent=["o"]),
    _c("txt2img-missing-sd-flag", f"txt2img --model {{w}}/typo.safetensors x --out {{w}}/o {SD} --karras", 2,
       "no such run folder or model file", absent=["o"]),
    _c("img2img-missing-model", "img2img --model {w}/nope --image {w}/in.png x --out {w}/o", 2,
       "no such SD model"),
    _c("sample-missing", "sample --model {w}/nope --out {w}/o", 2, "no such run folder or model file"),
    _c("export-missing", "export {w}/nope --out {w}/x.safetensors", 2, "no such run folder",
       absent=["x.safetensors"]),
    _c("convert-missing", "convert {w}/nope.ckpt {w}/x.safetensors", 2, "no such file or folder"),
    _c("train-missing-config", "train --config {w}/nope.toml", 2, "nope.toml", "does not exist"),
    _c("train-resume-not-a-run", "train --resume {w}/sub", 2, "not a run folder"),
    # SD-only flags on what really is a ddpm model
    _c("txt2img-sd-flag-on-ddpm", f"txt2img --model {{w}}/class.safetensors x --out {{w}}/o {SD}", 2,
       "--size apply to Stable Diffusion checkpoints only", "is a ddpm model", absent=["o"]),
    # outputs that cannot be written, or would clobber a file: refused before the work
    _c("export-unwritable", "export {w}/run --out /proc/nope.safetensors", 2, "cannot write --out",
       "/proc"),
    _c("export-under-a-file", "export {w}/run --out {w}/taken.txt/m.safetensors", 2,
       "is a file, not a folder"),
    _c("export-exists", "export {w}/run --out {w}/class.safetensors", 2, "exists; pass --force"),
    _c("sample-out-is-a-file", "sample --model {w}/run --out {w}/taken.txt --num 1", 2,
       "--out", "is a file; give a folder"),
    _c("sample-out-unwritable", "sample --model {w}/run --out /proc/ddpm-out --num 1", 2,
       "cannot write --out"),
    _c("txt2img-out-is-a-file", "txt2img --model {w}/sd.safetensors x --out {w}/taken.txt --steps 1", 2,
       "is a file; give a folder"),
    _c("eval-out-is-a-folder", "eval --model {w}/run --out {w}/sub --num 1", 2, "is a folder"),
    _c("convert-dest-unwritable", "convert {w}/weights.ckpt /proc/x.safetensors", 2, "cannot write DEST"),
    _c("data-out-unwritable", "data shapes --num 2 --out /proc/ddpm-shapes", 2, "cannot write --out"),
    # invalid options, judged before anything loads
    _c("guidance-nan", "sample --model {w}/run --out {w}/o --guidance nan", 2, "finite number",
       absent=["o"]),
    _c("guidance-inf-txt2img", "txt2img --model {w}/sd.safetensors x --out {w}/o --guidance inf", 2,
       "finite number", absent=["o"]),
    _c("eta-negative", "sample --model {w}/run --out {w}/o --eta -1", 2, "number >= 0"),
    _c("strength-out-of-range", "img2img --model {w}/sd.safetensors --image {w}/in.png --strength 1.5 x "
       "--out {w}/o", 2, "--strength must lie in (0, 1]", absent=["o"]),
    _c("set-not-a-number", "train --config {w}/tiny.toml --set train.steps=abc", 2, "train.steps"),
    _c("set-no-equals", "train --config {w}/tiny.toml --set nonsense", 2, "section.key=value"),
    _c("set-nan-lr", "train --config {w}/tiny.toml --set train.lr=nan", 2, "train.lr must be a positive"),
    # images: a decompression bomb and a file that is no image, before the model loads
    _c("img2img-bomb", "img2img --model {w}/sd.safetensors --image {w}/bomb.png x --out {w}/o", 2,
       "too large to read as an image", "shrink it", absent=["o"]),
    _c("inpaint-not-an-image", "inpaint --model {w}/sd.safetensors --image {w}/in.png --mask {w}/taken.txt "
       "x --out {w}/o", 2, "cannot read", "taken.txt' as a mask", absent=["o"]),
    # a pickle renamed .safetensors with an SD flag: read for what it is
    _c("benign-pickle-as-safetensors-sd-flag",
       f"txt2img --model {{w}}/pickle.safetensors x --out {{w}}/o {SD}", 2,
       "not a Stable Diffusion 1.x checkpoint", absent=["o"]),
    _c("sample-of-a-pickle", "sample --model {w}/evil.ckpt --out {w}/o", 2, "pickled checkpoint",
       "not unpickled", absent=["o"]),
    # a run whose state.pt was replaced: by a code-running pickle, by an empty file
    _c("resume-malicious-state", "train --resume {w}/evil_run --quiet", 2, "state.pt", "looks malicious"),
    _c("resume-empty-state", "train --resume {w}/empty_run --quiet", 2, "state.pt", "truncated",
       "resume from an earlier checkpoint"),
    _c("damaged-metadata", "sample --model {w}/damaged.safetensors --out {w}/o --num 1", 2,
       "section 'diffusion'", "schedule = 3 is not a dict", absent=["o"]),
    # an input the loaders do not check: a short message and --debug, no bare traceback
    _c("unexpected", "sample --model {w}/weird.safetensors --out {w}/o --num 1", 1, "unexpected TypeError",
       "rerun with --debug", absent=["o"]),
    _c("unexpected-debug", "sample --model {w}/weird.safetensors --out {w}/o --num 1 --debug", 1,
       "unexpected TypeError", traceback=True),
    _c("debug-env", "sample --model {w}/nope --out {w}/o", 2, "no such run folder",
       env={"DDPM_DEBUG": "1"}, traceback=True),
    _c("debug-before-command", "--debug export {w}/nope --out {w}/x.safetensors", 2, "no such run folder",
       traceback=True),
]
for ext in EXTENSIONS:
    CASES += [
        _c(f"empty{ext}", f"txt2img --model {{w}}/empty{ext} x --out {{w}}/o", 2, "0 bytes long",
           "too short", absent=["o"]),
        _c(f"truncated{ext}", f"convert {{w}}/truncated{ext} {{w}}/out{ext}.safetensors", 2, "truncated",
           absent=[f"out{ext}.safetensors"]),
        _c(f"malicious{ext}", f"txt2img --model {{w}}/evil{ext} x --out {{w}}/o {SD}", 2, "refused",
           "nothing in it ran", "looks malicious", absent=["o"]),
    ]
for ext in (".ckpt", ".safetensors"):
    CASES.append(_c(f"malicious{ext}-convert", f"convert {{w}}/evil{ext} {{w}}/conv{ext}.safetensors", 2,
                    "looks malicious", absent=[f"conv{ext}.safetensors"]))


# ---------------------------------------------------------------------------------------- the world
def _payloads(marker: Path) -> list[object]:
    class SystemCall:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    class Exec:
        def __reduce__(self):
            return exec, (f"open({str(marker)!r}, 'w').close()",)

    return [SystemCall(), Exec()]


def _bomb(path: Path, side: int = 20000) -> None:
    """A PNG header claiming side x side pixels (PIL refuses it on opening, before any data)."""
    ihdr = b"IHDR" + struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + ihdr + struct.pack(">I", zlib.crc32(ihdr))
                     + b"\0\0\0\0IEND\xaeB`\x82")


def _write_pickles(w: Path) -> None:
    system, exec_ = _payloads(w / MARKER)
    writers = {  # every container, each under every extension below
        ".safetensors": lambda p: torch.save({"state_dict": WEIGHTS, "x": exec_}, p),  # zip
        ".ckpt": lambda p: torch.save({"state_dict": WEIGHTS, "x": system}, p),
        ".pt": lambda p: torch.save({"x": system}, p, _use_new_zipfile_serialization=False),
        ".bin": lambda p: p.write_bytes(pickle.dumps({"x": exec_}, protocol=4)),
    }
    for ext, write in writers.items():
        write(w / f"evil{ext}")
    torch.save(WEIGHTS, w / "weights.ckpt")
    shutil.copy(w / "weights.ckpt", w / "pickle.safetensors")  # benign, under the wrong name
    save_file(WEIGHTS, str(w / "weights.safetensors"))
    torch.save(WEIGHTS, w / "legacy.pt", _use_new_zipfile_serialization=False)
    (w / "raw.bin").write_bytes(pickle.dumps(dict(WEIGHTS), protocol=2))
    for ext, source in zip(EXTENSIONS, ("weights.safetensors", "weights.ckpt", "legacy.pt", "raw.bin")):
        data = (w / source).read_bytes()
        (w / f"truncated{ext}").write_bytes(data[: len(data) // 2])
        (w / f"empty{ext}").write_bytes(b"")


def _write_runs(w: Path) -> None:
    run = train(tiny_config(w, "run", "train.steps=2", "train.checkpoint_every=2"), progress=False)
    export_model(run, w / "class.safetensors")
    for name in ("evil_run", "empty_run"):
        shutil.copytree(run, w / name)
    state = "checkpoints/step-2/state.pt"
    (w / "evil_run" / state).write_bytes(pickle.dumps({"step": 2, "x": _payloads(w / MARKER)[0]}, protocol=2))
    (w / "empty_run" / state).write_bytes(b"")
    tensors, meta = load_model_file(w / "class.safetensors")
    # a schedule argument no loader checks, and a metadata type the ModelMeta check refuses
    weird = {**meta, "diffusion": {**meta["diffusion"], "schedule": {"name": "linear", "bogus": 1}}}
    save_model_file(w / "weird.safetensors", tensors, weird)
    damaged = json.dumps({**meta, "diffusion": {**meta["diffusion"], "schedule": 3}})
    save_file(dict(tensors), str(w / "damaged.safetensors"), metadata={"ddpm": damaged})
    (w / "tiny.toml").write_text(dump_config(tiny_config(w, "fresh", "train.steps=2")))


def _write_sd(w: Path) -> None:
    """A tiny SD single file: only its header is read by the cases that name it."""
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1)}, str(w / "sd.safetensors"))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = tmp_path_factory.mktemp("world")
    (w / "sub").mkdir()
    (w / "taken.txt").write_text("mine")
    from PIL import Image

    Image.new("RGB", (16, 16), "red").save(w / "in.png")
    _bomb(w / "bomb.png")
    _write_pickles(w)
    _write_runs(w)
    _write_sd(w)
    return w


# ------------------------------------------------------------------------------------------- running
def _run(case: Case, w: Path) -> subprocess.CompletedProcess:
    argv = [a.replace("{w}", str(w)) for a in case.argv]
    env = {**os.environ, **case.env}
    if not case.env:
        env.pop("DDPM_DEBUG", None)
    return subprocess.run([*CLI, *argv], capture_output=True, text=True, env=env, timeout=300, cwd=w)


def _rows(path: Path) -> int:
    try:
        with open(path, newline="") as f:
            return sum(1 for _ in csv.DictReader(f))
    except FileNotFoundError:
        return 0


def _interrupt(w: Path, signum: int) -> subprocess.CompletedProcess:
    """`ddpm train` on a long run, sent `signum` once it has logged two steps."""
    name = f"stop-{signum}"
    config = w / f"{name}.toml"
    config.write_text(dump_config(tiny_config(w, name, "train.steps=100000", "train.checkpoint_every=0",
                                              "train.warmup_steps=200000")))  # and a warning on the way
    proc = subprocess.Popen([*CLI, "train", "--config", str(config), "--quiet"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=w)
    deadline = time.monotonic() + 240
    while _rows(w / name / "metrics.csv") < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


SIGNALS = {"SIGTERM": (signal.SIGTERM, 143), "SIGINT": (signal.SIGINT, 130)}


@pytest.fixture(scope="module")
def results(world):
    """Every case's CompletedProcess by name, two at a time (the signal runs first: they take longest)."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        jobs = {name: pool.submit(_interrupt, world, signum) for name, (signum, _) in SIGNALS.items()}
        jobs.update({case.name: pool.submit(_run, case, world) for case in CASES})
        return {name: job.result() for name, job in jobs.items()}


# --------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_failure_is_one_line_with_its_status(case, results, world):
    proc = results[case.name]
    command = next(a for a in case.argv if not a.startswith("--"))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == case.code, proc.stderr
    assert lines and lines[-1].startswith(f"ddpm {command}: error: "), proc.stderr
    for fragment in case.says:
        assert fragment in lines[-1], (fragment, proc.stderr)
    assert ("Traceback" in proc.stdout + proc.stderr) == case.traceback, proc.stderr
    if not case.traceback:  # the error line is all it printed, beyond argparse's usage line
        assert all(line.startswith(("usage:", " ")) for line in lines[:-1]), proc.stderr
    for path in case.absent:
        assert not (world / path).exists(), path


def test_no_malicious_pickle_ever_ran(results, world):
    assert len(results) == len(CASES) + len(SIGNALS)
    assert not (world / MARKER).exists()


@pytest.mark.parametrize("name", SIGNALS)
def test_interrupted_training_saves_and_exits_with_the_signal_status(name, results, world):
    proc = results[name]
    _, code = SIGNALS[name]
    run = world / f"stop-{SIGNALS[name][0]}"
    assert proc.returncode == code, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith(f"ddpm train: interrupted: stopped by {name} at step "), proc.stderr
    assert "checkpoint saved" in line and f"ddpm train --resume {run}" in line
    assert "next:" not in proc.stdout and "Traceback" not in proc.stderr
    warning = "ddpm train: warning: train.warmup_steps (200000) exceeds train.steps (100000)"
    assert any(line.startswith(warning) for line in proc.stderr.splitlines()), proc.stderr
    step = int(line.split(" at step ")[1].split(";")[0])
    assert step >= 2 and (run / "latest").read_text().strip() == f"checkpoints/step-{step}"


def test_help_does_not_import_torch():
    script = ("import runpy, sys\nsys.argv = ['ddpm', '--help']\n"
              "try:\n    runpy.run_module('ddpm.cli', run_name='__main__')\nexcept SystemExit:\n    pass\n"
              "print('torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("False"), proc.stdout + proc.stderr


def test_explain_maps_memory_and_disk_failures_to_status_1():
    """Out of memory and a failing disk happen during the work (status 1), with what to change."""
    from ddpm.cli import explain

    code, _, message = explain(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert code == 1 and "--batch-size" in message
    code, _, message = explain(OSError(28, "No space left on device"))
    assert code == 1 and "full disk" in message
    assert explain(PermissionError(13, "Permission denied"))[0] == 2
