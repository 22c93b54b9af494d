"""Samplers behind `ddpm.sample`: plain functions `sampler(denoiser, x, grid, **options)`, one per family.

| A1111 / ComfyUI name | our call                             | diffusers scheduler                         |
| -------------------- | ------------------------------------ | ------------------------------------------- |
| DPM++ 2M             | `sampler="dpmpp_2m"`                 | DPMSolverMultistep (dpmsolver++, order 2)   |
| DPM++ 2M Karras      | `sampler="dpmpp_2m", karras=True`    | same with use_karras_sigmas=True            |
| DPM++ 3M             | `sampler="dpmpp_3m"`                 | DPMSolverMultistep (dpmsolver++, order 3)   |
| DPM++ 2M SDE         | `sampler="dpmpp_2m_sde"`             | DPMSolverMultistep (sde-dpmsolver++)        |
| … Exponential        | `exponential=True` (any sampler)     | use_exponential_sigmas=True                 |
| UniPC                | `sampler="unipc"` (order 2; `unipc_3`: order 3) | UniPCMultistep (bh2)             |
| LMS                  | `sampler="lms"`                      | LMSDiscrete (order 4)                       |
| Euler                | `sampler="euler"`                    | EulerDiscrete                               |
| Euler a              | `sampler="euler_a"`                  | EulerAncestralDiscrete                      |
| Heun                 | `sampler="heun"`                     | HeunDiscrete                                |
| DDIM                 | `sampler="ddim"` (eta=0)             | DDIM                                        |
| PLMS                 | `sampler="plms"`                     | PNDM(skip_prk_steps=True)                   |
| DDPM                 | `sampler="ddpm"`                     | DDPM                                        |
| (SD 1.x grid)        | `spacing="leading", steps_offset=1`  | timestep_spacing="leading", steps_offset=1  |
| (SD 1.x DDIM/PLMS)   | `final_sigma="sigma_min"`            | set_alpha_to_one=False                      |

Cold diffusion (Bansal et al. 2022; `cold.py`) restores a degradation (`ddpm.degradations`) instead of
removing noise: `sampler="cold"` (Algorithm 2), `"cold_naive"` (Algorithm 1), `"cold_direct"` (one-shot
restoration), each with `degradation=` and a model that returns x0_hat.

`ddpm.invert` (`inversion.py`) runs deterministic DDIM backwards: the x_T from which DDIM regenerates x0.

Spacings keep the meaning diffusers gives them for the scheduler in the same row (see `grid.py`).
"""

from ..noise import randn
from .api import COLD_SAMPLERS, GAUSSIAN_SAMPLERS, SAMPLERS, sample, sampler_grid
from .cold import LevelGrid, level_grid
from .denoiser import Denoised, Denoiser, dynamic_threshold
from .grid import Grid, discrete_grid, dpm_grid, sigma_grid
from .inversion import Inversion, invert

__all__ = [
    "sample",
    "invert",
    "Inversion",
    "SAMPLERS",
    "GAUSSIAN_SAMPLERS",
    "COLD_SAMPLERS",
    "LevelGrid",
    "level_grid",
    "sampler_grid",
    "randn",
    "Grid",
    "discrete_grid",
    "sigma_grid",
    "dpm_grid",
    "Denoiser",
    "Denoised",
    "dynamic_threshold",
]
