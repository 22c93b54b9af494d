"""ddpm.data"""
