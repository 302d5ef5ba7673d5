"""Custom ops for the hot spots (`torch.ops.graphopt.*`): each has a plain-torch reference used on
CPU and in tests, and a Triton kernel used on CUDA tensors."""
from graphopt.kernels import linear_logprob, logprob, prefix_attention, rms_norm, rope, swiglu  # noqa: F401 (registers ops)
