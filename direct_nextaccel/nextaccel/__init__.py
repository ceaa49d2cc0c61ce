"""NextAccel: next-acceleration-scale prediction (AQ-VAE, transformer, distillation) as ``direct.nn.nextaccel``."""
