"""Guidance: wrappers that turn a prior denoiser into a posterior denoiser."""
