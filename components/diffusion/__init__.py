"""Diffusion and score distillation components, built on diffusers' schedulers and models."""
