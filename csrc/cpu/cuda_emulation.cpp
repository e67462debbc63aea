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
  template <class S, bool kAdam, bool kMaster>
  void update(const LaunchParams& a) {
    for (int64_t block = 0; block < a.n_blocks; ++block)
      for (int tid = 0; tid < kThreads; ++tid) update_thread<S, kAdam, kMaster>(a, block, tid, kThreads);
  }
};

// The oracle, for one tensor: optim_math.h's scalars from the group's values and the tensor's counter, then each
// element in order, with X the state storage (S, or float32 with a master).
template <class S, class X>
void reference_tensor(const StepLists& l, size_t i, const double* h, double lr, double mom, bool skip,
                      const float* gs, const double* clip, uint64_t seed) {
  using T = opmath_t<S>;
  const at::Tensor& param = l.params[i];
  float* step = l.steps[i].data_ptr<float>();
  const float old_step = *step;
  const bool first = old_step == 0.0f;
  if (!skip) *step = old_step + 1.0f;
  S* p = param.data_ptr<S>();
  S* g = l.grads[i].data_ptr<S>();
  float* master = has_state(l.masters, i, param) ? l.masters[i].data_ptr<float>() : nullptr;
  const bool sr = std::is_same_v<S, c10::BFloat16> && !master && h[kStochastic] != 0.0;
  const int64_t n = param.numel();
  X* a = has_state(l.s1, i, param) ? static_cast<X*>(l.s1[i].data_ptr()) : nullptr;
  X* b = l.adam ? static_cast<X*>(l.s2[i].data_ptr()) : nullptr;
  X* c = has_state(l.s3, i, param) ? static_cast<X*>(l.s3[i].data_ptr()) : nullptr;
  const auto adam = adam_cuda_scalars<T>(lr, mom, h[kBeta2], h[kEps], h[kWeightDecay], h[kAmsgrad] != 0.0 && c,
                                         h[kMaximize] != 0.0, h[kDecoupled] != 0.0, old_step + 1.0f);
  const auto sgd = sgd_cuda_scalars<T>(lr, a ? mom : 0.0, h[kDampening], h[kSgdWeightDecay], h[kNesterov] != 0.0,
                                       h[kSgdMaximize] != 0.0);
  for (int64_t e = 0; e < n; ++e) {
    if (skip) {  // as the kernel: state created inside a capture is initialised even when the step is skipped
      if (l.adam && first) {
        a[e] = b[e] = X(0.0f);
        if (c) c[e] = X(0.0f);
      }
      if (master && first) master[e] = float(p[e]);
      continue;
    }
    T gi = T(g[e]);
    if (gs) gi = gi / T(*gs);
    if (clip) gi = T(S(gi * T(*clip)));
    T pi = (master && !first) ? T(master[e]) : T(p[e]);
    T ai = (a && !first) ? T(a[e]) : T(0), bi = (b && !first) ? T(b[e]) : T(0), ci = (c && !first) ? T(c[e]) : T(0);
    if (l.adam) {
      adam_cuda_update<T>(pi, gi, ai, bi, ci, adam);
      b[e] = X(bi);
      if (c) c[e] = X(ci);
    } else {
      sgd_cuda_update<T>(pi, gi, ai, first, sgd);
    }
    if (a) a[e] = X(ai);
    if (master) master[e] = float(pi);
    if constexpr (std::is_same_v<S, c10::BFloat16>) {
      if (sr) {
        p[e] = round_stochastic(float(pi), random_bits(seed, uint64_t(i), uint64_t(old_step) + 1, uint64_t(e)));
        if (gs) g[e] = S(gi);
        continue;
      }
    }
    p[e] = master ? S(float(pi)) : S(pi);
    if (gs) g[e] = S(gi);
  }
}

