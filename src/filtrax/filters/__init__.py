"""Filters: the FA-APF, the bootstrap particle filter and the free ensemble, on one driver."""
