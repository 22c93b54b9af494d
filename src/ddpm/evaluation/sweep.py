"""Quality against the number of network evaluations (NFE): the same seeds sampled with each sampler at a
few NFE budgets, each scored with the chosen metrics, written as a CSV, a Markdown table and a PNG plot.

NFE is counted, not computed: the UNet is wrapped in a call counter while the samples are drawn (one call of
a guided step evaluates the conditional and unconditional halves of one stacked batch: one NFE), and the
step count of each run is the largest whose counted NFE on a one-image probe stays at or under the budget
(multistep samplers: steps = NFE; heun: 2 steps - 1 calls; plms: steps + 1).
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .context import EvalContext
from .harness import evaluate, parse_metrics
from .metrics import METRICS, MetricResult

__all__ = [
    "SWEEP_SAMPLERS",
    "SWEEP_NFE",
    "REFERENCE",
    "SweepRun",
    "SweepResult",
    "sweep",
    "steps_for_nfe",
    "sweep_metrics",
    "count_calls",
]

# The Gaussian samplers a sweep compares by default, and the NFE budgets (issue 17); `ddpm` at 1000 steps
# is the reference every row is read against.
SWEEP_SAMPLERS = ("ddim", "plms", "euler", "euler_a", "heun", "dpmpp_2m", "dpmpp_3m", "dpmpp_2m_sde", "unipc",
                  "unipc_3", "lms")  # fmt: skip
SWEEP_NFE = (5, 10, 15, 20, 50, 100)
REFERENCE = ("ddpm", 1000)


@dataclass
class SweepRun:
    """One sampler at one NFE budget: the steps chosen, the NFE counted while sampling, the scores."""

    sampler: str
    target_nfe: int
    steps: int
    nfe: float
    seconds: float
    results: dict[str, MetricResult] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        """The CSV row: identification, then each metric's value (and fd's floor and ratio)."""
        out: dict[str, Any] = {"sampler": self.sampler, "target_nfe": self.target_nfe, "steps": self.steps,
                               "nfe": _num(self.nfe), "seconds": round(self.seconds, 2)}  # fmt: skip
        for name, r in self.results.items():
            out[name] = r.value
            for key in ("floor", "ratio"):
                if isinstance(r.details.get(key), (int, float)):
                    out[f"{name}_{key}"] = r.details[key]
        return out


@dataclass
class SweepResult:
    """Every run of a sweep, the metric names, and the files written (csv, md, png)."""

    runs: list[SweepRun]
    metrics: list[str]
    num: int
    model: str = ""
    files: dict[str, Path] = field(default_factory=dict)


@contextmanager
def count_calls(module: torch.nn.Module) -> Iterator[list[int]]:
    """A one-element list counting the forward calls of `module` inside the block."""
    calls = [0]

    def hook(*_: Any) -> None:
        calls[0] += 1

    handle = module.register_forward_pre_hook(hook)
    try:
        yield calls
    finally:
        handle.remove()


def _probe_nfe(sampler: str, steps: int, schedule: Any, shape: tuple[int, ...], grid: dict[str, Any]) -> int:
    """Model calls of one `ddpm.sample` run of one image, counted on a stand-in model (it returns zeros)."""
    from ..sampling import sample

    calls = [0]

    def stand_in(x: Tensor, t: Tensor) -> Tensor:
        calls[0] += 1
        return torch.zeros_like(x)

    sample(stand_in, torch.zeros(1, *shape[1:]), schedule=schedule, sampler=sampler, steps=steps,
           generator=torch.Generator().manual_seed(0), **grid)  # fmt: skip
    return calls[0]


def steps_for_nfe(
    sampler: str, target: int, schedule: Any, shape: tuple[int, ...], grid: dict[str, Any] | None = None
) -> tuple[int, int]:
    """The largest step count whose counted NFE is at most `target`, and that NFE; ValueError if even one
    step costs more."""
    grid = grid or {}
    limit = min(int(target), schedule.num_timesteps)
    steps = limit
    nfe = _probe_nfe(sampler, steps, schedule, shape, grid)
    while nfe > target and steps > 1:  # shrink in proportion, then walk back up to the largest that fits
        steps = max(1, min(steps - 1, steps * int(target) // nfe))
        nfe = _probe_nfe(sampler, steps, schedule, shape, grid)
    if nfe > target:
        raise ValueError(f"{sampler} needs {nfe} model evaluations for one step, more than the NFE {target}")
    while steps < limit:
        more = _probe_nfe(sampler, steps + 1, schedule, shape, grid)
        if more > target:
            break
        steps, nfe = steps + 1, more
    return steps, nfe


def sweep_metrics(ctx: EvalContext, metrics: str | Sequence[str] | None) -> list[str]:
    """The checked metric names of a sweep: those given (each must score samples and apply), or else every
    registered metric that scores samples and applies to the model."""
    chosen = parse_metrics(metrics)
    names = []
    for name, metric in METRICS.items():
        if chosen is not None and name not in chosen:
            continue
        reason = None if metric.reads_samples else "it does not depend on the sampler"
        reason = reason or metric.unavailable(ctx)
        if reason is not None:
            if chosen is not None:
                raise ValueError(f"metric {name!r} cannot be swept: {reason}")
            continue
        names.append(name)
    if not names:
        raise ValueError(
            f"no metric that scores samples applies to this model (registered: {', '.join(METRICS)})"
        )
    return names


def sweep(
    ctx: EvalContext,
    *,
    samplers: Sequence[str] = SWEEP_SAMPLERS,
    nfes: Sequence[int] = SWEEP_NFE,
    metrics: str | Sequence[str] | None = None,
    reference: tuple[str, int] | None = REFERENCE,
    out: str | Path | None = None,
    log: Callable[[str], None] | None = print,
) -> SweepResult:
    """Sample `ctx.options.num` images (seeds seed … seed + num - 1, the same for every run) with each of
    `samplers` at each NFE budget, and `reference` (sampler, steps) once; score them with `metrics` (names
    in the evaluation registry; default: every sample metric that applies). `ctx.options.sampling` gives the
    rest (guidance, spacing, karras/exponential, clipping). With `out`, writes sweep.csv, sweep.md and
    sweep.png there (the first two after every run)."""
    from ..sampling import GAUSSIAN_SAMPLERS

    pipe = ctx.pipe
    unknown = [s for s in samplers if s not in GAUSSIAN_SAMPLERS]
    if unknown or not samplers:
        raise ValueError(f"unknown sampler {', '.join(unknown) or '(none given)'} for a sweep; choose from "
                         f"{', '.join(GAUSSIAN_SAMPLERS)}")  # fmt: skip
    if not nfes or any(isinstance(n, bool) or int(n) != n or n < 1 for n in nfes):
        raise ValueError(f"NFE budgets must be positive integers, got {list(nfes)}")
    if getattr(pipe, "cold", None) is not None:
        raise ValueError("a sweep compares Gaussian samplers; this is a cold-diffusion model")
    names = sweep_metrics(ctx, metrics)
    base = pipe.resolve(ctx.options.sampling)
    grid = dict(spacing=base.spacing, karras=base.karras, exponential=base.exponential)
    channels, size = int(pipe.unet.config.in_channels), int(pipe.image_size)
    shape = (1, channels, size, size)
    plan: list[tuple[str, int, int]] = []  # (sampler, target NFE, steps)
    for sampler in samplers:
        for target in sorted({int(n) for n in nfes}):
            plan.append((sampler, target, steps_for_nfe(sampler, target, pipe.schedule, shape, grid)[0]))
    if reference is not None:
        plan.append((reference[0], reference[1], reference[1]))
    o = ctx.options
    batches = math.ceil(o.num / o.batch_size)
    runs: list[SweepRun] = []
    total_nfe = sum(_probe_nfe(s, k, pipe.schedule, shape, grid) for s, _, k in plan)
    done_nfe, start = 0, time.perf_counter()
    for sampler, target, steps in plan:
        sub = ctx.derive(replace(o, sampling=base.replace(sampler=sampler, steps=steps, seed=None)))
        t0 = time.perf_counter()
        with count_calls(pipe.unet) as calls:
            sub.samples()
        sampled = time.perf_counter() - t0
        run = SweepRun(sampler, target, steps, calls[0] / batches, sampled)
        run.results = evaluate(sub, names)
        runs.append(run)
        if out is not None:  # the table so far, so an interrupted sweep keeps what it measured
            write_sweep(SweepResult(runs, names, o.num, model=getattr(pipe, "name", "")), out, plot=False)
        done_nfe += run.nfe
        if log is not None:
            spent = time.perf_counter() - start
            left = spent / max(done_nfe, 1) * (total_nfe - done_nfe)
            scores = ", ".join(f"{k} {_num(r.value)}" for k, r in run.results.items())
            log(f"{sampler:>12} NFE {_num(run.nfe):>4} ({steps} steps): {scores}  [{sampled:.1f} s; "
                f"about {left / 60:.1f} min left]")  # fmt: skip
    result = SweepResult(runs, names, o.num, model=getattr(pipe, "name", ""))
    if out is not None:
        result.files = write_sweep(result, out)
    return result


# ---------------------------------------------------------------------------------------------- files


def _num(v: float) -> Any:
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return round(v, 4) if isinstance(v, float) else v


def _fmt(v: float) -> str:
    a = abs(v)
    return f"{v:.3f}" if a < 10 else f"{v:.4g}"


def write_sweep(result: SweepResult, out: str | Path, *, plot: bool = True) -> dict[str, Path]:
    """sweep.csv (one row per run), sweep.md (a table per metric: samplers x NFE) and sweep.png."""
    from ..io.atomic import atomic_write

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    rows = [r.row() for r in result.runs]
    columns = list(dict.fromkeys(k for row in rows for k in row))
    paths = {"csv": folder / "sweep.csv", "md": folder / "sweep.md", "png": folder / "sweep.png"}
    with atomic_write(paths["csv"]) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    with atomic_write(paths["md"]) as tmp:
        tmp.write_text(format_markdown(result))
    if not plot:
        return {k: v for k, v in paths.items() if k != "png"}
    with atomic_write(paths["png"]) as tmp:
        plot_sweep(result, tmp)
    return paths


def _value(run: SweepRun, metric: str) -> float | None:
    r = run.results.get(metric)
    return None if r is None else float(r.value)


def format_markdown(result: SweepResult) -> str:
    """One table per metric: a row per sampler, a column per NFE budget; a cell whose counted NFE is under
    the budget shows it in parentheses; the reference run gets its own line under each table."""
    targets = sorted({r.target_nfe for r in result.runs if r.sampler != REFERENCE[0]})
    samplers = list(dict.fromkeys(r.sampler for r in result.runs if r.sampler != REFERENCE[0]))
    refs = [r for r in result.runs if r.sampler == REFERENCE[0]]
    lines = [f"Sampler sweep of {result.model or 'the model'}: {result.num} images per run, the same seeds "
             "for every run; NFE = model evaluations counted while sampling.", ""]  # fmt: skip
    for metric in result.metrics:
        first = next((r.results[metric] for r in result.runs if metric in r.results), None)
        floor = f" (floor {_fmt(first.details['floor'])})" if first and "floor" in first.details else ""
        lines += [f"### {metric}{floor}", "", "| sampler | " + " | ".join(f"NFE {t}" for t in targets) + " |",
                  "| --- |" + " ---: |" * len(targets)]  # fmt: skip
        for s in samplers:
            cells = []
            for t in targets:
                run = next((r for r in result.runs if r.sampler == s and r.target_nfe == t), None)
                v = None if run is None else _value(run, metric)
                if v is None:
                    cells.append("—")
                else:
                    cells.append(_fmt(v) + ("" if run.nfe == t else f" ({_num(run.nfe)})"))
            lines.append(f"| {s} | " + " | ".join(cells) + " |")
        for r in refs:
            v = _value(r, metric)
            shown = _fmt(v) if v is not None else "—"
            lines.append(f"\n{r.sampler} at {r.steps} steps (NFE {_num(r.nfe)}): {shown}")
        lines.append("")
    return "\n".join(lines) + "\n"


def plot_sweep(result: SweepResult, path: str | Path) -> Path:
    """Each metric against the counted NFE (log x), one line per sampler; the reference as a dotted line
    and fd's real-data floor as a dashed one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(result.metrics)
    fig, axes = plt.subplots(1, k, figsize=(6 * k, 4.5), squeeze=False)
    samplers = list(dict.fromkeys(r.sampler for r in result.runs if r.sampler != REFERENCE[0]))
    refs = [r for r in result.runs if r.sampler == REFERENCE[0]]
    markers = "osD^v<>pPX*h"
    for ax, metric in zip(axes[0], result.metrics):
        for i, s in enumerate(samplers):
            pts = sorted((r.nfe, _value(r, metric)) for r in result.runs if r.sampler == s)
            pts = [(x, y) for x, y in pts if y is not None]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=markers[i % len(markers)], label=s,
                    color=plt.cm.tab20(i / max(len(samplers), 1)))  # fmt: skip
        for r in refs:
            v = _value(r, metric)
            if v is not None:
                ax.axhline(v, color="black", linestyle=":", label=f"{r.sampler} {r.steps} steps")
        first = next((r.results[metric] for r in result.runs if metric in r.results), None)
        if first is not None and "floor" in first.details:
            ax.axhline(first.details["floor"], color="grey", linestyle="--", label="real-data floor")
        ax.set_xscale("log")
        ax.set_xlabel("NFE (model evaluations, counted)")
        ax.set_ylabel(metric)
        values = [v for r in result.runs if (v := _value(r, metric)) is not None and v > 0]
        if metric != "accuracy" and values and max(values) / min(values) > 3:
            ax.set_yscale("log")
        ax.set_title(f"{metric} against NFE ({result.num} images)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][-1].legend(fontsize=8, loc="best")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120, format="png")
    plt.close(fig)
    return path
