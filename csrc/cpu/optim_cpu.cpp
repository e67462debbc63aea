// CPU kernels of adam_step / sgd_step: one call updates every tensor of every param group on the CPU.
//
// The per-element math is optim_math.h's torch-CPU mirror. torch's fused CPU kernels split each tensor into a
// Vectorized main loop and a scalar tail of numel % Vec::size() elements, whose arithmetic differs (see
// TorchCpuLoop); we reproduce that split exactly (Vec::size() = 32 bytes / element size, for every kernel torch
// dispatches on x86), so the result does not depend on how we parallelise or vectorise.
// The hot loops are compiled a second time for AVX2+FMA (function attribute, chosen at run time) so that the
// fma of the lerp is a single instruction; the portable build calls std::fma (same bits, slower).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/Version.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../optim_math.h"
#include "../program.h"

namespace warmup_fused {
namespace {

constexpr int64_t kChunk = 1 << 17;  // elements per parallel work item (a multiple of every vector width;
                                      // 2^13..2^19 measured: 2^17 best on 16M params in 50 tensors)

// torch's fused optimizer kernels exist for DEFAULT and AVX2 only (AVX512 falls back to AVX2): 32-byte vectors.
int64_t vector_bytes() { return 32; }

// Whether torch's dispatcher runs its AVX2 kernel (capability "AVX2" or "AVX512") or its DEFAULT one ("DEFAULT",
// e.g. under ATEN_CPU_CAPABILITY=default): they round differently (TorchCpuLoop).
bool torch_runs_avx2_kernel() {
  static const bool avx2 = at::get_cpu_capability() != "DEFAULT";
  return avx2;
}

template <class scalar_t>
using opmath_of = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

struct AdamTensorArgs {
  void *p, *g, *m, *v, *vmax;
  int64_t numel, vec_end;
  int64_t group;
  float step;
};

// The hot loops. Flags that torch's kernel tests per element are template parameters here, so that each
// instantiation is a straight-line loop GCC vectorises (the AVX2+FMA clones below); the math is optim_math.h's.
#if defined(__GNUC__)
#define WF_INLINE inline __attribute__((always_inline))
#else
#define WF_INLINE inline
#endif

template <class scalar_t, TorchCpuLoop kLoop, bool kAdamW, bool kAmsgrad, bool kHasWd, bool kScaled>
WF_INLINE void adam_loop(const AdamTensorArgs& t, AdamCpuScalars<opmath_of<scalar_t>> s, const float* gs,
                         int64_t begin, int64_t end) {
  using T = opmath_of<scalar_t>;
  s.amsgrad = kAmsgrad;  // constants from here on: the branches in adam_cpu_update fold away
  s.has_wd = kHasWd;
  const T sign = s.maximize ? T(-1) : T(1);
  scalar_t* __restrict p = static_cast<scalar_t*>(t.p);
  scalar_t* __restrict g = static_cast<scalar_t*>(t.g);
  scalar_t* __restrict m = static_cast<scalar_t*>(t.m);
  scalar_t* __restrict v = static_cast<scalar_t*>(t.v);
  scalar_t* __restrict vm = static_cast<scalar_t*>(t.vmax);
  const T scale = kScaled ? T(*gs) : T(1);
  for (int64_t i = begin; i < end; ++i) {
    const T gi = cpu_grad<kScaled>(g, i, scale, sign);
    T pi = T(p[i]), mi = T(m[i]), vi = T(v[i]);
    T vmi = kAmsgrad ? T(vm[i]) : T(0);
    adam_cpu_update<T, kLoop, kAdamW>(pi, gi, mi, vi, vmi, s);
    p[i] = scalar_t(pi);
    m[i] = scalar_t(mi);
    v[i] = scalar_t(vi);
    if constexpr (kAmsgrad) vm[i] = scalar_t(vmi);
  }
}

template <class scalar_t, bool kAdamW, bool kAmsgrad, bool kHasWd, bool kScaled>
WF_INLINE void adam_range_t(const AdamTensorArgs& t, const AdamCpuScalars<opmath_of<scalar_t>>& s, const float* gs,
                            int64_t begin, int64_t end) {
  if (!torch_runs_avx2_kernel())
    return adam_loop<scalar_t, TorchCpuLoop::kDefault, kAdamW, kAmsgrad, kHasWd, kScaled>(t, s, gs, begin, end);
  const int64_t mid = std::clamp(t.vec_end, begin, end);
  adam_loop<scalar_t, TorchCpuLoop::kAvx2Vector, kAdamW, kAmsgrad, kHasWd, kScaled>(t, s, gs, begin, mid);
  adam_loop<scalar_t, TorchCpuLoop::kAvx2Tail, kAdamW, kAmsgrad, kHasWd, kScaled>(t, s, gs, mid, end);
}

// Runtime flags -> one of the 16 instantiations.
template <class scalar_t>
WF_INLINE void adam_range(const AdamTensorArgs& t, const AdamCpuScalars<opmath_of<scalar_t>>& s, bool adamw,
                          const float* gs, int64_t begin, int64_t end) {
  const int key = (adamw ? 8 : 0) | (s.amsgrad ? 4 : 0) | (s.has_wd ? 2 : 0) | (gs ? 1 : 0);
  switch (key) {
#define WF_CASE(K) \
  case K: return adam_range_t<scalar_t, bool(K & 8), bool(K & 4), bool(K & 2), bool(K & 1)>(t, s, gs, begin, end);
    WF_CASE(0) WF_CASE(1) WF_CASE(2) WF_CASE(3) WF_CASE(4) WF_CASE(5) WF_CASE(6) WF_CASE(7)
    WF_CASE(8) WF_CASE(9) WF_CASE(10) WF_CASE(11) WF_CASE(12) WF_CASE(13) WF_CASE(14) WF_CASE(15)
#undef WF_CASE
  }
}

template <class scalar_t, TorchCpuLoop kLoop, bool kMomentum, bool kFirst, bool kScaled>
WF_INLINE void sgd_loop(void* pv, void* gv, void* bv, SgdScalars<opmath_of<scalar_t>> s, const float* gs,
                        int64_t begin, int64_t end) {
  using T = opmath_of<scalar_t>;
  s.has_momentum = kMomentum;
  const T sign = s.maximize ? T(-1) : T(1);
  scalar_t* __restrict p = static_cast<scalar_t*>(pv);
  scalar_t* __restrict g = static_cast<scalar_t*>(gv);
  scalar_t* __restrict b = static_cast<scalar_t*>(bv);
  const T scale = kScaled ? T(*gs) : T(1);
  for (int64_t i = begin; i < end; ++i) {
    const T gi = cpu_grad<kScaled>(g, i, scale, sign);
    T pi = T(p[i]);
    T bi = (kMomentum && !kFirst) ? T(b[i]) : T(0);
    sgd_cpu_update<T, kLoop>(pi, gi, bi, kFirst, s);
    p[i] = scalar_t(pi);
    if constexpr (kMomentum) b[i] = scalar_t(bi);
  }
}

template <class scalar_t, bool kMomentum, bool kFirst, bool kScaled>
WF_INLINE void sgd_range_t(void* p, void* g, void* b, const SgdScalars<opmath_of<scalar_t>>& s, const float* gs,
                           int64_t begin, int64_t end, int64_t vec_end) {
  if (!torch_runs_avx2_kernel())
    return sgd_loop<scalar_t, TorchCpuLoop::kDefault, kMomentum, kFirst, kScaled>(p, g, b, s, gs, begin, end);
  const int64_t mid = std::clamp(vec_end, begin, end);
  sgd_loop<scalar_t, TorchCpuLoop::kAvx2Vector, kMomentum, kFirst, kScaled>(p, g, b, s, gs, begin, mid);
  sgd_loop<scalar_t, TorchCpuLoop::kAvx2Tail, kMomentum, kFirst, kScaled>(p, g, b, s, gs, mid, end);
}

template <class scalar_t>
WF_INLINE void sgd_range(void* p, void* g, void* b, bool first, const SgdScalars<opmath_of<scalar_t>>& s,
                         const float* gs, int64_t begin, int64_t end, int64_t vec_end) {
  const int key = (s.has_momentum ? 4 : 0) | (first ? 2 : 0) | (gs ? 1 : 0);
  switch (key) {
#define WF_CASE(K) \
  case K: return sgd_range_t<scalar_t, bool(K & 4), bool(K & 2), bool(K & 1)>(p, g, b, s, gs, begin, end, vec_end);
    WF_CASE(0) WF_CASE(1) WF_CASE(2) WF_CASE(3) WF_CASE(4) WF_CASE(5) WF_CASE(6) WF_CASE(7)
#undef WF_CASE
  }
}

#if defined(__GNUC__) && defined(__x86_64__)
#define WF_HAVE_AVX2_CLONE 1
template <class scalar_t>
__attribute__((target("avx2,fma"))) void adam_range_avx2(const AdamTensorArgs& t,
                                                         const AdamCpuScalars<opmath_of<scalar_t>>& s, bool adamw,
                                                         const float* gs, int64_t begin, int64_t end) {
  adam_range<scalar_t>(t, s, adamw, gs, begin, end);
}
template <class scalar_t>
__attribute__((target("avx2,fma"))) void sgd_range_avx2(void* p, void* g, void* b, bool first,
                                                        const SgdScalars<opmath_of<scalar_t>>& s, const float* gs,
                                                        int64_t begin, int64_t end, int64_t vec_end) {
  sgd_range<scalar_t>(p, g, b, first, s, gs, begin, end, vec_end);
}
bool have_avx2_fma() {
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
}
#endif

// The portable build (std::fma in software where the CPU has no FMA: same bits, slower).
template <class scalar_t>
void adam_range_dispatch(const AdamTensorArgs& t, const AdamCpuScalars<opmath_of<scalar_t>>& s, bool adamw,
                         const float* gs, int64_t begin, int64_t end) {
#ifdef WF_HAVE_AVX2_CLONE
  if (have_avx2_fma()) return adam_range_avx2<scalar_t>(t, s, adamw, gs, begin, end);
#endif
  adam_range<scalar_t>(t, s, adamw, gs, begin, end);
}

template <class scalar_t>
void sgd_range_dispatch(void* p, void* g, void* b, bool first, const SgdScalars<opmath_of<scalar_t>>& s,
                        const float* gs, int64_t begin, int64_t end, int64_t vec_end) {
#ifdef WF_HAVE_AVX2_CLONE
  if (have_avx2_fma()) return sgd_range_avx2<scalar_t>(p, g, b, first, s, gs, begin, end, vec_end);
#endif
  sgd_range<scalar_t>(p, g, b, first, s, gs, begin, end, vec_end);
}

// ------------------------------------------------------------------------------------------- shared checks

// Reads the schedule step, evaluates every group's LR (written to last_lr) and returns them.
std::vector<double> eval_lrs(const at::Tensor& sched_step, const at::Tensor& last_lr, const at::Tensor& ints,
                             const at::Tensor& vals, const at::Tensor& hparams, int64_t k) {
  validate_program(ints, vals);
  const int64_t groups = ints.data_ptr<int64_t>()[0];
  TORCH_CHECK_TYPE(sched_step.scalar_type() == at::kLong && sched_step.numel() == 1 && sched_step.device().is_cpu(),
                   "sched_step must be a CPU int64 tensor with one element");
  TORCH_CHECK_TYPE(last_lr.scalar_type() == at::kDouble && last_lr.numel() == groups && last_lr.is_contiguous() &&
                       last_lr.device().is_cpu(),
                   "last_lr must be a contiguous CPU float64 tensor with one element per group (", groups, ")");
  TORCH_CHECK_TYPE(hparams.scalar_type() == at::kDouble && hparams.dim() == 2 && hparams.size(0) == groups &&
                       hparams.size(1) == k && hparams.is_contiguous() && hparams.device().is_cpu(),
                   "hparams must be a contiguous CPU float64 tensor of shape [", groups, ", ", k, "], got ",
                   hparams.sizes());
  const int64_t step = *sched_step.data_ptr<int64_t>();
  std::vector<double> lrs(groups);
  double* out = last_lr.data_ptr<double>();
  for (int64_t g = 0; g < groups; ++g) out[g] = lrs[g] = schedule_lr(ints.data_ptr<int64_t>(), vals.data_ptr<double>(), g, step);
  return lrs;
}

const float* scalar_ptr(const std::optional<at::Tensor>& t, const char* name) {
  if (!t.has_value() || !t->defined()) return nullptr;
  TORCH_CHECK_TYPE(t->scalar_type() == at::kFloat && t->numel() == 1 && t->device().is_cpu(), name,
                   " must be a CPU float32 tensor with one element");
  return t->data_ptr<float>();
}

struct Work {
  int64_t tensor, begin, end;
};

std::vector<Work> make_work(const std::vector<int64_t>& numels) {
  std::vector<Work> work;
  for (size_t i = 0; i < numels.size(); ++i)
    for (int64_t b = 0; b < numels[i]; b += kChunk) work.push_back({int64_t(i), b, std::min(numels[i], b + kChunk)});
  return work;
}

// ------------------------------------------------------------------------------------------------ adam_step

void adam_step_cpu(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                   at::TensorList max_exp_avg_sqs, at::TensorList state_steps, const at::Tensor& sched_step,
                   const at::Tensor& last_lr, const at::Tensor& ints, const at::Tensor& vals,
                   const at::Tensor& hparams, at::IntArrayRef tensor_group, bool adamw,
                   const std::optional<at::Tensor>& grad_scale, const std::optional<at::Tensor>& found_inf) {
  const size_t n = params.size();
  check_adam_lists(n, grads.size(), exp_avgs.size(), exp_avg_sqs.size(), max_exp_avg_sqs.size(), state_steps.size(),
                   tensor_group.size());
  const std::vector<double> lrs = eval_lrs(sched_step, last_lr, ints, vals, hparams, kAdamHparams);
  const int64_t groups = int64_t(lrs.size());
  const double* hp = hparams.data_ptr<double>();
  for (size_t i = 0; i < n; ++i) {
    check_param(params[i], tensor_group[i], groups, c10::Device(c10::kCPU), i);
    check_like(params[i], grads[i], "grads", i);
    check_like(params[i], exp_avgs[i], "exp_avgs", i);
    check_like(params[i], exp_avg_sqs[i], "exp_avg_sqs", i);
    if (hp[tensor_group[i] * kAdamHparams + kAmsgrad] != 0.0) {
      TORCH_CHECK_VALUE(!max_exp_avg_sqs.empty(), "params[", i, "] uses amsgrad but max_exp_avg_sqs is empty");
      check_like(params[i], max_exp_avg_sqs[i], "max_exp_avg_sqs", i);
    }
    TORCH_CHECK_TYPE(state_steps[i].scalar_type() == at::kFloat && state_steps[i].numel() == 1 &&
                         state_steps[i].device().is_cpu(),
                     "state_steps[", i, "] must be a CPU float32 tensor with one element");
  }
  const float* gs = scalar_ptr(grad_scale, "grad_scale");
  const float* fi = scalar_ptr(found_inf, "found_inf");
  const bool skip = fi && *fi != 0.0f;
  if (!skip && n > 0) {
    std::vector<AdamTensorArgs> args(n);
    std::vector<int64_t> numels(n);
    for (size_t i = 0; i < n; ++i) {
      float* st = state_steps[i].data_ptr<float>();
      *st = *st + 1.0f;  // torch: _foreach_add_(state_steps, 1) before the update
      const int64_t numel = params[i].numel();
      const int64_t vw = vector_bytes() / int64_t(params[i].element_size());
      const bool ams = hp[tensor_group[i] * kAdamHparams + kAmsgrad] != 0.0;
      args[i] = {params[i].data_ptr(), grads[i].data_ptr(), exp_avgs[i].data_ptr(), exp_avg_sqs[i].data_ptr(),
                 ams ? max_exp_avg_sqs[i].data_ptr() : nullptr, numel, numel - numel % vw, tensor_group[i], *st};
      numels[i] = numel;
    }
    const std::vector<Work> work = make_work(numels);
    at::parallel_for(0, int64_t(work.size()), 1, [&](int64_t wb, int64_t we) {
      for (int64_t w = wb; w < we; ++w) {
        const Work& job = work[w];
        const AdamTensorArgs& t = args[job.tensor];
        const double* h = hp + t.group * kAdamHparams;
        AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, params[job.tensor].scalar_type(), "adam_step_cpu",
                                        [&] {
          using T = opmath_of<scalar_t>;
          const auto s = adam_cpu_scalars<T>(lrs[t.group], h[kBeta1], h[kBeta2], h[kEps], h[kWeightDecay],
                                             h[kAmsgrad] != 0.0, h[kMaximize] != 0.0, t.step);
          adam_range_dispatch<scalar_t>(t, s, adamw, gs, job.begin, job.end);
        });
      }
    });
  }
  int64_t* ss = sched_step.data_ptr<int64_t>();
  *ss = *ss + 1;
}

// ------------------------------------------------------------------------------------------------- sgd_step

void sgd_step_cpu(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,
                  const at::Tensor& sched_step, const at::Tensor& last_lr, const at::Tensor& ints,
                  const at::Tensor& vals, const at::Tensor& hparams, at::IntArrayRef tensor_group,
                  c10::List<bool> is_first_step, const std::optional<at::Tensor>& grad_scale,
                  const std::optional<at::Tensor>& found_inf) {
  const size_t n = params.size();
  check_sgd_lists(n, grads.size(), momentum_buffers.size(), is_first_step.size(), tensor_group.size());
  const std::vector<double> lrs = eval_lrs(sched_step, last_lr, ints, vals, hparams, kSgdHparams);
  const double* hp = hparams.data_ptr<double>();
  for (size_t i = 0; i < n; ++i) {
    check_param(params[i], tensor_group[i], int64_t(lrs.size()), c10::Device(c10::kCPU), i);
    check_like(params[i], grads[i], "grads", i);
    if (hp[tensor_group[i] * kSgdHparams + kMomentum] != 0.0) {
      TORCH_CHECK_VALUE(!momentum_buffers.empty(), "params[", i, "] uses momentum but momentum_buffers is empty");
      check_like(params[i], momentum_buffers[i], "momentum_buffers", i);
    }
  }
  const float* gs = scalar_ptr(grad_scale, "grad_scale");
  const float* fi = scalar_ptr(found_inf, "found_inf");
  const bool skip = fi && *fi != 0.0f;
  if (!skip && n > 0) {
    std::vector<int64_t> numels(n);
    for (size_t i = 0; i < n; ++i) numels[i] = params[i].numel();
    const std::vector<Work> work = make_work(numels);
    at::parallel_for(0, int64_t(work.size()), 1, [&](int64_t wb, int64_t we) {
      for (int64_t w = wb; w < we; ++w) {
        const Work& job = work[w];
        const int64_t i = job.tensor;
        const int64_t grp = tensor_group[i];
        const double* h = hp + grp * kSgdHparams;
        const bool has_m = h[kMomentum] != 0.0;
        const bool first = is_first_step.size() ? bool(is_first_step.get(i)) : false;
        AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, params[i].scalar_type(), "sgd_step_cpu", [&] {
          using T = opmath_of<scalar_t>;
          const auto s = sgd_scalars<T>(lrs[grp], h[kMomentum], h[kDampening], h[kSgdWeightDecay],
                                        h[kNesterov] != 0.0, h[kSgdMaximize] != 0.0);
          sgd_range_dispatch<scalar_t>(params[i].data_ptr(), grads[i].data_ptr(),
                                       has_m ? momentum_buffers[i].data_ptr() : nullptr, first, s, gs, job.begin,
                                       job.end, numels[i] - numels[i] % (vector_bytes() / params[i].element_size()));
        });
      }
    });
  }
  int64_t* ss = sched_step.data_ptr<int64_t>();
  *ss = *ss + 1;
}

}  // namespace

TORCH_LIBRARY_IMPL(warmup_fused, CPU, m) {
  m.impl("adam_step", &adam_step_cpu);
  m.impl("sgd_step", &sgd_step_cpu);
}

}  // namespace warmup_fused
