"""ddpm.sampling"""
