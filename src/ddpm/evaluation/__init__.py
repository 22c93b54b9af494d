"""ddpm.evaluation"""
