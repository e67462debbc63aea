// The CUDA step's kernels run on the host, for the CPU test suite (no GPU needed): the same multi_tensor.h
// functions and the same step_driver.h launch sequence as cuda/optim_cuda.cu, with a launcher that runs the blocks
// of a grid one after another and the threads of a block in a loop, with a phase boundary wherever the kernel has
// __syncthreads. `reference=True` instead runs the oracle the emulation is tested against: a plain loop over the
// elements of each tensor with optim_math.h's torch-CUDA math, no records, chunks, vectors or launches.
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "../step_driver.h"

namespace warmup_fused {
namespace {

struct HostLauncher {
  void group(const GroupParams& a) {
    for (int tid = 0; tid < kSmallThreads; ++tid) group_eval_thread(a, tid, kSmallThreads);
    for (int tid = 0; tid < kSmallThreads; ++tid) group_advance_thread(a, tid);  // after the __syncthreads
  }
  template <class S, bool kAdam>
  void records(const LaunchParams& a) {
    for (int tid = 0; tid < kSmallThreads; ++tid) records_thread<S, kAdam>(a, tid, kSmallThreads);
  }
  template <class S, bool kAdam>
  void update(const LaunchParams& a) {
    for (int64_t block = 0; block < a.n_blocks; ++block)
      for (int tid = 0; tid < kThreads; ++tid) update_thread<S, kAdam>(a, block, tid, kThreads);
  }
};

// The oracle: per tensor, the scalars of optim_math.h from the group's LR and the tensor's counter, then each
// element in order.
template <class S>
void reference_tensor(const StepLists& l, size_t i, const double* hp, int64_t cols, double lr,
                      double mom, bool skip, const float* gs) {
  using T = opmath_t<S>;
  const at::Tensor& param = l.params[i];
  const double* h = hp + l.groups[i] * cols;
  float* step = l.steps[i].data_ptr<float>();
  const float old_step = *step;
  const bool first = old_step == 0.0f;
  if (!skip) *step = old_step + 1.0f;
  S* p = param.data_ptr<S>();
  S* g = l.grads[i].data_ptr<S>();
  const int64_t n = param.numel();
  if (l.adam) {
    S* m = l.s1[i].data_ptr<S>();
    S* v = l.s2[i].data_ptr<S>();
    S* vm = has_state(l.s3, i, param) ? l.s3[i].data_ptr<S>() : nullptr;
    const auto s = adam_cuda_scalars<T>(lr, mom, h[kBeta2], h[kEps], h[kWeightDecay], h[kAmsgrad] != 0.0 && vm,
                                        h[kMaximize] != 0.0, h[kDecoupled] != 0.0, old_step + 1.0f);
    for (int64_t e = 0; e < n; ++e) {
      if (skip) {  // as the kernel: states created inside a capture become zeros even when skipped
        if (first) {
          m[e] = S(0.0f);
          v[e] = S(0.0f);
          if (vm) vm[e] = S(0.0f);
        }
        continue;
      }
      T gi = T(g[e]);
      if (gs) gi = gi / T(*gs);
      T pi = T(p[e]), mi = first ? T(0) : T(m[e]), vi = first ? T(0) : T(v[e]);
      T vmi = (vm && !first) ? T(vm[e]) : T(0);
      adam_cuda_update<T>(pi, gi, mi, vi, vmi, s);
      p[e] = S(pi);
      m[e] = S(mi);
      v[e] = S(vi);
      if (vm) vm[e] = S(vmi);
      if (gs) g[e] = S(gi);
    }
  } else {
    S* b = has_state(l.s1, i, param) ? l.s1[i].data_ptr<S>() : nullptr;
    const auto s = sgd_cuda_scalars<T>(lr, b ? mom : 0.0, h[kDampening], h[kSgdWeightDecay], h[kNesterov] != 0.0,
                                       h[kSgdMaximize] != 0.0);
    if (skip) return;
    for (int64_t e = 0; e < n; ++e) {
      T gi = T(g[e]);
      if (gs) gi = gi / T(*gs);
      T pi = T(p[e]), bi = (b && !first) ? T(b[e]) : T(0);
      sgd_cuda_update<T>(pi, gi, bi, first, s);
      p[e] = S(pi);
      if (b) b[e] = S(bi);
      if (gs) g[e] = S(gi);
    }
  }
}

void reference_step(const StepLists& l, const at::Tensor& sched_step, const at::Tensor& scratch,
                    const at::Tensor& ints, const at::Tensor& vals, const at::Tensor& hparams,
                    const c10::List<std::optional<at::Tensor>>& lr_tensors, const std::optional<at::Tensor>& grad_scale,
                    const std::optional<at::Tensor>& found_inf) {
  const c10::Device device = sched_step.device();
  check_step_buffers(sched_step, scratch, ints, vals, hparams, hparam_cols(l.adam), lr_tensors, grad_scale,
                     found_inf, device);
  check_step_lists(l, hparams.size(0), device);
  for (size_t i = 0; i < l.grads.size(); ++i)
    TORCH_CHECK_VALUE(l.grads[i].is_contiguous() && l.params[i].is_contiguous(), "the reference takes contiguous tensors");
  HostLauncher().group(group_params(sched_step, scratch, ints, vals, hparams, lr_tensors, found_inf));
  const double* s = scratch.data_ptr<double>();
  const int64_t groups = hparams.size(0);
  for (size_t i = 0; i < l.params.size(); ++i) {
    const int64_t g = l.groups[i];
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, l.params[i].scalar_type(), "reference", [&] {
      reference_tensor<scalar_t>(l, i, hparams.data_ptr<double>(), hparams.size(1), s[kScratchLr + g],
                                 s[kScratchLr + groups + g], s[kScratchSkip] != 0.0, optional_ptr(grad_scale));
    });
  }
}

void adam_step_emulated(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                        at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs, at::TensorList state_steps,
                        const at::Tensor& sched_step, const at::Tensor& scratch, const at::Tensor& ints,
                        const at::Tensor& vals, const at::Tensor& hparams,
                        const c10::List<std::optional<at::Tensor>>& lr_tensors, at::IntArrayRef tensor_group,
                        const std::optional<at::Tensor>& grad_scale,
                        const std::optional<at::Tensor>& found_inf, bool reference) {
  const StepLists l{params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, tensor_group, true};
  if (reference) return reference_step(l, sched_step, scratch, ints, vals, hparams, lr_tensors, grad_scale, found_inf);
  HostLauncher launcher;
  run_multi_tensor_step(launcher, l, sched_step, scratch, ints, vals, hparams, lr_tensors, grad_scale, found_inf);
}

void sgd_step_emulated(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,
                       at::TensorList state_steps, const at::Tensor& sched_step, const at::Tensor& scratch,
                       const at::Tensor& ints, const at::Tensor& vals, const at::Tensor& hparams,
                       const c10::List<std::optional<at::Tensor>>& lr_tensors, at::IntArrayRef tensor_group,
                       const std::optional<at::Tensor>& grad_scale, const std::optional<at::Tensor>& found_inf,
                       bool reference) {
  const StepLists l{params, grads, momentum_buffers, {}, {}, state_steps, tensor_group, false};
  if (reference) return reference_step(l, sched_step, scratch, ints, vals, hparams, lr_tensors, grad_scale, found_inf);
  HostLauncher launcher;
  run_multi_tensor_step(launcher, l, sched_step, scratch, ints, vals, hparams, lr_tensors, grad_scale, found_inf);
}

}  // namespace

TORCH_LIBRARY_IMPL(warmup_fused, CPU, m) {
  m.impl("adam_step_emulated", &adam_step_emulated);
  m.impl("sgd_step_emulated", &sgd_step_emulated);
}

}  // namespace warmup_fused
