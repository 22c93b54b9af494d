"""ddpm.models: one architecture per file. `UNet` / `UNetConfig` cover the DDPM/ADM pixel models and the
Stable Diffusion 1.x latent UNet; `AutoencoderKL` is the SD-layout KL autoencoder; `CLIPTextModel` the
SD-1.x text tower; `CLIPVisionModelWithProjection` CLIP's image tower, `CLIPModel` both;
`DiffusionPrior` unCLIP's prior over image embeddings."""

from .autoencoder import AutoencoderKL, AutoencoderKLConfig, DiagonalGaussian
from .clip_vision import CLIPModel, CLIPVisionConfig, CLIPVisionModelWithProjection
from .contrastive import ContrastiveConfig, ContrastiveModel
from .prior import DiffusionPrior, PriorConfig
from .text_encoder import CLIPTextConfig, CLIPTextModel, CLIPTextOutput
from .unet import UNet, UNetConfig

__all__ = [
    "AutoencoderKL",
    "AutoencoderKLConfig",
    "CLIPTextConfig",
    "CLIPTextModel",
    "CLIPTextOutput",
    "CLIPModel",
    "CLIPVisionConfig",
    "CLIPVisionModelWithProjection",
    "ContrastiveConfig",
    "ContrastiveModel",
    "DiagonalGaussian",
    "DiffusionPrior",
    "PriorConfig",
    "UNet",
    "UNetConfig",
]
