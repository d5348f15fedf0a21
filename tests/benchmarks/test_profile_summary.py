"""benchmarks/profile_summary.py: the busy time is the union of kernel intervals (overlaps
count once), idle gaps are found between them, and kernels land in the right category; the
ledger's categories (bench_ledger.py) from Inductor, cuBLAS, flash-attention, foreach and ATen
names and the ops around a launch, with overlapping kernels sharing their time."""
import os
import re
import sys
from types import SimpleNamespace

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))
from profile_summary import (ATTENTION, COPIES, CROSS_ENTROPY, ELEMENTWISE, FP8_CASTS, GEMM, IDLE,  # noqa: E402
                             LEDGER_ROWS, OPTIMIZER, OPTIMIZER_RANGE, OTHER, busy_us, by_category, category, gaps,
                             host_ops_during, kernel_segments, ledger, ledger_category, split_time, summarize)


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


@pytest.mark.parametrize("name, expected", [
    ("nvjet_sm90_tst_256x128_64x4_1x2_h_bz_coopA_NNT", GEMM),
    ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1x1_execute_segment_k_off", GEMM),
    ("triton_tem_fused_addmm_0", GEMM),
    ("void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<128, 128, 64, 4, false, false, cutlass", ATTENTION),
    ("cudnn_generated_fort_native_sdpa_sm90_flash_bprop_wgmma_f16_knob_26", ATTENTION),
    ("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<at::native::(anonymous namespace)::"
     "FusedOptimizerTensorListMetadata<4>, at::native::(anonymous namespace)::FusedAdamMathFunctor<float, 4",
     OPTIMIZER),
    ("triton_red_fused__log_softmax__to_copy_nll_loss_forward_0", CROSS_ENTROPY),
    ("triton_poi_fused__log_softmax_backward_data_nll_loss_backward_1", CROSS_ENTROPY),
    ("void at::native::(anonymous namespace)::cunn_SoftMaxForward<4, float, float, float, at::native::(anonymous "
     "namespace)::LogSoftMaxForwardEpilogue>", CROSS_ENTROPY),
    ("triton_red_fused__to_copy_native_layer_norm_2", ELEMENTWISE),
    ("triton_per_fused_native_layer_norm_native_layer_norm_backward_3", ELEMENTWISE),
    ("triton_poi_fused__to_copy_add_gelu_view_6", ELEMENTWISE),  # a cast fused into arithmetic
    ("triton_poi_fused__to_copy_4", COPIES),
    ("triton_poi_fused__to_copy_t_view_5", COPIES),
    ("void at::native::unrolled_elementwise_kernel<at::native::direct_copy_kernel_cuda(at::TensorIteratorBase&)",
     COPIES),
    ("void at::native::(anonymous namespace)::CatArrayBatchedCopy<at::native::(anonymous namespace)::OpaqueT", COPIES),
    ("Memcpy DtoD (Device -> Device)", COPIES),
    ("_bias_gelu_bwd", ELEMENTWISE),
    ("void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float, at::native::func_wrapper_t", ELEMENTWISE),
    ("ncclDevKernel_AllReduce_Sum_f32_RING_LL", OTHER),
    # FP8's scale (amax of |t|) and saturating cast, alone or fused with what they recompute
    ("triton_red_fused_abs_amax_0", FP8_CASTS),
    ("triton_poi_fused__to_copy_clamp_max_clamp_min_mul_reciprocal_3", FP8_CASTS),
    ("triton_poi_fused__to_copy_add_clamp_max_clamp_min_mul_native_layer_norm_5", FP8_CASTS),
    ("triton_red_fused__to_copy_abs_amax_gelu_view_2", FP8_CASTS),
    ("triton_red_fused_amax_exp_sub_sum_2", ELEMENTWISE),  # a softmax's max is not a scale
    # Inductor's CPU kernels under cpp.enable_kernel_profile; a cast that names the _scaled_mm it feeds
    ("graph_0_cpp_fused__scaled_mm__to_copy_abs_amax_clamp_clone_mul_reciprocal_t_0", FP8_CASTS),
    ("graph_1_cpp_fused_add_native_layer_norm_3", ELEMENTWISE),
    ("Memset (Device)", OTHER),
])
def test_ledger_categories_of_kernel_names(name, expected):
    assert ledger_category(name) == expected


