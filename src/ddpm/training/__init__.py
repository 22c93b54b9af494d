"""ddpm.training"""