void reference_step(const StepLists& l, const at::Tensor& sched_step, const at::Tensor& scratch,
                    const at::Tensor& ints, const at::Tensor& vals, const at::Tensor& hparams,
                    const c10::List<std::optional<at::Tensor>>& lr_tensors, const std::optional<at::Tensor>& grad_scale,
                    const std::optional<at::Tensor>& found_inf, const std::optional<at::Tensor>& clip_coef,
                    int64_t rng_seed) {
  const c10::Device device = sched_step.device();
  check_step_buffers(sched_step, scratch, ints, vals, hparams, hparam_cols(l.adam), lr_tensors, grad_scale,
                     found_inf, clip_coef, device);
  check_step_lists(l, hparams.size(0), device);
  for (size_t i = 0; i < l.grads.size(); ++i)
    TORCH_CHECK_VALUE(l.grads[i].is_contiguous() && l.params[i].is_contiguous(), "the reference takes contiguous tensors");
  HostLauncher().group(group_params(sched_step, scratch, ints, vals, hparams, lr_tensors, found_inf));
  const double* s = scratch.data_ptr<double>();
  const int64_t groups = hparams.size(0);
  const double* clip = (clip_coef.has_value() && clip_coef->defined()) ? clip_coef->data_ptr<double>() : nullptr;
  for (size_t i = 0; i < l.params.size(); ++i) {
    const int64_t g = l.groups[i];
    const double* h = hparams.data_ptr<double>() + g * hparams.size(1);
    const bool master = has_state(l.masters, i, l.params[i]);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, l.params[i].scalar_type(), "reference", [&] {
      const auto run = [&](auto state_type) {
        reference_tensor<scalar_t, decltype(state_type)>(l, i, h, s[kScratchLr + g], s[kScratchLr + groups + g],
                                                         s[kScratchSkip] != 0.0, optional_ptr(grad_scale), clip,
                                                         uint64_t(rng_seed));
      };
      if (master) run(float());
      else run(scalar_t());
    });
  }
}

void adam_step_emulated(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                        at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs, at::TensorList state_steps,
                        at::TensorList masters, const at::Tensor& sched_step, const at::Tensor& scratch,
                        const at::Tensor& ints, const at::Tensor& vals, const at::Tensor& hparams,
                        const c10::List<std::optional<at::Tensor>>& lr_tensors, at::IntArrayRef tensor_group,
                        const std::optional<at::Tensor>& grad_scale, const std::optional<at::Tensor>& found_inf,
                        const std::optional<at::Tensor>& clip_coef, int64_t rng_seed, bool reference) {
  const StepLists l{params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, masters, tensor_group, true};
  if (reference)
    return reference_step(l, sched_step, scratch, ints, vals, hparams, lr_tensors, grad_scale, found_inf, clip_coef,
                          rng_seed);
  HostLauncher launcher;
  run_multi_tensor_step(launcher, l, sched_step, scratch, ints, vals, hparams, lr_tensors, grad_scale, found_inf,
                        clip_coef, rng_seed);
}

void sgd_step_emulated(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,
                       at::TensorList state_steps, at::TensorList masters, const at::Tensor& sched_step,
                       const at::Tensor& scratch, const at::Tensor& ints, const at::Tensor& vals,
                       const at::Tensor& hparams, const c10::List<std::optional<at::Tensor>>& lr_tensors,
                       at::IntArrayRef tensor_group, const std::optional<at::Tensor>& grad_scale,
                       const std::optional<at::Tensor>& found_inf, const std::optional<at::Tensor>& clip_coef,
                       int64_t rng_seed, bool reference) {
  const StepLists l{params, grads, momentum_buffers, {}, {}, state_steps, masters, tensor_group, false};
  if (reference)
    return reference_step(l, sched_step, scratch, ints, vals, hparams, lr_tensors, grad_scale, found_inf, clip_coef,
                          rng_seed);
  HostLauncher launcher;
  run_multi_tensor_step(launcher, l, sched_step, scratch, ints, vals, hparams, lr_tensors, grad_scale, found_inf,
                        clip_coef, rng_seed);
}

}  // namespace

TORCH_LIBRARY_IMPL(warmup_fused, CPU, m) {
  m.impl("adam_step_emulated", &adam_step_emulated);
  m.impl("sgd_step_emulated", &sgd_step_emulated);
}

}  // namespace warmup_fused