def test_the_kernel_inductor_makes_of_an_fp8_cast_is_an_fp8_cast():
    """The real quantize compiled (Inductor's C++ kernels here; Triton names the fused ops alike)."""
    import torch
    from torch._inductor.utils import run_and_get_code

    from megatron_sffn.fp8.scaling import quantize

    def norm_then_cast(x, w):
        return quantize(torch.nn.functional.layer_norm(x, (x.shape[-1],), w), torch.float8_e4m3fn)

    x, w = torch.randn(64, 128, dtype=torch.bfloat16), torch.ones(128, dtype=torch.bfloat16)
    _, code = run_and_get_code(torch.compile(norm_then_cast, fullgraph=True), x, w)
    names = set(re.findall(r"\b(cpp_fused_\w+?)\(", "".join(code)))
    assert names and {ledger_category(n) for n in names} == {FP8_CASTS}
    plain = set(re.findall(r"\b(cpp_fused_\w+?)\(", "".join(run_and_get_code(
        torch.compile(lambda x, w: torch.nn.functional.layer_norm(x, (128,), w)), x, w)[1])))
    assert plain and FP8_CASTS not in {ledger_category(n) for n in plain}


@pytest.mark.parametrize("name, context, expected", [
    # a generic kernel takes the scope it was launched in: the optimizer range, the loss, accumulation
    ("void at::native::vectorized_elementwise_kernel<4, at::native::MulFunctor<float>",
     ["aten::mul", "aten::clamp", OPTIMIZER_RANGE, "ProfilerStep#3"], OPTIMIZER),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::isfinite", ["aten::isfinite",
     "Optimizer.step#MasterWeightAdamW.step"], OPTIMIZER),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::AddFunctor<float>>",
     ["aten::add_", "torch::autograd::AccumulateGrad",
      "autograd::engine::evaluate_function: torch::autograd::AccumulateGrad"], COPIES),
    ("triton_red_fused__to_copy_exp_sub_sum_0", ["Torch-Compiled Region: 2/0", "_ChunkedCrossEntropy"],
     CROSS_ENTROPY),
    ("triton_poi_fused__to_copy_arange_eq_exp_mul_sub_0",
     ["autograd::engine::evaluate_function: _ChunkedCrossEntropyBackward"], CROSS_ENTROPY),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float>>",
     ["aten::fill_", "aten::zero_", "aten::_efficient_attention_backward"], ATTENTION),
    # the compiled update clamps and casts too: its scope decides, it is no FP8 cast
    ("triton_poi_fused__to_copy_add_clamp_div_mul_sqrt_0", [OPTIMIZER_RANGE], OPTIMIZER),
    # a GEMM stays a GEMM wherever it runs
    ("nvjet_sm90_tst_256x128_64x4_1x2_h_bz_coopA_NNT", ["aten::mm", OPTIMIZER_RANGE], GEMM),
    # on a CPU the ops themselves: name first, then the op around an allocation
    ("aten::addmm", ["aten::addmm", "aten::linear"], GEMM),
    ("aten::_scaled_mm", ["aten::_scaled_mm"], GEMM),
    ("aten::empty", ["aten::empty", "aten::addmm", "aten::linear"], GEMM),
    ("aten::_fused_adamw_", ["aten::_fused_adamw_"], OPTIMIZER),
    ("aten::native_layer_norm", ["aten::native_layer_norm", "aten::layer_norm"], ELEMENTWISE),
    ("aten::gelu", ["aten::gelu"], ELEMENTWISE),
    ("aten::_log_softmax", ["aten::_log_softmax", "aten::log_softmax", "aten::cross_entropy_loss"], CROSS_ENTROPY),
    ("aten::cat", ["aten::cat"], COPIES),
    ("aten::view", ["aten::view"], OTHER),
])
def test_ledger_categories_from_the_ops_around_a_launch(name, context, expected):
    assert ledger_category(name, context) == expected


