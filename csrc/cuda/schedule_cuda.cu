#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../program.h"

namespace warmup_fused {
namespace {

__global__ void lr_at_kernel(const int64_t* ints, const double* vals, const int64_t* steps, int64_t n,
                             int64_t total, double* out) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x)
    out[i] = schedule_lr(ints, vals, i / n, steps[i % n]);
}

// The program was validated on the host when its Schedule was built; it is not read back here (no sync).
at::Tensor lr_at_cuda(const at::Tensor& ints, const at::Tensor& vals, const at::Tensor& steps,
                      int64_t num_groups) {
  check_program_tensors(ints, vals, steps.device());
  TORCH_CHECK_TYPE(steps.scalar_type() == at::kLong, "steps must be int64, got ", steps.scalar_type());
  TORCH_CHECK_VALUE(steps.dim() == 1, "steps must be 1-D");
  const c10::cuda::CUDAGuard guard(steps.device());
  const at::Tensor steps_c = steps.contiguous();
  const int64_t n = steps_c.numel(), total = num_groups * n;
  at::Tensor out = at::empty({num_groups, n}, steps.options().dtype(at::kDouble));
  if (total == 0) return out;
  const int threads = 256;
  const int blocks = int(std::min<int64_t>((total + threads - 1) / threads, 4096));
  lr_at_kernel<<<blocks, threads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      ints.data_ptr<int64_t>(), vals.data_ptr<double>(), steps_c.data_ptr<int64_t>(), n, total,
      out.data_ptr<double>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

__global__ void plateau_kernel(double* block, int64_t words, const void* metric, bool is_double) {
  const double current = is_double ? *static_cast<const double*>(metric) : double(*static_cast<const float*>(metric));
  plateau_observe(block, words, current);
}

// One thread: the metric is read on the device, so observing a metric costs no host sync (and can be captured).
void plateau_observe_cuda(const at::Tensor& vals, int64_t offset, const at::Tensor& metric) {
  check_plateau(vals, offset, metric);
  const c10::cuda::CUDAGuard guard(vals.device());
  plateau_kernel<<<1, 1, 0, c10::cuda::getCurrentCUDAStream()>>>(vals.data_ptr<double>() + offset,
                                                                  vals.numel() - offset, metric.data_ptr(),
                                                                  metric.scalar_type() == at::kDouble);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

TORCH_LIBRARY_IMPL(warmup_fused, CUDA, m) {
  m.impl("lr_at", &lr_at_cuda);
  m.impl("plateau_observe", &plateau_observe_cuda);
}

}  // namespace warmup_fused
