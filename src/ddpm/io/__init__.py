"""ddpm.io"""
