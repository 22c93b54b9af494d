"""ddpm.nn"""
