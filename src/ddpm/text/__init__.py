"""ddpm.text: text tokenisation for text-conditioned models (the CLIP BPE tokenizer of Stable Diffusion)."""

from .clip_tokenizer import CLIPTokenizer, Tokenized

__all__ = ["CLIPTokenizer", "Tokenized"]
