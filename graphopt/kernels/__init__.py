"""Custom ops for the hot spots (`torch.ops.graphopt.*`), one file each: the `@triton.jit` kernels, the
host launcher (`*_triton(...)`, picks blocks and warps), the plain-torch `*_reference`, and the op,
registered with `torch.library.triton_op` so that torch.export and torch.compile see ONE node.

On CUDA tensors an op launches its Triton kernel (under torch.compile, inductor sees the kernel itself);
on any other device it runs the reference. The launchers also accept CPU tensors: they then run the
same kernel under the Triton interpreter (slow; for tests), whatever TRITON_INTERPRET said at import."""
from graphopt.kernels import (cache_attention, int8_linear, linear_argmax, linear_logprob, logprob,  # noqa: F401
                              prefix_attention, rms_norm, rope, swiglu)  # (importing registers the ops)
