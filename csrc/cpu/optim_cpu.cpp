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

#include "../step_driver.h"
#include "convert_16bit.h"

namespace warmup_fused {
namespace {

constexpr int64_t kWorkItem = 1 << 17;  // elements per parallel work item (a multiple of every vector width;
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
// instantiation is a straight-line loop GCC vectorises (the AVX2 and AVX-512 clones below); the math is
// optim_math.h's, the conversions convert_16bit.h's, all always_inline (WF_INLINE) so that the clones vectorise them.

// Loads and stores of param-typed values in the opmath type, as torch's loop kLoop converts them (convert_16bit.h).
template <class S>
constexpr bool is_16bit = std::is_same_v<S, at::Half> || std::is_same_v<S, at::BFloat16>;

template <class S>
WF_INLINE opmath_of<S> load(const S* a, int64_t i) {
  if constexpr (std::is_same_v<S, at::BFloat16>) return f32_of(uint32_t(a[i].x) << 16);
  else if constexpr (std::is_same_v<S, at::Half>) return widen_half(a[i].x);
  else return a[i];
}

template <TorchCpuLoop kLoop, class S>
WF_INLINE void store(S* a, int64_t i, opmath_of<S> v) {
  if constexpr (std::is_same_v<S, at::BFloat16>) a[i].x = narrow_bf16<kLoop == TorchCpuLoop::kAvx2Vector>(v);
  else if constexpr (std::is_same_v<S, at::Half>) a[i].x = narrow_half<!is_default(kLoop)>(v);
  else a[i] = v;
}

// What the loops do to a grad as they load it: nothing; divide it by the AMP grad scale and store it back, as
// torch's kernels do; or multiply it by max_grad_norm's clip coefficient and round it to its dtype, the grad
// clip_grad_norm_ would leave (not stored back).
enum class GradIn { kAsIs, kUnscale, kClip };

struct GradFactors {
  const float* scale;  // the GradScaler's scale, or null
  const double* clip;  // the clip coefficient, or null (never both: check_step_buffers refuses it)
  GradIn mode() const { return clip ? GradIn::kClip : scale ? GradIn::kUnscale : GradIn::kAsIs; }
  template <class T, GradIn kGrad>
  T factor() const {
    if constexpr (kGrad == GradIn::kUnscale) return T(*scale);
    else if constexpr (kGrad == GradIn::kClip) return T(*clip);
    else return T(1);
  }
};

// grad[i] as torch's CPU kernels load it (after kGrad), times sign = -1 for maximize (torch's vector loop
// multiplies by -1; the tail negates: the same value).
template <TorchCpuLoop kLoop, GradIn kGrad, class T, class S>
WF_INLINE T cpu_grad(S* g, int64_t i, T factor, T sign) {
  T gi = load(g, i);
  if constexpr (kGrad == GradIn::kUnscale) {
    gi = gi / factor;
    store<kLoop>(g, i, gi);
  } else if constexpr (kGrad == GradIn::kClip) {
    S clipped[1];
    store<kLoop>(clipped, 0, gi * factor);
    gi = load(clipped, 0);
  }
  return gi * sign;
}

template <class scalar_t, TorchCpuLoop kLoop, bool kAdamW, bool kAmsgrad, bool kHasWd, GradIn kGrad, bool kLerpLow>
WF_INLINE void adam_loop_t(const AdamTensorArgs& t, AdamCpuScalars<opmath_of<scalar_t>> s, const GradFactors& gf,
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
  const T factor = gf.factor<T, kGrad>();
  for (int64_t i = begin; i < end; ++i) {
    const T gi = cpu_grad<kLoop, kGrad>(g, i, factor, sign);
    T pi = load(p, i), mi = load(m, i), vi = load(v, i);
    T vmi = kAmsgrad ? load(vm, i) : T(0);
    adam_cpu_update<T, kLoop, kAdamW, kLerpLow>(pi, gi, mi, vi, vmi, s);
    store<kLoop>(p, i, pi);
    store<kLoop>(m, i, mi);
    store<kLoop>(v, i, vi);
    if constexpr (kAmsgrad) store<kLoop>(vm, i, vmi);
  }
}

template <class scalar_t, TorchCpuLoop kLoop, bool kAdamW, bool kAmsgrad, bool kHasWd, GradIn kGrad>
WF_INLINE void adam_loop(const AdamTensorArgs& t, const AdamCpuScalars<opmath_of<scalar_t>>& s, const GradFactors& gf,
                         int64_t begin, int64_t end) {
  if (std::abs(s.lerp_w) < 0.5f)
    return adam_loop_t<scalar_t, kLoop, kAdamW, kAmsgrad, kHasWd, kGrad, true>(t, s, gf, begin, end);
  adam_loop_t<scalar_t, kLoop, kAdamW, kAmsgrad, kHasWd, kGrad, false>(t, s, gf, begin, end);
}

template <class scalar_t, bool kAdamW, bool kAmsgrad, bool kHasWd, GradIn kGrad>
WF_INLINE void adam_range_t(const AdamTensorArgs& t, const AdamCpuScalars<opmath_of<scalar_t>>& s,
                            const GradFactors& gf, int64_t begin, int64_t end) {
  const int64_t mid = std::clamp(t.vec_end, begin, end);
  if (!torch_runs_avx2_kernel()) {
    adam_loop<scalar_t, TorchCpuLoop::kDefaultVector, kAdamW, kAmsgrad, kHasWd, kGrad>(t, s, gf, begin, mid);
    return adam_loop<scalar_t, TorchCpuLoop::kDefaultTail, kAdamW, kAmsgrad, kHasWd, kGrad>(t, s, gf, mid, end);
  }
  adam_loop<scalar_t, TorchCpuLoop::kAvx2Vector, kAdamW, kAmsgrad, kHasWd, kGrad>(t, s, gf, begin, mid);
  adam_loop<scalar_t, TorchCpuLoop::kAvx2Tail, kAdamW, kAmsgrad, kHasWd, kGrad>(t, s, gf, mid, end);
}

// Runtime flags -> one of the 24 instantiations (key = flags * 3 + grad mode).
template <class scalar_t>
WF_INLINE void adam_range(const AdamTensorArgs& t, const AdamCpuScalars<opmath_of<scalar_t>>& s, bool adamw,
                          const GradFactors& gf, int64_t begin, int64_t end) {
  const int key = ((adamw ? 4 : 0) | (s.amsgrad ? 2 : 0) | (s.has_wd ? 1 : 0)) * 3 + int(gf.mode());
  switch (key) {
#define WF_CASE(K)                                                                                           \
  case K:                                                                                                    \
    return adam_range_t<scalar_t, bool(K / 3 & 4), bool(K / 3 & 2), bool(K / 3 & 1), GradIn(K % 3)>(t, s, gf, \
                                                                                                    begin, end);
    WF_CASE(0) WF_CASE(1) WF_CASE(2) WF_CASE(3) WF_CASE(4) WF_CASE(5) WF_CASE(6) WF_CASE(7) WF_CASE(8)
    WF_CASE(9) WF_CASE(10) WF_CASE(11) WF_CASE(12) WF_CASE(13) WF_CASE(14) WF_CASE(15) WF_CASE(16) WF_CASE(17)
    WF_CASE(18) WF_CASE(19) WF_CASE(20) WF_CASE(21) WF_CASE(22) WF_CASE(23)
#undef WF_CASE
  }
}

template <class scalar_t, TorchCpuLoop kLoop, bool kMomentum, bool kFirst, GradIn kGrad>
WF_INLINE void sgd_loop(void* pv, void* gv, void* bv, SgdScalars<opmath_of<scalar_t>> s, const GradFactors& gf,
                        int64_t begin, int64_t end) {
  using T = opmath_of<scalar_t>;
  s.has_momentum = kMomentum;
  const T sign = s.maximize ? T(-1) : T(1);
  scalar_t* __restrict p = static_cast<scalar_t*>(pv);
  scalar_t* __restrict g = static_cast<scalar_t*>(gv);
  scalar_t* __restrict b = static_cast<scalar_t*>(bv);
  const T factor = gf.factor<T, kGrad>();
  for (int64_t i = begin; i < end; ++i) {
    const T gi = cpu_grad<kLoop, kGrad>(g, i, factor, sign);
    T pi = load(p, i);
    T bi = (kMomentum && !kFirst) ? load(b, i) : T(0);
    sgd_cpu_update<T, kLoop>(pi, gi, bi, kFirst, s);
    store<kLoop>(p, i, pi);
    if constexpr (kMomentum) store<kLoop>(b, i, bi);
  }
}

template <class scalar_t, bool kMomentum, bool kFirst, GradIn kGrad>
WF_INLINE void sgd_range_t(void* p, void* g, void* b, const SgdScalars<opmath_of<scalar_t>>& s, const GradFactors& gf,
                           int64_t begin, int64_t end, int64_t vec_end) {
  if (!torch_runs_avx2_kernel())  // the DEFAULT kernel's vector loop and tail round alike
    return sgd_loop<scalar_t, TorchCpuLoop::kDefaultVector, kMomentum, kFirst, kGrad>(p, g, b, s, gf, begin, end);
  const int64_t mid = std::clamp(vec_end, begin, end);
  sgd_loop<scalar_t, TorchCpuLoop::kAvx2Vector, kMomentum, kFirst, kGrad>(p, g, b, s, gf, begin, mid);
  sgd_loop<scalar_t, TorchCpuLoop::kAvx2Tail, kMomentum, kFirst, kGrad>(p, g, b, s, gf, mid, end);
}

template <class scalar_t>
WF_INLINE void sgd_range(void* p, void* g, void* b, bool first, const SgdScalars<opmath_of<scalar_t>>& s,
                         const GradFactors& gf, int64_t begin, int64_t end, int64_t vec_end) {
  const int key = ((s.has_momentum ? 2 : 0) | (first ? 1 : 0)) * 3 + int(gf.mode());
  switch (key) {
#define WF_CASE(K) \
  case K: return sgd_range_t<scalar_t, bool(K / 3 & 2), bool(K / 3 & 1), GradIn(K % 3)>(p, g, b, s, gf, begin, end, vec_end);
    WF_CASE(0) WF_CASE(1) WF_CASE(2) WF_CASE(3) WF_CASE(4) WF_CASE(5) WF_CASE(6) WF_CASE(7) WF_CASE(8)
    WF_CASE(9) WF_CASE(10) WF_CASE(11)
#undef WF_CASE
  }
}

// Clones of the loops for wider vector units. The arithmetic is the same per element whatever the vector width
// (IEEE operations, explicit fma only, no contraction): the AVX-512 clone computes exactly what torch's AVX2 kernel
// does, sixteen lanes at a time.
#if defined(__GNUC__) && defined(__x86_64__)
#define WF_HAVE_AVX2_CLONE 1
#define WF_AVX2 __attribute__((target("avx2,fma")))
#define WF_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,prefer-vector-width=512")))
#define WF_CLONES(ATTR, SUFFIX)                                                                                    \
  template <class scalar_t>                                                                                        \
  ATTR void adam_range_##SUFFIX(const AdamTensorArgs& t, const AdamCpuScalars<opmath_of<scalar_t>>& s, bool adamw, \
                                const GradFactors& gf, int64_t begin, int64_t end) {                              \
    adam_range<scalar_t>(t, s, adamw, gf, begin, end);                                                             \
  }                                                                                                                \
  template <class scalar_t>                                                                                        \
  ATTR void sgd_range_##SUFFIX(void* p, void* g, void* b, bool first, const SgdScalars<opmath_of<scalar_t>>& s,    \
                               const GradFactors& gf, int64_t begin, int64_t end, int64_t vec_end) {               \
    sgd_range<scalar_t>(p, g, b, first, s, gf, begin, end, vec_end);                                               \
  }
