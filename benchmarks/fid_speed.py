"""Images per second of FID feature extraction (uint8 images -> resize to 299 -> Inception-v3 pool3, 2048
features): ours (`ddpm.evaluation.inception`, BatchNorms folded into the convs) beside torch-fidelity's
`FeatureExtractorInceptionV3` on the same images and the same weights, with the same TF1 resize.

pytorch-fid is not measured: it builds its network from torchvision, which cannot be installed beside this
machine's CPU torch (its `inception.py` imports torchvision at the top), so the table says so instead.
Speed does not depend on the weights' values, so without --weights both run the same random weights.
Both are timed in alternating rounds in one process (a busy machine slows both alike); the table shows the
best and the median round, images per CPU second of the process (steadier than the wall clock on a shared
machine; with one thread it is the work itself), and the ratios ours / torch-fidelity (above 1: ours is
faster).

    .venv/bin/python benchmarks/fid_speed.py                     # CPU (+ CUDA if available)
    .venv/bin/python benchmarks/fid_speed.py --num 200 --batch-size 50 --device cuda --weights FILE.pth
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

import torch

from ddpm.evaluation.inception import FIDInceptionV3, load_inception


def torch_fidelity_inception():
    """torch-fidelity's feature_extractor_inceptionv3 module without its package `__init__` (which imports
    torchvision): a bare package entry pointing at the installed folder, then the module file itself."""
    if "torch_fidelity" not in sys.modules:
        spec = importlib.util.find_spec("torch_fidelity")
        if spec is None or spec.origin is None:
            raise SystemExit("torch-fidelity is not installed: pip install --no-deps torch-fidelity")
        package = types.ModuleType("torch_fidelity")
        package.__path__ = [str(Path(spec.origin).parent)]
        sys.modules["torch_fidelity"] = package
    root = Path(sys.modules["torch_fidelity"].__path__[0])
    name = "torch_fidelity.feature_extractor_inceptionv3"
    module_spec = importlib.util.spec_from_file_location(name, root / "feature_extractor_inceptionv3.py")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    module_spec.loader.exec_module(module)
    return module


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, load {load:.1f}"


def images_per_second(fn, images: torch.Tensor, batch_size: int, device: torch.device) -> tuple[float, float]:
    """(images per wall-clock second, images per CPU second of this process)."""
    start, cpu = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        for s in range(0, len(images), batch_size):
            fn(images[s : s + batch_size].to(device))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return len(images) / (time.perf_counter() - start), len(images) / (time.process_time() - cpu)


def bench(device: torch.device, args: argparse.Namespace, weights: Path) -> None:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.num, 3, args.size, args.size), generator=g, dtype=torch.uint8)
    ours = load_inception(weights, device=device)
    ref = torch_fidelity_inception().FeatureExtractorInceptionV3(
        "inception-v3-compat", ["2048"], feature_extractor_weights_path=str(weights)
    ).to(device)
    sides = {
        "ours": lambda x: ours.features(x, dims=2048, resize="tf"),
        "torch-fidelity": lambda x: ref(x)[0],
    }
    for fn in sides.values():  # warm-up (allocator, cuDNN autotune)
        images_per_second(fn, images[: min(args.batch_size, 4)], args.batch_size, device)
    rounds: dict[str, list[float]] = {k: [] for k in sides}
    cpu: dict[str, list[float]] = {k: [] for k in sides}
    for _ in range(args.rounds):
        for name, fn in sides.items():
            wall, per_cpu = images_per_second(fn, images, args.batch_size, device)
            rounds[name].append(wall)
            cpu[name].append(per_cpu)
    # The same features, as a check that both ran the same network on the same input.
    x = images[:2].to(device)
    a, b = sides["ours"](x).cpu(), sides["torch-fidelity"](x).cpu()
    diff = ((a - b).abs().max() / b.abs().max()).item()
    print(f"\nFID feature extraction on {device.type} ({machine(device)}), torch {torch.__version__}: "
          f"{args.num} images {args.size}x{args.size} -> 299, batch {args.batch_size}, {args.rounds} rounds")
    print(f"{'extractor':<16} {'best img/s':>11} {'median img/s':>13} {'img per CPU s':>14}")
    for name, r in rounds.items():
        per_cpu = statistics.median(cpu[name])
        print(f"{name:<16} {max(r):>11.2f} {statistics.median(r):>13.2f} {per_cpu:>14.2f}")
    print(f"{'pytorch-fid':<16} {'n/a':>11} {'n/a':>13} {'n/a':>14}  (needs torchvision)")
    ratio = max(rounds["ours"]) / max(rounds["torch-fidelity"])
    ratio_cpu = statistics.median(cpu["ours"]) / statistics.median(cpu["torch-fidelity"])
    print(f"ratio ours / torch-fidelity: {ratio:.2f}x (best rounds, wall clock), {ratio_cpu:.2f}x "
          f"(median, CPU time); features agree to {diff:.1e}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num", type=int, default=40, help="images per round (default 40)")
    p.add_argument("--size", type=int, default=32, help="side of the input images (default 32, CIFAR)")
    p.add_argument("--batch-size", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="CPU threads (default 1: the machine is shared)")
    p.add_argument("--device", default="all", help="cpu, cuda, or all (cpu, then cuda if available)")
    p.add_argument("--weights", help="an Inception weights file (default: random weights of the same shape)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(args.weights) if args.weights else Path(tmp) / "random-inception.pth"
        if not args.weights:
            torch.manual_seed(0)
            sd = {k: v for k, v in FIDInceptionV3().state_dict().items() if "num_batches" not in k}
            for k, v in sd.items():  # BatchNorm statistics away from the identity, so features are not tiny
                if k.endswith(("running_var", "bn.weight")):
                    v.uniform_(0.5, 1.5)
                elif k.endswith(("running_mean", "bn.bias")):
                    v.normal_(0, 0.1)
            torch.save(sd, weights)
        devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
        for name in devices:
            if name.startswith("cuda") and not torch.cuda.is_available():
                print("\n(no CUDA device here: GPU figures not measured)")
                continue
            bench(torch.device(name), args, weights)


if __name__ == "__main__":
    main()
