"""ddpm.models"""
