"""benchmarks/gpu_suite.py --smoke: the GPU suite's code, run on the CPU at tiny sizes so it cannot rot
between GPU runs. Every row checks ours against diffusers on the same weights before timing (a mismatch
raises), so this also holds the suite's models equal to the reference library."""

import importlib.util
import math
import re
import sys
from pathlib import Path

import pytest
import torch

SUITE = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_suite.py"


@pytest.fixture(scope="module")
def suite():
    spec = importlib.util.spec_from_file_location("gpu_suite", SUITE)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_suite"] = module  # its dataclass looks itself up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("gpu_suite", None)


def test_the_gpu_suite_runs_every_row_on_the_cpu(suite, capsys):
    suite.main(["--smoke", "--iters", "1"])
    out = capsys.readouterr().out
    assert re.search(r"ceilings: bf16 matmul [\d.]+ TFLOP/s, copy [\d.]+ GB/s", out)
    rows = [line for line in out.splitlines() if line.startswith("| ") and "eager" in line]
    figures = {line.split(" | ")[0].lstrip("| ").split(",")[0] for line in rows}
    assert figures == {"CIFAR-10 UNet training", "CIFAR-10 UNet sampling step", "SD-1.5 UNet step",
                       "SD VAE decode 32x32"}
    for line in rows:
        cells = [c.strip() for c in line.strip("|").split("|")]
        ours_ms, theirs_ms, ratio = float(cells[2]), float(cells[3]), float(cells[4].rstrip("x"))
        assert ours_ms > 0 and theirs_ms > 0 and math.isclose(ratio, theirs_ms / ours_ms, rel_tol=0.05)
        assert 0 < float(cells[6].rstrip("%")) < 100  # MFU against the measured ceiling


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the full suite would run")
def test_the_suite_measures_nothing_without_a_gpu_unless_asked(suite, capsys):
    suite.main([])
    assert "no CUDA device here" in capsys.readouterr().out