WF_CLONES(WF_AVX2, avx2)
WF_CLONES(WF_AVX512, avx512)
#undef WF_CLONES
bool have_avx2_fma() {
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
}
bool have_avx512() {  // torch's capability (its own hardware check; ATEN_CPU_CAPABILITY=avx2 selects the AVX2 clone)
  static const bool ok = have_avx2_fma() && at::get_cpu_capability() == "AVX512";
  return ok;
}
#endif

// The portable build (std::fma in software where the CPU has no FMA: same bits, slower).
template <class scalar_t>
void adam_range_dispatch(const AdamTensorArgs& t, const AdamCpuScalars<opmath_of<scalar_t>>& s, bool adamw,
                         const GradFactors& gf, int64_t begin, int64_t end) {
#ifdef WF_HAVE_AVX2_CLONE
  if (have_avx512()) return adam_range_avx512<scalar_t>(t, s, adamw, gf, begin, end);
  if (have_avx2_fma()) return adam_range_avx2<scalar_t>(t, s, adamw, gf, begin, end);
#endif
  adam_range<scalar_t>(t, s, adamw, gf, begin, end);
}

template <class scalar_t>
void sgd_range_dispatch(void* p, void* g, void* b, bool first, const SgdScalars<opmath_of<scalar_t>>& s,
                        const GradFactors& gf, int64_t begin, int64_t end, int64_t vec_end) {
#ifdef WF_HAVE_AVX2_CLONE
  if (have_avx512()) return sgd_range_avx512<scalar_t>(p, g, b, first, s, gf, begin, end, vec_end);
  if (have_avx2_fma()) return sgd_range_avx2<scalar_t>(p, g, b, first, s, gf, begin, end, vec_end);
#endif
  sgd_range<scalar_t>(p, g, b, first, s, gf, begin, end, vec_end);
}

