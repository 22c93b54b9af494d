"""ddpm.pipelines: inference entry points that glue a model file to a sampler. The CLI and the web server
call these only. `DiffusionPipeline` samples unconditional and class-conditional pixel models."""

from .pixel import DiffusionPipeline

__all__ = ["DiffusionPipeline"]
