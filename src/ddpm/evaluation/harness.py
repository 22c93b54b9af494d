"""`evaluate`: run the chosen metrics on one model with shared samples, real data and judge; print a table."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .context import EvalContext
from .metrics import METRICS, MetricResult

__all__ = ["evaluate", "parse_metrics", "format_table", "results_to_dict"]


def parse_metrics(spec: str | Sequence[str] | None) -> list[str] | None:
    """ "fd,accuracy" or ["fd", "accuracy"] -> a checked list of registered names; None or "all" -> None."""
    if spec is None:
        return None
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if names == ["all"]:
        return None
    unknown = [n for n in names if n not in METRICS]
    if unknown or not names:
        raise ValueError(
            f"unknown metric {', '.join(unknown) or '(none given)'}; choose from {', '.join(METRICS)}"
        )
    return list(dict.fromkeys(names))


def evaluate(ctx: EvalContext, metrics: str | Sequence[str] | None = None) -> dict[str, MetricResult]:
    """Compute `metrics` (default: every registered metric that applies to the model) in registry order.

    A metric named explicitly that does not apply raises ValueError with the reason.
    """
    chosen = parse_metrics(metrics)
    results: dict[str, MetricResult] = {}
    for name, metric in METRICS.items():
        if chosen is not None and name not in chosen:
            continue
        reason = metric.unavailable(ctx)
        if reason is not None:
            if chosen is not None:
                raise ValueError(f"metric {name!r} does not apply: {reason}")
            continue
        results[name] = metric.compute(ctx)
    return results


def _fmt(value: float) -> str:
    a = abs(value)
    return f"{value:.4f}" if a < 1 else f"{value:.3f}" if a < 10 else f"{value:.4g}"


def format_table(results: dict[str, MetricResult]) -> str:
    """A plain-text table: metric | value | what it is compared with."""
    rows = [("metric", "value", "context")] + [(r.name, _fmt(r.value), r.note) for r in results.values()]
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    return "\n".join(f"{a:<{w0}}  {b:>{w1}}  {c}".rstrip() for a, b, c in rows)


def results_to_dict(results: dict[str, MetricResult]) -> dict[str, Any]:
    """JSON-able form: {name: {"value": …, "note": …, details…}}."""
    return {name: r.to_dict() for name, r in results.items()}