// ------------------------------------------------------------------------------------------------ the ops

struct Work {
  int64_t tensor, begin, end;
};

std::vector<Work> make_work(const std::vector<int64_t>& numels) {
  std::vector<Work> work;
  for (size_t i = 0; i < numels.size(); ++i)
    for (int64_t b = 0; b < numels[i]; b += kWorkItem) work.push_back({int64_t(i), b, std::min(numels[i], b + kWorkItem)});
  return work;
}

// Checks everything, then evaluates every group (the group kernel's code, run on the host: LR and beta1/momentum per
// group into scratch, the skip flag) and advances sched_step. Returns the grads in their params' layouts.
std::vector<at::Tensor> begin_step(const StepLists& l, const at::Tensor& sched_step, const at::Tensor& scratch,
                                   const at::Tensor& ints, const at::Tensor& vals, const at::Tensor& hparams,
                                   const c10::List<std::optional<at::Tensor>>& lr_tensors,
                                   const std::optional<at::Tensor>& grad_scale,
                                   const std::optional<at::Tensor>& found_inf,
                                   const std::optional<at::Tensor>& clip_coef) {
  const c10::Device cpu(c10::kCPU);
  check_step_buffers(sched_step, scratch, ints, vals, hparams, hparam_cols(l.adam), lr_tensors, grad_scale,
                     found_inf, clip_coef, cpu);
  validate_program(ints, vals);
  const int64_t groups = hparams.size(0);
  const int64_t program_groups = ints.data_ptr<int64_t>()[0];
  const double* hp = hparams.data_ptr<double>();
  for (int64_t g = 0; g < groups; ++g) {
    const bool momentum_channel = hp[g * hparams.size(1) + kMomentumSource] != 0.0;
    TORCH_CHECK_VALUE(program_groups >= (momentum_channel ? 2 * groups : groups), "the schedule program has ",
                      program_groups, " groups for ", groups, " param groups", momentum_channel ? " and their momentum" : "");
  }
  check_step_lists(l, groups, cpu);
  for (size_t i = 0; i < l.params.size(); ++i)
    if (l.adam && hp[l.groups[i] * kAdamCols + kAmsgrad] != 0.0)
      TORCH_CHECK_VALUE(has_state(l.s3, i, l.params[i]), "params[", i, "] uses amsgrad but has no max_exp_avg_sq");
  // Nothing was written up to here.
  std::vector<at::Tensor> grads = conform_grads(l.params, l.grads);
  const GroupParams a = group_params(sched_step, scratch, ints, vals, hparams, lr_tensors, found_inf);
  group_eval_thread(a, 0, 1);
  group_advance_thread(a, 0);
  return grads;
}

