"""FID, KID and improved precision/recall of two feature sets, and `.npz` statistics files: the maths of
`ddpm fid` (`fid_score.py` turns folders and images into features with the Inception-v3 and calls these).

| metric            | paper                          | computed as                                       |
| ----------------- | ------------------------------ | ------------------------------------------------- |
| FID               | Heusel et al. 2017, Eq. 6      | |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^1/2) |
|                   |                                | scipy `sqrtm` in float64 as pytorch-fid (below)   |
| KID               | Bińkowski et al. 2018, Eq. 3   | unbiased MMD^2, k(x, y) = (x.y / d + 1)^3; mean   |
|                   | ("Demystifying MMD GANs")      | ± std over random subsets (as torch-fidelity)     |
| precision, recall | Kynkäänniemi et al. 2019       | the share of one set inside the union of the      |
|                   |                                | other's k-NN balls (k = 3)                        |

Statistics files are `.npz` with pytorch-fid's keys `mu` `[D]` and `sigma` `[D, D]` (and ours: `count`,
and the features while N <= D).
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "Stats",
    "stats_of",
    "fid_from_stats",
    "kernel_inception_distance",
    "precision_recall",
    "save_stats",
    "load_stats",
]


@dataclass(frozen=True)
class Stats:
    """Mean `[D]` and covariance `[D, D]` (float64, numpy) of a feature set of `count` images, and the
    features `[N, D]` themselves while N <= D (they give the exact low-rank route of `fid_from_stats`)."""

    mu: np.ndarray
    sigma: np.ndarray
    count: int = 0
    features: np.ndarray | None = None


# ----------------------------------------------------------------------------------------------
# The metrics, on features and statistics
# ----------------------------------------------------------------------------------------------


def stats_of(features: Tensor | np.ndarray) -> Stats:
    """Mean and unbiased covariance (np.cov, rowvar=False) of features `[N, D]`, N >= 2, in float64."""
    f = np.asarray(features.detach().cpu() if isinstance(features, Tensor) else features, dtype=np.float64)
    if f.ndim != 2:
        raise ValueError(f"features must be [N, D], got shape {f.shape}")
    if f.shape[0] < 2:
        raise ValueError(f"FID needs at least 2 images per set, got {f.shape[0]}")
    keep = f if f.shape[0] <= f.shape[1] else None
    return Stats(f.mean(0), np.cov(f, rowvar=False), f.shape[0], keep)


def _trace_sqrt_low_rank(fa: np.ndarray, fb: np.ndarray) -> float:
    """tr((S_a S_b)^1/2) from the features: with S = X^T X / (N - 1) for the centred features X, the
    eigenvalues of S_a S_b are the squared singular values of X_a X_b^T / sqrt((N_a - 1)(N_b - 1)), so the
    trace is that matrix's nuclear norm: an [N_a, N_b] SVD instead of a [D, D] matrix root."""
    xa, xb = fa - fa.mean(0), fb - fb.mean(0)
    scale = math.sqrt((len(fa) - 1) * (len(fb) - 1))
    return float(np.linalg.svd(xa @ xb.T, compute_uv=False).sum() / scale)


def fid_from_stats(a: Stats, b: Stats, *, eps: float = 1e-6, method: str = "auto") -> float:
    """Fréchet distance of N(mu_a, S_a) and N(mu_b, S_b) (Heusel et al. 2017, Eq. 6).

    `method` "sqrtm": (S_a S_b)^1/2 by scipy's Schur-method `sqrtm`, pytorch-fid's procedure. When the root
    comes out non-finite (a singular product: fewer images than feature dimensions), `eps` I is added to both
    covariances first; round-off leaves a small imaginary part, which is dropped (an error if it is large,
    as the root is then not trustworthy). "low-rank": the same trace from the features
    (`_trace_sqrt_low_rank`; exact, and well conditioned where sqrtm is not). "auto" (default): low-rank
    when both `Stats` carry their features (N <= D), else sqrtm. The two agree to about 1e-6 relative
    (tests/test_fid.py).
    """
    from scipy import linalg

    if method not in ("auto", "sqrtm", "low-rank"):
        raise ValueError(f"method must be 'auto', 'sqrtm' or 'low-rank', got {method!r}")
    have = a.features is not None and b.features is not None
    if method == "low-rank" and not have:
        raise ValueError("the low-rank route needs the features of both sets (Stats.features)")
    mu_a, mu_b = np.atleast_1d(a.mu).astype(np.float64), np.atleast_1d(b.mu).astype(np.float64)
    s_a, s_b = np.atleast_2d(a.sigma).astype(np.float64), np.atleast_2d(b.sigma).astype(np.float64)
    if mu_a.shape != mu_b.shape or s_a.shape != s_b.shape or s_a.shape != (mu_a.size, mu_a.size):
        raise ValueError(f"the two statistics do not match: mu {mu_a.shape} vs {mu_b.shape}, sigma "
                         f"{s_a.shape} vs {s_b.shape} (were they made with the same --dims?)")
    diff = mu_a - mu_b
    if have and method != "sqrtm":
        tr_root = _trace_sqrt_low_rank(np.asarray(a.features, np.float64), np.asarray(b.features, np.float64))
        return float(diff @ diff + np.trace(s_a) + np.trace(s_b) - 2 * tr_root)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns on singular products; checked below
        root = linalg.sqrtm(s_a @ s_b)
    if not np.isfinite(root).all():
        offset = np.eye(s_a.shape[0]) * eps
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            root = linalg.sqrtm((s_a + offset) @ (s_b + offset))
    if np.iscomplexobj(root):
        imag = np.max(np.abs(np.diagonal(root).imag))
        if not np.allclose(np.diagonal(root).imag, 0, atol=1e-3):
            raise ValueError(f"the covariance product's square root has an imaginary part of {imag:.3g}; "
                             "use more images (at least as many as --dims) for a trustworthy FID")
        root = root.real
    return float(diff @ diff + np.trace(s_a) + np.trace(s_b) - 2 * np.trace(root))


