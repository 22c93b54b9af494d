"""Fréchet distance between two sets of features (Heusel et al. 2017, "GANs trained by a two time-scale update
rule", Eq. 6), with any feature extractor.

Notation:

| symbol        | code          | meaning                                                     |
| ------------- | ------------- | ----------------------------------------------------------- |
| f             | `features`    | feature vectors of a set of images, `[N, D]`                 |
| mu, C         | `mu`, `cov`   | their mean `[D]` and unbiased covariance `[D, D]` (float64)  |
| d^2           | return value  | |mu_1 - mu_2|^2 + tr(C_1 + C_2 - 2 (C_1^1/2 C_2 C_1^1/2)^1/2) |

The matrix square root is taken on the symmetric product C_1^1/2 C_2 C_1^1/2 through `eigh`, so the result is
real by construction and stable when the covariances are singular (fewer samples than feature dimensions).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["GaussianStats", "gaussian_stats", "frechet_distance", "frechet_distance_from_stats"]


class GaussianStats(NamedTuple):
    """Mean `[D]` and covariance `[D, D]` of a feature set, float64."""

    mu: Tensor
    cov: Tensor
    count: int


def gaussian_stats(features: Tensor) -> GaussianStats:
    """Mean and unbiased covariance of `features` `[N, D]` in float64 (N >= 2)."""
    f = torch.as_tensor(features).detach().to("cpu", torch.float64)
    if f.ndim != 2:
        raise ValueError(f"features must be a 2-D tensor [N, D], got shape {tuple(f.shape)}")
    if f.shape[0] < 2:
        raise ValueError(f"the Fréchet distance needs at least 2 feature vectors per set, got {f.shape[0]}")
    if not torch.isfinite(f).all():
        raise ValueError("features contain NaN or infinity; check the images fed to the feature extractor")
    mu = f.mean(0)
    centred = f - mu
    cov = centred.T @ centred / (f.shape[0] - 1)
    return GaussianStats(mu, cov, f.shape[0])


def _sqrt_psd(m: Tensor) -> Tensor:
    """Square root of a symmetric positive semi-definite matrix by eigen-decomposition."""
    w, v = torch.linalg.eigh((m + m.T) / 2)
    return (v * w.clamp(min=0).sqrt()) @ v.T


def frechet_distance_from_stats(a: GaussianStats, b: GaussianStats) -> float:
    """d^2 between N(mu_a, C_a) and N(mu_b, C_b) (Heusel et al. 2017, Eq. 6; Dowson & Landau 1982)."""
    if a.mu.shape != b.mu.shape:
        raise ValueError(f"feature sizes differ: {tuple(a.mu.shape)} vs {tuple(b.mu.shape)}")
    root_a = _sqrt_psd(a.cov)
    # tr((C_a C_b)^1/2) = tr((C_a^1/2 C_b C_a^1/2)^1/2): the second is symmetric PSD, so eigh applies.
    middle = root_a @ b.cov @ root_a
    w = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0)
    diff = a.mu - b.mu
    d2 = diff @ diff + torch.trace(a.cov) + torch.trace(b.cov) - 2 * w.sqrt().sum()
    # Round-off can leave a tiny negative value for identical sets; the distance itself is >= 0.
    return max(float(d2), 0.0)


def frechet_distance(features_a: Tensor, features_b: Tensor) -> float:
    """Fréchet distance between the Gaussians fitted to two feature sets `[N_a, D]` and `[N_b, D]`."""
    return frechet_distance_from_stats(gaussian_stats(features_a), gaussian_stats(features_b))
