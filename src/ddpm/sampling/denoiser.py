"""The network seen through its parameterisation at the points of one grid: x_t -> (x0_hat, eps_hat).

Notation (as in process.py):

| symbol        | code        | meaning                                                              |
| ------------- | ----------- | -------------------------------------------------------------------- |
| x_t           | `x_t`       | the VP sample the network sees at grid point i, `[B, C, …]`           |
| out           | `output`    | network output in its parameterisation (eps, x0 or v), `[B, C or 2C, …]` |
| x0_hat, eps_hat | `Denoised` | the pair read from `out` by `process.to_x0_eps` (clipped when asked)  |
| v_var         | `variance`  | second half of a 2C-channel output: Improved DDPM's learned-range v   |

`process.to_x0_eps` is linear in (x_t, out) with coefficients that depend on alpha_bar only, so it is
evaluated once per run on the grid's alpha_bars (float64) and applied per step with Python floats:
no per-step gathers, host-device copies or syncs. Non-finite model outputs are recorded per step
without a sync and reported, with the first bad step, after the run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from .. import process
from ..process import AlphaBars
from .grid import Grid

__all__ = [
    "Denoised",
    "Denoiser",
    "Denoise",
    "NoiseFn",
    "CLIP_MODES",
    "AlphaBars",
    "dynamic_threshold",
    "step_range",
    "StepHook",
    "lin",
]

CLIP_MODES = (None, "static", "dynamic")


def lin(a: float, x: Tensor, b: float, y: Tensor) -> Tensor:
    """a x + b y, skipping the exact zeros and ones (so eps models return their eps untouched)."""
    if a == 0.0:
        return y if b == 1.0 else y * b
    if b == 0.0:
        return x if a == 1.0 else x * a
    return (x * a).add_(y, alpha=b)


class Denoised:
    """The denoiser's reading of one model output at one grid point: x0_hat and eps_hat (computed on first
    use), any affine mix a x_t + b x0_hat + c eps_hat in one pass, and the learned-variance v or None."""

    __slots__ = ("x_t", "output", "variance", "_coef", "_clip", "_x0", "_eps")

    def __init__(
        self, x_t: Tensor, output: Tensor, variance: Tensor | None, coef: tuple[float, ...], clip: str | None
    ) -> None:
        self.x_t, self.output, self.variance = x_t, output, variance
        self._coef, self._clip = coef, clip
        self._x0: Tensor | None = None
        self._eps: Tensor | None = None

    @property
    def x0(self) -> Tensor:
        if self._x0 is None:
            x0 = lin(self._coef[0], self.x_t, self._coef[1], self.output)
            if self._clip is not None:
                x0 = x0.clamp(-1, 1) if self._clip == "static" else dynamic_threshold(x0)
            self._x0 = x0
        return self._x0

    @property
    def eps(self) -> Tensor:
        if self._eps is None:
            c = self._coef
            if self._clip is None:
                self._eps = lin(c[2], self.x_t, c[3], self.output)
            else:  # eps consistent with the clipped x0 (improved-diffusion's choice)
                self._eps = lin(c[4], self.x_t, c[5], self.x0)
        return self._eps

    def mix(self, *, x_t: float = 0.0, x0: float = 0.0, eps: float = 0.0) -> Tensor:
        """x_t * `x_t` + x0_hat * `x0` + eps_hat * `eps`, written as two terms (both readings are affine)."""
        c = self._coef
        if self._clip is None:
            return lin(x_t + x0 * c[0] + eps * c[2], self.x_t, x0 * c[1] + eps * c[3], self.output)
        return lin(x_t + eps * c[4], self.x_t, x0 + eps * c[5], self.x0)


def dynamic_threshold(x0: Tensor, percentile: float = 0.995) -> Tensor:
    """Imagen's dynamic thresholding (Saharia et al. 2022, Sec. 2.3): s = max(1, percentile of |x0| per
    sample); x0 -> clamp(x0, -s, s) / s."""
    flat = x0.flatten(1)
    s = torch.quantile(flat.abs().float(), percentile, dim=1).clamp(min=1).to(x0.dtype)
    s = s.reshape(-1, *([1] * (x0.ndim - 1)))
    return torch.maximum(torch.minimum(x0, s), -s) / s


def _coefficients(alpha_bars: Tensor, prediction: str) -> list[list[float]]:
    """[x0 <- x_t, x0 <- out, eps <- x_t, eps <- out, eps <- x_t | x0, eps <- x0] per grid point."""
    n = alpha_bars.numel()
    view, idx = AlphaBars(alpha_bars.to(torch.float64)), torch.arange(n)
    one, zero = torch.ones(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
    x0_x, eps_x = process.to_x0_eps(view, one, idx, zero, prediction)
    x0_o, eps_o = process.to_x0_eps(view, zero, idx, one, prediction)
    clip_x = process.eps_from_x0(view, one, idx, zero)
    clip_0 = process.eps_from_x0(view, zero, idx, one)
    return [c.tolist() for c in (x0_x, x0_o, eps_x, eps_o, clip_x, clip_0)]


class Denoiser:
    """Per-run reader of `model_fn(x, t) -> out` at the points of `grid` (one per sample call)."""

    def __init__(
        self,
        model_fn: Callable[[Tensor, Tensor], Tensor],
        grid: Grid,
        *,
        prediction: str,
        clip_x0: str | None,
        like: Tensor,
        model_dtype: torch.dtype,
    ) -> None:
        if prediction not in process.PREDICTIONS:
            raise ValueError(f"unknown prediction {prediction!r}; choose one of {list(process.PREDICTIONS)}")
        if clip_x0 not in CLIP_MODES:
            raise ValueError(f"unknown clip_x0 {clip_x0!r}; choose one of {list(CLIP_MODES)}")
        ab = grid.alpha_bars  # [n + 1]: the terminal point too (Heun evaluates there when its sigma > 0)
        if prediction == "eps" and bool((ab[:-1] <= 0).any()):
            raise ValueError(
                "an eps-prediction model cannot be read at alpha_bar = 0 (zero-terminal-SNR schedule): "
                "x0 = (x - sqrt(1 - ab) eps) / sqrt(ab) is undefined there; use a v-prediction model or "
                "a sigma-space sampler (euler, heun, dpmpp_2m clamp alpha_bar to 2^-24)"
            )
        self.model_fn = model_fn
        self.grid = grid
        self.clip_x0 = clip_x0
        self.model_dtype = model_dtype
        self.channels = like.shape[1]
        self.coef = list(zip(*_coefficients(ab, prediction)))
        B = like.shape[0]
        t = torch.cat([grid.timesteps, grid.timesteps.new_zeros(1)]).to(like.device)  # terminal: t = 0
        self.t = t.repeat_interleave(B).view(-1, B).unbind(0)
        self.checks: list[tuple[int, Tensor]] = []

    def __call__(self, x_t: Tensor, i: int) -> Denoised:
        """The model's reading at grid point `i` for the VP sample `x_t` `[B, C, …]`."""
        out = self.model_fn(x_t.to(self.model_dtype), self.t[i])
        if not isinstance(out, Tensor):
            raise ValueError(
                f"the model returned {type(out).__name__}, not a tensor; wrap it to return the prediction, "
                "e.g. lambda x, t, **c: unet(x, t, **c).sample"
            )
        C = self.channels
        if out.shape[0] != x_t.shape[0] or out.shape[2:] != x_t.shape[2:] or out.shape[1] not in (C, 2 * C):
            raise ValueError(
                f"model output has shape {tuple(out.shape)} for input {tuple(x_t.shape)}; expected the "
                f"input's shape with {C} channels, or {2 * C} for a learned-variance model"
            )
        self.checks.append((i, out.sum(dtype=torch.float64 if out.dtype == torch.float64 else torch.float32)))
        out = out.to(x_t.dtype)
        variance = None
        if out.shape[1] == 2 * C:
            out, variance = out[:, :C], out[:, C:]
        return Denoised(x_t, out, variance, self.coef[i], self.clip_x0)

    def raise_if_not_finite(self) -> None:
        """ValueError naming the first step whose model output held a NaN or inf (one device sync per run)."""
        if not self.checks:
            return
        ok = torch.isfinite(torch.stack([s for _, s in self.checks]))
        if bool(ok.all()):
            return
        k = int((~ok).nonzero()[0, 0])
        i = self.checks[k][0]
        n = self.grid.num_steps
        t = float(self.grid.timesteps[i])
        raise ValueError(
            f"the model output is not finite (NaN or inf) at sampling step {i + 1} of {n} (timestep t={t:g}, "
            f"model call {k + 1}); try clip_x0='static' or 'dynamic', a lower guidance_scale, or running "
            "the model in float32"
        )


Denoise = Callable[[Tensor, int], Denoised]
NoiseFn = Callable[[Tensor], Tensor]


StepHook = Callable[[int], None]


def step_range(n: int, progress: bool | StepHook) -> Iterable[int]:
    """range(n), shown as a tqdm bar when `progress` is True; a callable `progress` is called with the
    number of finished steps (1 … n) after each step instead (`ddpm.sample`'s `callback`)."""
    if callable(progress):
        return _hooked(n, progress)
    if not progress:
        return range(n)
    from tqdm.auto import tqdm

    return tqdm(range(n), desc="sampling", unit="step")


def _hooked(n: int, hook: StepHook) -> Iterable[int]:
    for i in range(n):
        yield i
        hook(i + 1)
