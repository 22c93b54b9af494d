"""Evaluation: Fréchet distance with pluggable features and its real-data floor, class accuracy judged by a
classifier the project trains itself, bits/dim on held-out data, prompt alignment of text-to-image samples
on `shapes`, a registry that holds them, and the sampler sweep (quality against counted NFE); FID, KID
and precision/recall on the standard FID Inception-v3 features (`fid`: `inception`, `fid_metrics`,
`fid_score`)."""

from . import alignment as _alignment
from . import fid_score as _fid_score
from . import inception
from .context import EvalContext, EvalOptions, balanced_labels
from .fid_metrics import (
    Stats,
    fid_from_stats,
    kernel_inception_distance,
    load_stats,
    precision_recall,
    save_stats,
)
from .fid_score import FIDResult, fid, save_folder_stats
from .frechet import GaussianStats, frechet_distance, frechet_distance_from_stats, gaussian_stats
from .harness import evaluate, format_table, parse_metrics, results_to_dict
from .judge import Judge, JudgeNet, JudgeRecipe, judge_for_tensors, train_judge
from .metrics import METRICS, Metric, MetricResult, register_metric
from .reference import ReferenceDraw, reference_draws
from .sweep import SWEEP_NFE, SWEEP_SAMPLERS, SweepResult, SweepRun, sweep

_alignment.register()
_fid_score.register()

__all__ = [
    "inception",
    "fid",
    "FIDResult",
    "Stats",
    "fid_from_stats",
    "kernel_inception_distance",
    "precision_recall",
    "load_stats",
    "save_stats",
    "save_folder_stats",
    "EvalContext",
    "EvalOptions",
    "balanced_labels",
    "GaussianStats",
    "frechet_distance",
    "frechet_distance_from_stats",
    "gaussian_stats",
    "evaluate",
    "format_table",
    "parse_metrics",
    "results_to_dict",
    "Judge",
    "JudgeNet",
    "JudgeRecipe",
    "judge_for_tensors",
    "train_judge",
    "METRICS",
    "Metric",
    "MetricResult",
    "register_metric",
    "ReferenceDraw",
    "reference_draws",
    "sweep",
    "SweepResult",
    "SweepRun",
    "SWEEP_SAMPLERS",
    "SWEEP_NFE",
]
