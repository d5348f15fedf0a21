"""benchmarks/profile_summary.py: the busy time is the union of kernel intervals (overlaps
count once), idle gaps are found between them, and kernels land in the right category."""
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))
from profile_summary import busy_us, by_category, category, gaps, host_ops_during, summarize  # noqa: E402


@pytest.mark.parametrize("name, expected", [
    ("nvjet_sm90_tst_256x128_64x4_1x2_h_bz_coopA_NNT", "gemm"),
    ("cudnn_generated_fort_native_sdpa_sm90_flash_bprop_wgmma_f16_knob_26", "attention"),
    ("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<at::native::(anonymous", "optimizer (foreach)"),
    ("triton_red_fused__unsafe_view_add_gelu_gelu_backward_sum_view_2", "compiled (triton)"),
    ("_bias_gelu_bwd", "own triton kernels"),
    ("void at::native::unrolled_elementwise_kernel<at::native::direct_copy_kernel_cuda(at::Te", "copies and casts"),
    ("void at::native::elementwise_kernel<128, 4, at::native::gpu_kernel_impl_nocast<at::native::AddFunctor",
     "elementwise"),
    ("ncclDevKernel_AllReduce_Sum_f32_RING_LL", "nccl"),
    ("Memset (Device)", "other"),
])
def test_kernel_categories(name, expected):
    assert category(name) == expected


def test_busy_time_counts_overlaps_once_and_gaps_are_the_idle_stretches():
    kernels = [(0, 100, "nvjet_a"), (50, 150, "triton_x"), (400, 500, "nvjet_b"), (520, 600, "triton_y")]
    assert busy_us(kernels) == 150 + 100 + 80
    assert gaps(kernels, min_us=100) == [(150, 400)]  # the 20 us stretch is below the threshold
    assert by_category(kernels) == {"gemm": 200, "compiled (triton)": 180}
    host = [(0, 1000, "step"), (140, 420, "Optimizer.step"), (200, 300, "aten::item")]
    assert host_ops_during(host, 150, 400) == "aten::item"  # the innermost op at the gap's middle
    summary, text = summarize(kernels, host, steps=2, wall_ms_per_step=0.5)
    assert summary["gpu_busy_ms_per_step"] == pytest.approx(0.165)
    assert summary["gpu_idle_ms_per_step"] == pytest.approx(0.335)
    assert summary["largest_gaps"] == [{"us": 250, "host_op": "aten::item"}]
    assert "GPU busy 0.2 ms" in text and "aten::item" in text
