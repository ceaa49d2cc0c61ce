"""MIAR: autoregressive medical image super-resolution, as ``direct.nn.miar``."""