def test_overlapping_segments_share_their_time_and_add_up_to_the_busy_time():
    segments = [(0, 10, "a"), (5, 15, "b"), (20, 30, "a")]
    assert split_time(segments) == {"a": 5 + 2.5 + 10, "b": 2.5 + 5}
    assert sum(split_time(segments).values()) == busy_us([(s, e, "") for s, e, _ in segments])
    found = [(0, 1000, "nvjet_x", GEMM), (500, 1500, "triton_poi_fused_add_0", ELEMENTWISE),
             (2000, 2500, "multi_tensor_apply_kernel", OPTIMIZER)]
    book = ledger(found, steps=1, wall_ms_per_step=3.0, source="kernels")
    assert book["ms_per_step"] == pytest.approx({GEMM: 0.75, ELEMENTWISE: 0.75, OPTIMIZER: 0.5, ATTENTION: 0,
                                                 FP8_CASTS: 0, COPIES: 0, CROSS_ENTROPY: 0, OTHER: 0, IDLE: 1.0})
    assert list(book["ms_per_step"]) == list(LEDGER_ROWS) and book["busy_ms_per_step"] == pytest.approx(2.0)
    assert book["largest"][GEMM] == [{"name": "nvjet_x", "ms_per_step": 1.0}]


def _op(id, start, name, parent=None):
    return SimpleNamespace(id=id, name=name, time_range=SimpleNamespace(start=start), cpu_parent=parent,
                           device_type=_device("CPU"), is_async=False)


def _device(kind):
    from torch.autograd import DeviceType
    return getattr(DeviceType, kind)


def _kineto(device, corr, linked, start_ns, end_ns=None, name="", annotation=False):
    return SimpleNamespace(device_type=lambda: _device(device), correlation_id=lambda: corr,
                           linked_correlation_id=lambda: linked, start_ns=lambda: start_ns,
                           end_ns=lambda: end_ns or start_ns, name=lambda: name, is_user_annotation=lambda: annotation)


def test_a_kernel_is_attributed_through_the_host_op_that_launched_it():
    """The raw events link a kernel to its op by id; a runtime call (cudaLaunchKernel) numbered
    by CUPTI may carry the same id as an op and must not stand in for it."""
    step = _op(1, 1.0, OPTIMIZER_RANGE)
    mul = _op(2, 2.0, "aten::mul", step)
    runtime = _op(1, 3.0, "cudaLaunchKernel")  # same id as the optimizer range
    raw = [_kineto("CPU", 1, 0, 1000), _kineto("CPU", 2, 0, 2000), _kineto("CPU", 1, 2, 3000),
           _kineto("CUDA", 9, 2, 5000, 7000, "void at::native::vectorized_elementwise_kernel<MulFunctor>"),
           _kineto("CUDA", 10, 99, 8000, 9000, "triton_poi_fused__to_copy_0"),  # no op: by name
           _kineto("CUDA", 11, 1, 8000, 9000, "Optimizer.step", annotation=True)]  # a range on the GPU row
    prof = SimpleNamespace(events=lambda: [step, mul, runtime],
                           profiler=SimpleNamespace(kineto_results=SimpleNamespace(events=lambda: raw,
                                                                                 trace_start_ns=lambda: 0)))
    counts = {}
    assert kernel_segments(prof, counts) == [
        (5.0, 7.0, "void at::native::vectorized_elementwise_kernel<MulFunctor>", OPTIMIZER),
        (8.0, 9.0, "triton_poi_fused__to_copy_0", COPIES)]
    assert counts == {"kernels": 2, "kernels_with_host_op": 1}