// ------------------------------------------------------------------------------------------------ staging
// A work item of a 16-bit tensor with a float32 master or stochastic rounding (bf16) is staged chunk by chunk
// (in L1/L2) into the float buffers the torch-parity loops take, then written back:
//  * master: the loop runs in float32 on the master and its float32 states, with the grads upcast, as the reference
//    does (torch fused stepping float32 masters, with float32's vector/tail split); the param is then the master
//    rounded to nearest;
//  * stochastic rounding: the loop runs on float32 copies (the same float arithmetic as the bf16 loop), the states
//    are stored rounded to nearest and the param stochastically;
//  * clipping: the loop takes the grads multiplied by the clip coefficient and rounded to their dtype, as
//    clip_grad_norm_'s _foreach_mul_ leaves them (the grads themselves are not written).
// `run(p, g, s1, s2, s3, n, vec_end)` runs the loop over [0, n) of those pointers (states may be null).
struct Extras {
  float* master;
  bool stochastic;
  const double* clip;
  uint64_t seed, rng_step, index;
};

constexpr int64_t kChunk = 1024;  // elements staged at once: 6 float buffers of 4 KiB, in L1/L2

// 16-bit <-> float for staging, with the hot loops' conversions: [0, vec) rounded as torch's vector loop, the rest as
// its tail.
template <class S>
WF_INLINE void widen(const S* src, float* dst, int64_t n) {
  for (int64_t j = 0; j < n; ++j) dst[j] = load(src, j);
}

