"""Suite-wide settings: one torch thread, because tiny convolutions on a shared 2-core machine are far slower with
two OpenMP threads competing than with one (subprocess runs of `direct train` set their own)."""

import torch

torch.set_num_threads(1)
