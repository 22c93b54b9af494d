"""ddpm.editing: text-guided editing of one real image, beside the pipelines it builds on.

- `imagic` (Kawar et al. 2023): optimise the text embedding to the image, fine-tune the model (LoRA or all
  weights) at it, sample between it and the target text's embedding (`ImagicEdit.render(etas)`);
  `ImagicEdit.save` / `load_edit` keep the optimised state so eta can be swept later;
- `img2img` (SDEdit) and `inversion_edit` (DDIM inversion, then the target prompt): the baselines;
- `EditModel` / `edit_model`: a ddpm text pixel model or SD 1.x seen the same way by all three.
"""

from __future__ import annotations

from .baselines import img2img, inversion_edit
from .imagic import ETA_RANGE, ImagicEdit, ImagicSettings, check_eta, check_target, imagic, load_edit
from .model import EditModel, Sampling, edit_model

__all__ = [
    "imagic",
    "ImagicEdit",
    "ImagicSettings",
    "load_edit",
    "img2img",
    "inversion_edit",
    "EditModel",
    "Sampling",
    "edit_model",
    "check_eta",
    "check_target",
    "ETA_RANGE",
]
