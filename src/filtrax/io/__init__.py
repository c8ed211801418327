"""Edges of the library: grids, files and xarray conversion (the core never imports these)."""