template <class S, TorchCpuLoop kVector, TorchCpuLoop kTail>
WF_INLINE void narrow_t(const float* src, S* dst, int64_t n, int64_t vec) {
  for (int64_t j = 0; j < vec; ++j) store<kVector>(dst, j, src[j]);
  for (int64_t j = vec; j < n; ++j) store<kTail>(dst, j, src[j]);
}

template <class S>
void narrow(const float* src, S* dst, int64_t n, int64_t vec) {
  if (torch_runs_avx2_kernel()) return narrow_t<S, TorchCpuLoop::kAvx2Vector, TorchCpuLoop::kAvx2Tail>(src, dst, n, vec);
  narrow_t<S, TorchCpuLoop::kDefaultVector, TorchCpuLoop::kDefaultTail>(src, dst, n, vec);
}

template <class S>
int64_t torch_vec_end(int64_t numel) {  // where torch's kernel for S ends its vector loop
  return numel - numel % (vector_bytes() / int64_t(sizeof(S)));
}

template <class S, class Run>
void staged_chunk_16bit(S* p, S* g, void* const states[3], const Extras& x, const float* gs, int64_t numel,
                        int64_t cb, int64_t n, Run& run) {
  thread_local std::vector<float> storage(6 * kChunk);
  float* buf[6];
  for (int k = 0; k < 6; ++k) buf[k] = storage.data() + k * kChunk;
  float* gf = buf[0];
  const int64_t vec = std::clamp(torch_vec_end<S>(numel) - cb, int64_t(0), n);
  widen(g + cb, gf, n);
  if (x.clip) {  // the grad clip_grad_norm_ leaves: g * coef rounded to S
    S* clipped = reinterpret_cast<S*>(buf[5]);
    const float coef = float(*x.clip);
    for (int64_t j = 0; j < n; ++j) gf[j] *= coef;
    narrow(gf, clipped, n, vec);
    widen(clipped, gf, n);
  }
  float* pf = x.master ? x.master + cb : buf[1];
  float* f[3] = {nullptr, nullptr, nullptr};
  for (int k = 0; k < 3; ++k) {
    if (!states[k]) continue;
    if (x.master) {
      f[k] = static_cast<float*>(states[k]) + cb;
    } else {
      f[k] = buf[2 + k];
      widen(static_cast<const S*>(states[k]) + cb, f[k], n);
    }
  }
  if (!x.master) widen(p + cb, pf, n);
  run(pf, gf, f[0], f[1], f[2], n, x.master ? std::clamp(torch_vec_end<float>(numel) - cb, int64_t(0), n) : vec);
  if (gs) narrow(gf, g + cb, n, vec);  // unscaled in place, as torch does
  if (x.master) return narrow(pf, p + cb, n, vec);
  for (int k = 0; k < 3; ++k)
    if (states[k]) narrow(f[k], static_cast<S*>(states[k]) + cb, n, vec);
  if constexpr (std::is_same_v<S, at::BFloat16>) {
    if (x.stochastic) {
      for (int64_t j = 0; j < n; ++j)
        p[cb + j] = round_stochastic(pf[j], random_bits(x.seed, x.index, x.rng_step, uint64_t(cb + j)));
      return;
    }
  }
  narrow(pf, p + cb, n, vec);
}

