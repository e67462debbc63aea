// CUDA kernels of adam_step / sgd_step: thin wrappers around the host+device code of multi_tensor.h, launched in
// the order step_driver.h gives, on the current stream. Every tensor a kernel touches travels in its parameters
// (__grid_constant__, up to ~17 KB, which needs CUDA 12.1+ and sm_70+): no device table, no host-to-device copy,
// no allocation and no sync in a step, so a step can be captured in a CUDA graph, the first one included.
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../step_driver.h"

namespace warmup_fused {
namespace {

__global__ void __launch_bounds__(kSmallThreads) group_kernel(const __grid_constant__ GroupParams a) {
  group_eval_thread(a, int(threadIdx.x), int(blockDim.x));
  __syncthreads();
  group_advance_thread(a, int(threadIdx.x));
}

template <class S, bool kAdam>
__global__ void __launch_bounds__(kSmallThreads) records_kernel(const __grid_constant__ LaunchParams a) {
  records_thread<S, kAdam>(a, int(threadIdx.x), int(blockDim.x));
}

// Up to 128 registers a thread (one block of 512 per SM at most): the bf16 units with float32 states and stochastic
// rounding need more than 64, and at 64 ptxas spilled. 512 threads x 64-80 bytes of loads in flight each still keep
// ~40 KB in flight per SM (Little's law wants ~20 KB at HBM3 bandwidth and latency).
template <class S, bool kAdam, bool kMaster>
__global__ void __launch_bounds__(kThreads, 1) update_kernel(const __grid_constant__ LaunchParams a) {
  update_thread<S, kAdam, kMaster>(a, int64_t(blockIdx.x), int(threadIdx.x), int(blockDim.x));
}

struct CudaLauncher {
  cudaStream_t stream;
  void group(const GroupParams& a) {
    group_kernel<<<1, kSmallThreads, 0, stream>>>(a);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  template <class S, bool kAdam>
  void records(const LaunchParams& a) {
    records_kernel<S, kAdam><<<1, kSmallThreads, 0, stream>>>(a);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  template <class S, bool kAdam, bool kMaster>
  void update(const LaunchParams& a) {
    update_kernel<S, kAdam, kMaster><<<unsigned(a.n_blocks), kThreads, 0, stream>>>(a);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

void adam_step_cuda(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                    at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs, at::TensorList state_steps,
                    at::TensorList masters, const at::Tensor& sched_step, const at::Tensor& scratch, const at::Tensor& ints,
                    const at::Tensor& vals, const at::Tensor& hparams,
                    const c10::List<std::optional<at::Tensor>>& lr_tensors, at::IntArrayRef tensor_group,
                    const std::optional<at::Tensor>& grad_scale, const std::optional<at::Tensor>& found_inf,
                    const std::optional<at::Tensor>& clip_coef, int64_t rng_seed) {
  const c10::cuda::CUDAGuard guard(sched_step.device());
  CudaLauncher launcher{c10::cuda::getCurrentCUDAStream(sched_step.device().index()).stream()};
  run_multi_tensor_step(launcher,
                        {params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, masters, tensor_group, true},
                        sched_step, scratch, ints, vals, hparams, lr_tensors, grad_scale, found_inf, clip_coef, rng_seed);
}

void sgd_step_cuda(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,
                   at::TensorList state_steps, at::TensorList masters, const at::Tensor& sched_step, const at::Tensor& scratch,
                   const at::Tensor& ints, const at::Tensor& vals, const at::Tensor& hparams,
                   const c10::List<std::optional<at::Tensor>>& lr_tensors, at::IntArrayRef tensor_group,
                   const std::optional<at::Tensor>& grad_scale, const std::optional<at::Tensor>& found_inf,
                   const std::optional<at::Tensor>& clip_coef, int64_t rng_seed) {
  const c10::cuda::CUDAGuard guard(sched_step.device());
  CudaLauncher launcher{c10::cuda::getCurrentCUDAStream(sched_step.device().index()).stream()};
  run_multi_tensor_step(launcher, {params, grads, momentum_buffers, {}, {}, state_steps, masters, tensor_group, false},
                        sched_step, scratch, ints, vals, hparams, lr_tensors, grad_scale, found_inf, clip_coef, rng_seed);
}

}  // namespace

TORCH_LIBRARY_IMPL(warmup_fused, CUDA, m) {
  m.impl("adam_step", &adam_step_cuda);
  m.impl("sgd_step", &sgd_step_cuda);
}

}  // namespace warmup_fused
