"""ddpm.server: `ddpm serve`'s local web UI and AUTOMATIC1111-compatible HTTP API over one loaded pipeline.

- `app.create_app(pipeline, outputs=…)`: the ASGI app (FastAPI behind `safety.SafetyMiddleware`);
- `jobs.JobQueue`: the FIFO of jobs with ids and the one worker thread that owns the pipeline;
- `a1111`: A1111's request fields -> a checked `GenerationRequest`, and its answers (`info`, samplers);
- `engine.Engine`: the only caller of the pipeline; `outputs.Outputs`: images by opaque id only;
- `static/`: the page (plain HTML/JS/CSS, no build step, no network).

A web route calls the pipeline through the queue only, never models or files directly.
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(f"module 'ddpm.server' has no attribute {name!r}")
