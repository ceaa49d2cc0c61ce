"""NextAccel: next-acceleration-scale prediction (AQ-VAE tokenizer, transformer, distillation), as ``direct.nn.nextaccel``."""