template <class S, class Run>
void staged_item(S* p, S* g, void* s1, void* s2, void* s3, int64_t numel, const Extras& x, const float* gs,
                 int64_t begin, int64_t end, Run&& run) {
  void* const states[3] = {s1, s2, s3};
  for (int64_t cb = begin; cb < end; cb += kChunk) {
    const int64_t n = std::min(kChunk, end - cb);
    if constexpr (is_16bit<S>) {
      staged_chunk_16bit(p, g, states, x, gs, numel, cb, n, run);
    } else {
      // check_step_lists gives masters to 16-bit params only; stochastic rounding is bfloat16 only
      TORCH_INTERNAL_ASSERT(false, "master weights and stochastic rounding are for 16-bit params only");
    }
  }
}

// ------------------------------------------------------------------------------------------------ adam_step

void adam_step_cpu(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                   at::TensorList max_exp_avg_sqs, at::TensorList state_steps, at::TensorList masters,
                   const at::Tensor& sched_step, const at::Tensor& scratch, const at::Tensor& ints,
                   const at::Tensor& vals, const at::Tensor& hparams,
                   const c10::List<std::optional<at::Tensor>>& lr_tensors, at::IntArrayRef tensor_group,
                   const std::optional<at::Tensor>& grad_scale, const std::optional<at::Tensor>& found_inf,
                   const std::optional<at::Tensor>& clip_coef, int64_t rng_seed) {
  const StepLists l{params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, masters, tensor_group, true};
  const std::vector<at::Tensor> used = begin_step(l, sched_step, scratch, ints, vals, hparams, lr_tensors, grad_scale,
                                                  found_inf, clip_coef);
  const size_t n = params.size();
  const double* sc = scratch.data_ptr<double>();
  const double* lrs = sc + kScratchLr;
  const double* beta1s = lrs + hparams.size(0);
  if (sc[kScratchSkip] != 0.0 || n == 0) return;
  const double* hp = hparams.data_ptr<double>();
  const float* gs = optional_ptr(grad_scale);
  const double* clip = (clip_coef.has_value() && clip_coef->defined()) ? clip_coef->data_ptr<double>() : nullptr;
  std::vector<AdamTensorArgs> args(n);
  std::vector<Extras> extras(n);
  std::vector<int64_t> numels(n);
  for (size_t i = 0; i < n; ++i) {
    float* st = state_steps[i].data_ptr<float>();
    const double* h = hp + tensor_group[i] * kAdamCols;
    const bool ams = h[kAmsgrad] != 0.0;
    float* master = has_state(masters, i, params[i]) ? masters[i].data_ptr<float>() : nullptr;
    if (*st == 0.0f) {  // a param's first step starts from zero states and its master from the param
      exp_avgs[i].zero_();
      exp_avg_sqs[i].zero_();
      if (ams) max_exp_avg_sqs[i].zero_();
      if (master) masters[i].copy_(params[i]);
    }
    *st = *st + 1.0f;  // torch: _foreach_add_(state_steps, 1) before the update
    const int64_t numel = params[i].numel();
    const int64_t vw = vector_bytes() / int64_t(params[i].element_size());
    args[i] = {params[i].data_ptr(), used[i].data_ptr(), exp_avgs[i].data_ptr(), exp_avg_sqs[i].data_ptr(),
               ams ? max_exp_avg_sqs[i].data_ptr() : nullptr, numel, numel - numel % vw, tensor_group[i], *st};
    extras[i] = {master, params[i].scalar_type() == at::kBFloat16 && !master && h[kStochastic] != 0.0, clip,
                 uint64_t(rng_seed), uint64_t(*st), uint64_t(i)};
    numels[i] = numel;
  }
  const std::vector<Work> work = make_work(numels);
  at::parallel_for(0, int64_t(work.size()), 1, [&](int64_t wb, int64_t we) {
    for (int64_t w = wb; w < we; ++w) {
      const Work& job = work[w];
      const AdamTensorArgs& t = args[job.tensor];
      const Extras& x = extras[job.tensor];
      const double* h = hp + t.group * kAdamCols;
      const bool adamw = h[kDecoupled] != 0.0;
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, params[job.tensor].scalar_type(), "adam_step_cpu",
                                      [&] {
        using T = opmath_of<scalar_t>;
        const auto s = adam_cpu_scalars<T>(lrs[t.group], beta1s[t.group], h[kBeta2], h[kEps], h[kWeightDecay],
                                           h[kAmsgrad] != 0.0, h[kMaximize] != 0.0, t.step);
        if (!x.master && !x.stochastic)
          return adam_range_dispatch<scalar_t>(t, s, adamw, {gs, clip}, job.begin, job.end);
        staged_item(static_cast<scalar_t*>(t.p), static_cast<scalar_t*>(t.g), t.m, t.v, t.vmax, t.numel, x, gs,
                    job.begin, job.end, [&](auto* p, auto* g, auto* m, auto* v, auto* vm, int64_t len, int64_t vec) {
          using C = std::remove_pointer_t<decltype(p)>;
          const AdamTensorArgs f{p, g, m, v, vm, len, vec, t.group, t.step};
          adam_range_dispatch<C>(f, s, adamw, {gs, nullptr}, 0, len);  // staging applied the clip
        });
      });
    }
  });
  restore_grads(grads, used, gs != nullptr);
}

