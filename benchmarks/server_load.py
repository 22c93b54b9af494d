"""`ddpm serve` under load: N concurrent A1111 clients on loopback for a bounded time, beside the bare
pipeline's time per image.

For each client count, every client posts `/sdapi/v1/txt2img` (batch 1, its own seed) in a loop until the
time is up; the table shows requests/s, the p50/p95 latency a client saw, the p50 queue wait and the p50
time the worker spent on a job (both from the server's job records), and whether every request got its
image with its seed. The peer is the bare pipeline, `StableDiffusion.txt2img` for the same settings in the
same process, timed before and after the server runs (a busy machine slows both alike). Overhead at one
client = p50 latency / bare p50 - 1 (the goal: at most 5 %); with more clients the latency includes the
queue, so requests/s x bare time (the worker's busy fraction) is the figure to read there.

    .venv/bin/python benchmarks/server_load.py                       # the tiny random SD model, CPU
    .venv/bin/python benchmarks/server_load.py --model v1-5.safetensors --size 512 --steps 20 --clients 1 4
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from ddpm.pipelines import SamplingOptions  # noqa: E402
from ddpm.pipelines.stable_diffusion import StableDiffusion  # noqa: E402
from ddpm.server.app import create_app  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))] if s else float("nan")


def bare(pipe: StableDiffusion, args: argparse.Namespace, seconds: float) -> list[float]:
    """Seconds per image of the pipeline alone, for the same settings as a request."""
    times = []
    end = time.perf_counter() + seconds
    seed = 0
    while time.perf_counter() < end or len(times) < 3:
        t = time.perf_counter()
        pipe.txt2img("a lighthouse at dusk", height=args.size, width=args.size, options=SamplingOptions(
            sampler="euler_a", steps=args.steps, guidance_scale=7.0, seed=seed))  # fmt: skip
        times.append(time.perf_counter() - t)
        seed += 1
    return times


def load(url: str, clients: int, seconds: float, args: argparse.Namespace) -> dict:
    """`clients` threads posting txt2img until `seconds` pass; latencies and per-request checks."""
    latencies: list[float] = []
    bad: list[str] = []
    lock = threading.Lock()
    end = time.perf_counter() + seconds

    def client(k: int) -> None:
        session = requests.Session()
        n = 0
        while time.perf_counter() < end:
            seed = 10_000 * (k + 1) + n
            body = dict(prompt="a lighthouse at dusk", seed=seed, steps=args.steps, width=args.size,
                        height=args.size, cfg_scale=7.0, sampler_name="Euler a")  # fmt: skip
            t = time.perf_counter()
            r = session.post(f"{url}/sdapi/v1/txt2img", json=body, timeout=600)
            dt = time.perf_counter() - t
            ok = r.status_code == 200 and len(r.json()["images"]) == 1
            ok = ok and json.loads(r.json()["info"])["all_seeds"] == [seed]
            with lock:
                latencies.append(dt)
                if not ok:
                    bad.append(f"{r.status_code} seed {seed}")
            n += 1

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    return dict(latencies=latencies, bad=bad, wall=wall)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="an SD 1.x file or folder (default: the tests' tiny random SD folder)")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4])
    p.add_argument("--seconds", type=float, default=20.0, help="load time per client count")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from tiny_server import running

    with tempfile.TemporaryDirectory() as tmp:
        if args.model:
            model = Path(args.model)
        else:
            from tiny_sd import tiny_sd_folder

            model = tiny_sd_folder(Path(tmp) / "tiny-sd")
        pipe = StableDiffusion.load(model, device=args.device)
        bare(pipe, args, 2.0)  # warm-up
        before = bare(pipe, args, args.seconds / 2)
        app = create_app(pipe, outputs=Path(tmp) / "outputs")
        jobs = app.app.state.jobs
        rows = []
        with running(app) as (url, _):
            load(url, 1, 2.0, args)  # warm-up
            for n in args.clients:
                t0 = time.time()
                result = load(url, n, args.seconds, args)
                done = [j for j in list(jobs._jobs.values()) if j.created >= t0 and j.finished is not None]
                rows.append((n, result, [j.queue_wait for j in done], [j.finished - j.started for j in done]))
        after = bare(pipe, args, args.seconds / 2)

    bare_p50 = statistics.median(before + after)
    print(f"machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} CPUs, torch "
          f"{torch.__version__}, {args.threads} thread(s), device {args.device}")
    print(f"model: {args.model or 'tiny random SD (tests/tiny_sd.py)'}, {args.size}x{args.size}, "
          f"{args.steps} steps, Euler a, CFG 7, batch 1")
    print(f"bare pipeline (StableDiffusion.txt2img): p50 {bare_p50 * 1000:.1f} ms per image "
          f"(before {statistics.median(before) * 1000:.1f}, after {statistics.median(after) * 1000:.1f}; "
          f"{len(before) + len(after)} images)")
    print()
    print("| clients | requests | req/s | p50 latency ms | p95 latency ms | p50 queue wait ms | "
          "p50 worker ms/job | p50 latency / bare | all got their image |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for n, r, waits, runs in rows:
        lat = r["latencies"]
        print(f"| {n} | {len(lat)} | {len(lat) / r['wall']:.2f} | {percentile(lat, .5) * 1000:.1f} | "
              f"{percentile(lat, .95) * 1000:.1f} | {percentile(waits, .5) * 1000:.1f} | "
              f"{percentile(runs, .5) * 1000:.1f} | {percentile(lat, .5) / bare_p50:.3f} | "
              f"{'yes' if not r['bad'] else 'NO: ' + ', '.join(r['bad'][:5])} |")
    one = [r for r in rows if r[0] == 1]
    if one:
        over = percentile(one[0][1]["latencies"], .5) / bare_p50 - 1
        print(f"\nserver overhead at 1 client, batch 1: {over * 100:+.1f} % of the bare pipeline "
              "(goal <= 5 %)")


if __name__ == "__main__":
    main()