def _poly_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 with the cubic kernel (x.y / d + 1)^3 (Bińkowski et al. 2018, Eq. 3; m = n)."""
    d = x.shape[1]
    k_xx, k_yy, k_xy = ((p @ q.T / d + 1) ** 3 for p, q in ((x, x), (y, y), (x, y)))
    m, n = len(x), len(y)
    within = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1)) + (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
    return float(within - 2 * k_xy.mean())


def kernel_inception_distance(
    features_a: Tensor | np.ndarray,
    features_b: Tensor | np.ndarray,
    *,
    subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float, int]:
    """(mean, std, subset size) of the unbiased KID over `subsets` random subsets drawn without replacement.

    The subset size is `subset_size` or the smaller set's size, whichever is less (torch-fidelity refuses
    the latter case; KID is meant for small sets, so we shrink the subsets and report the size used).
    """
    a = np.asarray(features_a, dtype=np.float64)
    b = np.asarray(features_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"KID needs two feature sets [N, D] of one D, got {a.shape} and {b.shape}")
    size = min(subset_size, len(a), len(b))
    if size < 2:
        raise ValueError(f"KID needs at least 2 images per set, got {len(a)} and {len(b)}")
    if subsets < 1:
        raise ValueError(f"subsets must be at least 1, got {subsets}")
    rng = np.random.RandomState(seed)
    mmds = np.array([
        _poly_mmd2(a[rng.choice(len(a), size, replace=False)], b[rng.choice(len(b), size, replace=False)])
        for _ in range(subsets)
    ])  # fmt: skip
    return float(mmds.mean()), float(mmds.std()), size


def _kth_radius(x: Tensor, k: int, chunk: int) -> Tensor:
    """Distance of each row of `x` to its k-th nearest other row `[N]`."""
    out = []
    for s in range(0, len(x), chunk):
        d = torch.cdist(x[s : s + chunk], x)
        out.append(d.kthvalue(k + 1, dim=1).values)  # the 1st is the point itself (distance 0)
    return torch.cat(out)


def _inside(query: Tensor, centres: Tensor, radii: Tensor, chunk: int) -> Tensor:
    """For each query row, whether it lies in some ball (centre, radius) `[M]` bool."""
    out = []
    for s in range(0, len(query), chunk):
        d = torch.cdist(query[s : s + chunk], centres)
        out.append((d <= radii[None]).any(1))
    return torch.cat(out)


def precision_recall(
    real: Tensor | np.ndarray, fake: Tensor | np.ndarray, *, k: int = 3, chunk: int = 1024
) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019): precision = the share of `fake` inside the
    union of the real k-NN balls, recall = the share of `real` inside the fake ones."""
    r = torch.as_tensor(np.asarray(real), dtype=torch.float64)
    f = torch.as_tensor(np.asarray(fake), dtype=torch.float64)
    if min(len(r), len(f)) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} images per set, "
                         f"got {len(r)} and {len(f)}")
    precision = _inside(f, r, _kth_radius(r, k, chunk), chunk).double().mean()
    recall = _inside(r, f, _kth_radius(f, k, chunk), chunk).double().mean()
    return float(precision), float(recall)


# ----------------------------------------------------------------------------------------------
# Statistics files and the cache
# ----------------------------------------------------------------------------------------------


def save_stats(path: str | os.PathLike[str], stats: Stats, **extra: Any) -> Path:
    """Write `mu` and `sigma` (pytorch-fid's keys), `count`, the features when kept (N <= D) and any `extra`
    scalars to an `.npz` atomically."""
    from ..io.atomic import atomic_write

    path = Path(path)
    with atomic_write(path) as tmp, open(tmp, "wb") as f:
        arrays = {"features": stats.features.astype(np.float32)} if stats.features is not None else {}
        np.savez(f, mu=stats.mu, sigma=stats.sigma, count=np.int64(stats.count), **arrays,
                 **{k: np.asarray(v) for k, v in extra.items()})  # fmt: skip
    return path


def load_stats(path: str | os.PathLike[str]) -> Stats:
    """`mu`, `sigma` of an `.npz` written by us, pytorch-fid (`--save-stats`) or the TTUR code."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such statistics file: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            if "mu" not in z or "sigma" not in z:
                held = ", ".join(z.files) or "none"
                raise ValueError(f"{path} has no 'mu' and 'sigma' arrays (it holds {held}); "
                                 "write one with `ddpm fid --save-stats DIR OUT.npz`")
            count = int(z["count"]) if "count" in z else 0
            feats = np.asarray(z["features"], np.float64) if "features" in z else None
            return Stats(np.asarray(z["mu"], np.float64), np.asarray(z["sigma"], np.float64), count, feats)
    except (OSError, EOFError) as e:
        raise ValueError(f"{path} is not a readable .npz statistics file ({e})") from e
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise ValueError(f"{path} holds pickled objects; statistics files hold plain arrays only") from e
        raise
