"""Emulators: a conditional denoiser plus the maps between particle states and its latent space."""