// ------------------------------------------------------------------------------------------------- sgd_step

void sgd_step_cpu(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,
                  at::TensorList state_steps, at::TensorList masters, const at::Tensor& sched_step,
                  const at::Tensor& scratch, const at::Tensor& ints, const at::Tensor& vals,
                  const at::Tensor& hparams, const c10::List<std::optional<at::Tensor>>& lr_tensors,
                  at::IntArrayRef tensor_group, const std::optional<at::Tensor>& grad_scale,
                  const std::optional<at::Tensor>& found_inf, const std::optional<at::Tensor>& clip_coef,
                  int64_t rng_seed) {
  const StepLists l{params, grads, momentum_buffers, {}, {}, state_steps, masters, tensor_group, false};
  const std::vector<at::Tensor> used = begin_step(l, sched_step, scratch, ints, vals, hparams, lr_tensors, grad_scale,
                                                  found_inf, clip_coef);
  const size_t n = params.size();
  const double* sc = scratch.data_ptr<double>();
  const double* lrs = sc + kScratchLr;
  const double* momenta = lrs + hparams.size(0);
  if (sc[kScratchSkip] != 0.0 || n == 0) return;  // a skipped first step leaves the counter at 0: still "first"
  const double* hp = hparams.data_ptr<double>();
  const float* gs = optional_ptr(grad_scale);
  const double* clip = (clip_coef.has_value() && clip_coef->defined()) ? clip_coef->data_ptr<double>() : nullptr;
  std::vector<int64_t> numels(n);
  std::vector<char> first(n);
  std::vector<Extras> extras(n);
  for (size_t i = 0; i < n; ++i) {
    numels[i] = params[i].numel();
    float* st = state_steps[i].data_ptr<float>();
    first[i] = *st == 0.0f;
    *st = *st + 1.0f;
    float* master = has_state(masters, i, params[i]) ? masters[i].data_ptr<float>() : nullptr;
    if (first[i] && master) masters[i].copy_(params[i]);  // a master's first step starts from the param
    extras[i] = {master, params[i].scalar_type() == at::kBFloat16 && !master &&
                             hp[tensor_group[i] * kSgdCols + kStochastic] != 0.0,
                 clip, uint64_t(rng_seed), uint64_t(*st), uint64_t(i)};
  }
  const std::vector<Work> work = make_work(numels);
  at::parallel_for(0, int64_t(work.size()), 1, [&](int64_t wb, int64_t we) {
    for (int64_t w = wb; w < we; ++w) {
      const Work& job = work[w];
      const int64_t i = job.tensor;
      const int64_t grp = tensor_group[i];
      const double* h = hp + grp * kSgdCols;
      const bool has_buf = has_state(momentum_buffers, i, params[i]);
      void* buf = has_buf ? momentum_buffers[i].data_ptr() : nullptr;
      const Extras& x = extras[i];
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, params[i].scalar_type(), "sgd_step_cpu", [&] {
        using T = opmath_of<scalar_t>;
        const auto s = sgd_scalars<T>(lrs[grp], has_buf ? momenta[grp] : 0.0, h[kDampening], h[kSgdWeightDecay],
                                      h[kNesterov] != 0.0, h[kSgdMaximize] != 0.0);
        if (!x.master && !x.stochastic)
          return sgd_range_dispatch<scalar_t>(params[i].data_ptr(), used[i].data_ptr(), buf, first[i] != 0, s,
                                              {gs, clip}, job.begin, job.end, torch_vec_end<scalar_t>(numels[i]));
        staged_item(static_cast<scalar_t*>(params[i].data_ptr()), static_cast<scalar_t*>(used[i].data_ptr()), buf,
                    nullptr, nullptr, numels[i], x, gs, job.begin, job.end,
                    [&](auto* p, auto* g, auto* b, auto*, auto*, int64_t len, int64_t vec) {
          using C = std::remove_pointer_t<decltype(p)>;
          sgd_range_dispatch<C>(p, g, b, first[i] != 0, s, {gs, nullptr}, 0, len, vec);  // staging applied the clip
        });
      });
    }
  });
  restore_grads(grads, used, gs != nullptr);
}

}  // namespace

TORCH_LIBRARY_IMPL(warmup_fused, CPU, m) {
  m.impl("adam_step", &adam_step_cpu);
  m.impl("sgd_step", &sgd_step_cpu);
}

}  // namespace warmup_fused
