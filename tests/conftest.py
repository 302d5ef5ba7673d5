"""Suite-wide settings: tiny models run fastest (and most repeatably) on one thread on a 2-core machine."""
import torch

torch.set_num_threads(1)
