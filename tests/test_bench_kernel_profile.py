"""benchmarks/_kernel_profile.py: kernel names land in the right kind, and a profiled CPU call accounts
for its wall time (the kinds plus the uncovered row add up to it); benchmarks.mfu --profile prints it."""
import pytest
import torch

from benchmarks._kernel_profile import categorise, kernel_table, markdown
from benchmarks.mfu import main


@pytest.mark.parametrize("name, kind", [
    ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x256x64", "matmul"),
    ("nvjet_tst_256x128_64x4_1x2_h_bz_coopA_TNT", "matmul"),
    ("mkldnn::_linear_pointwise", "matmul"),
    ("aten::_int_mm", "matmul"),
    ("_linear_logprob_kernel", "logprob"),  # "linear" in it, but the logprob kernel
    ("_prefix_attention_kernel", "attention"),
    ("aten::_scaled_dot_product_flash_attention_for_cpu", "attention"),
    ("_rms_norm_kernel", "rms_norm"),
    ("_rope_kernel", "rope"),
    ("_swiglu_kernel", "swiglu"),
    ("triton_poi_fused_add_mul_0", "inductor fused"),
    ("void at::native::elementwise_kernel<128, 2, at::native::direct_copy_kernel_cuda>", "copy / index"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::MulFunctor<float>>", "elementwise, unfused"),
    ("aten::view", "other"),
])
def test_categorise(name, kind):
    assert categorise(name) == kind


def test_cpu_profile_adds_up_to_wall_time():
    a, b = torch.randn(256, 256), torch.randn(256, 256)

    def run():
        for _ in range(20):
            torch.mm(a, b).softmax(-1)

    rows, kernels, wall = kernel_table(run, "cpu")
    kinds = {kind: seconds for kind, seconds, _ in rows}
    assert kinds["matmul"] > 0 and any(name == "aten::mm" and calls == 20 for name, _, calls in kernels)
    assert sum(kinds.values()) == pytest.approx(wall, rel=0.05)  # the uncovered row closes the gap
    table = markdown(rows, kernels, wall)
    assert "| matmul |" in table and "`aten::mm`" in table


def test_mfu_script_profile_table(capsys):
    assert main(["--device", "cpu", "--preset", "tiny", "--dtype", "float32", "--questions", "4",
                 "--max-tokens", "256", "--repeats", "1", "--peak-tflops", "1", "--profile", "--fuse-residual"]) == 0
    out = capsys.readouterr().out
    assert "| kind | s | share of wall | calls |" in out
    assert "| matmul |" in out and "| attention |" in out and "| rms_norm |" in out
    # --fuse-residual: the residual adds ran inside graphopt.add_rms_norm (every norm but the first one)
    assert "`graphopt::add_rms_norm` | rms_norm |" in out
