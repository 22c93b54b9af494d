"""ddpm.models: one architecture per file. `UNet` / `UNetConfig` cover the DDPM/ADM pixel models and the
Stable Diffusion 1.x latent UNet."""

from .unet import UNet, UNetConfig

__all__ = ["UNet", "UNetConfig"]
