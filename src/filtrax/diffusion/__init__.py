"""Diffusion building blocks: noise levels, denoisers and samplers (EDM/VE convention)."""
