// The CUDA optimizer step as host+device code.
//
// A step on one device is a short sequence of kernels, all reading what changes from step to step from device
// memory (nothing per step travels as a host scalar, so the sequence can be captured in a CUDA graph once):
//   1. group kernel (one block): every group's LR (from its schedule program, its host value or an LR tensor)
//      and its beta1 / momentum, the GradScaler skip flag; then it advances the schedule counter.
//   2. per launch of at most kMaxTensors tensors (all of one dtype, their pointers in the kernel parameters):
//      a. records kernel (one block): each tensor's scalars (bias corrections, step size, ...) in the opmath type,
//         from its step counter, which it then advances (unless the step is skipped);
//      b. update kernel: one block per kChunk elements reads its tensor's record and updates the chunk with
//         128-bit loads and stores (a scalar path for the tail and for unaligned tensors).
// The kernels in cuda/optim_cuda.cu are thin wrappers around the *_thread functions below, and
// cpu/cuda_emulation.cpp runs the very same functions on the host (blocks one after another, the threads of a
// block in a loop, a phase boundary at every __syncthreads), so the CPU test suite checks the kernel logic, bit
// for bit, without a GPU. The launch plan (make_launches) is shared the same way.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "optim_math.h"

namespace warmup_fused {

// ----------------------------------------------------------------------------------- layout shared with Python
// Columns of the float64 [G, cols] hyperparameter table (exported by the `layout` op). kHostMomentum is beta1 for
// Adam/AdamW and the momentum for SGD.
// kStochastic: bfloat16 params without a master are rounded stochastically.
enum GroupCol : int { kLrSource = 0, kHostLr, kMomentumSource, kHostMomentum, kStochastic, kCommonCols };
// kDecoupled: AdamW's decoupled weight decay (torch's Adam(decoupled_weight_decay=True) is AdamW).
enum AdamCol : int { kBeta2 = kCommonCols, kEps, kWeightDecay, kAmsgrad, kMaximize, kDecoupled, kAdamCols };
enum SgdCol : int { kDampening = kCommonCols, kSgdWeightDecay, kNesterov, kSgdMaximize, kSgdCols };
inline int64_t hparam_cols(bool adam) { return adam ? int64_t(kAdamCols) : int64_t(kSgdCols); }
// kLrSource values. kMomentumSource: 0 = kHostMomentum, 1 = the program's momentum channel (group G + g).
enum LrSource : int { kLrFromSchedule = 0, kLrFromHost = 1, kLrFromTensor = 2 };

constexpr int kMaxTensors = 256;    // tensors per launch (their metadata travels in the kernel parameters)
constexpr int kMaxLrTensors = 64;   // groups whose LR is read from a tensor (kernel parameters too)
constexpr int kRecordWords = 12;    // float64 words per tensor record
constexpr int kThreads = 512;       // threads of an update block
constexpr int kSmallThreads = 256;  // threads of the group and records blocks
constexpr int64_t kChunk = 65536;   // elements per update block (a multiple of kThreads * 8)

// The float64 scratch tensor of a device: [records of one launch][skip flag][lr: G][momentum: G]. The lr row is
// what last_lr() returns.
constexpr int64_t kScratchSkip = int64_t(kMaxTensors) * kRecordWords;
constexpr int64_t kScratchLr = kScratchSkip + 1;
inline int64_t scratch_words(int64_t groups) { return kScratchLr + 2 * groups; }

enum DType : int32_t { kF32 = 0, kF64, kF16, kBF16 };

// -------------------------------------------------------------------------------------------------- parameters
struct GroupParams {
  const int64_t* ints;
  const double* vals;
  const double* hparams;  // [groups, cols]
  int64_t cols, groups;
  int64_t* sched_step;
  double* scratch;
  const float* found_inf;
  const void* lr_tensor[kMaxLrTensors];  // kLrFromTensor groups: kHostLr holds the index into this list
  int32_t lr_tensor_is_double[kMaxLrTensors];
};

struct TensorMeta {
  void* p;        // param
  void* g;        // grad
  void* s1;       // exp_avg | momentum_buffer (null: SGD without momentum)
  void* s2;       // exp_avg_sq
  void* s3;       // max_exp_avg_sq (null: no amsgrad)
  float* master;  // float32 master weight (null: none); with one, the states are float32 too
  float* step;    // per-param step counter (Adam: state['step']; SGD: steps taken, 0 = buffer not initialised)
  int64_t numel;
  int32_t group;
  int32_t index;    // the tensor's position in the op's lists: its stream of stochastic-rounding bits
  int32_t aligned;  // every pointer above is 16-byte aligned: the vector path applies
  int32_t pad;
};

struct LaunchParams {
  int32_t n_tensors, n_blocks;
  int32_t first_block[kMaxTensors + 1];  // blocks of tensor i: [first_block[i], first_block[i + 1])
  TensorMeta t[kMaxTensors];
  double* scratch;          // records at [0, n_tensors * kRecordWords), then the skip flag and the group rows
  const double* hparams;
  int64_t cols, groups;
  const float* grad_scale;  // null: no AMP scaling
  const double* clip_coef;  // null: no gradient clipping; else grads are multiplied by it as they are loaded
  uint64_t rng_seed;        // stochastic rounding
};

// ------------------------------------------------------------------------------------------------- group kernel
// Phase 1 (all threads, then a barrier): evaluate the groups at the current counter.
WF_HOST_DEVICE void group_eval_thread(const GroupParams& a, int tid, int nthreads) {
  const int64_t step = *a.sched_step;
  for (int64_t g = tid; g < a.groups; g += nthreads) {
    const double* h = a.hparams + g * a.cols;
    const int source = int(h[kLrSource]);
    double lr = h[kHostLr];
    if (source == kLrFromSchedule) {
      lr = schedule_lr(a.ints, a.vals, g, step);
    } else if (source == kLrFromTensor) {
      const int k = int(h[kHostLr]);
      lr = a.lr_tensor_is_double[k] ? *static_cast<const double*>(a.lr_tensor[k])
                                    : double(*static_cast<const float*>(a.lr_tensor[k]));
    }
    a.scratch[kScratchLr + g] = lr;
    a.scratch[kScratchLr + a.groups + g] =
        h[kMomentumSource] != 0.0 ? schedule_lr(a.ints, a.vals, a.groups + g, step) : h[kHostMomentum];
  }
  // torch's fused kernels skip only when *found_inf == 1 (GradScaler writes 0 or 1).
  if (tid == 0) a.scratch[kScratchSkip] = (a.found_inf != nullptr && *a.found_inf == 1.0f) ? 1.0 : 0.0;
}

// Phase 2: every thread has read the counter; advance it.
WF_HOST_DEVICE void group_advance_thread(const GroupParams& a, int tid) {
  if (tid == 0) *a.sched_step = *a.sched_step + 1;
}

// ----------------------------------------------------------------------------------------------- records kernel
// Record layout (float64 words); values are opmath (float or double), stored exactly.
enum RecordWord : int { kRecFirst = 0, kRecSkip, kRecA, kRecB, kRecC, kRecD, kRecE, kRecF, kRecG, kRecH, kRecRng };

template <class S>
using opmath_t = std::conditional_t<std::is_same_v<S, double>, double, float>;

inline bool record_skip(const double* scratch) { return scratch[kScratchSkip] != 0.0; }

template <class T>
WF_HOST_DEVICE void write_adam_record(double* r, const AdamCudaScalars<T>& s) {
  r[kRecA] = double(s.lr_wd);
  r[kRecB] = double(s.beta1);
  r[kRecC] = double(s.beta2);
  r[kRecD] = double(s.wd);
  r[kRecE] = double(s.eps);
  r[kRecF] = double(s.bc2_sqrt);
  r[kRecG] = double(s.step_size);
  r[kRecH] = double((s.has_wd ? 1 : 0) | (s.maximize ? 2 : 0) | (s.amsgrad ? 4 : 0) | (s.decoupled ? 8 : 0));
}

template <class T>
WF_HOST_DEVICE AdamCudaScalars<T> read_adam_record(const double* r) {
  AdamCudaScalars<T> s{};
  s.lr_wd = T(r[kRecA]);
  s.beta1 = T(r[kRecB]);
  s.beta2 = T(r[kRecC]);
  s.wd = T(r[kRecD]);
  s.eps = T(r[kRecE]);
  s.bc2_sqrt = T(r[kRecF]);
  s.step_size = T(r[kRecG]);
  const int flags = int(r[kRecH]);
  s.has_wd = flags & 1;
  s.maximize = flags & 2;
  s.amsgrad = flags & 4;
  s.decoupled = flags & 8;
  return s;
}

template <class T>
WF_HOST_DEVICE void write_sgd_record(double* r, const SgdCudaScalars<T>& s) {
  r[kRecA] = double(s.wd);
  r[kRecB] = double(s.momentum);
  r[kRecC] = double(s.lr);
  r[kRecD] = double(s.one_minus_dampening);
  r[kRecH] = double((s.has_wd ? 1 : 0) | (s.maximize ? 2 : 0) | (s.has_momentum ? 4 : 0) | (s.nesterov ? 8 : 0));
}

template <class T>
WF_HOST_DEVICE SgdCudaScalars<T> read_sgd_record(const double* r) {
  SgdCudaScalars<T> s{};
  s.wd = T(r[kRecA]);
  s.momentum = T(r[kRecB]);
  s.lr = T(r[kRecC]);
  s.one_minus_dampening = T(r[kRecD]);
  const int flags = int(r[kRecH]);
  s.has_wd = flags & 1;
  s.maximize = flags & 2;
  s.has_momentum = flags & 4;
  s.nesterov = flags & 8;
  return s;
}

// One thread of the records block: tensors tid, tid + nthreads, ... of the launch (all of storage type S).
template <class S, bool kAdam>
WF_HOST_DEVICE void records_thread(const LaunchParams& a, int tid, int nthreads) {
  using T = opmath_t<S>;
  const bool skip = a.scratch[kScratchSkip] != 0.0;
  const double* lrs = a.scratch + kScratchLr;
  const double* moms = lrs + a.groups;
  for (int i = tid; i < a.n_tensors; i += nthreads) {
    const TensorMeta& t = a.t[i];
    const double* h = a.hparams + int64_t(t.group) * a.cols;
    double* r = a.scratch + int64_t(i) * kRecordWords;
    const float old_step = *t.step;
    r[kRecFirst] = old_step == 0.0f ? 1.0 : 0.0;
    r[kRecSkip] = skip ? 1.0 : 0.0;
    // Stochastic rounding draws from (seed, tensor, step, element): the param's counter before this step.
    r[kRecRng] = h[kStochastic] != 0.0 ? double(old_step) + 1.0 : 0.0;
    if constexpr (kAdam) {
      // torch: _foreach_add_(state_steps, 1) before the kernel, undone (found_inf == 1) after it.
      write_adam_record<T>(r, adam_cuda_scalars<T>(lrs[t.group], moms[t.group], h[kBeta2], h[kEps], h[kWeightDecay],
                                                   h[kAmsgrad] != 0.0 && t.s3 != nullptr, h[kMaximize] != 0.0,
                                                   h[kDecoupled] != 0.0, old_step + 1.0f));
    } else {
      write_sgd_record<T>(r, sgd_cuda_scalars<T>(lrs[t.group], t.s1 != nullptr ? moms[t.group] : 0.0,
                                                 h[kDampening], h[kSgdWeightDecay], h[kNesterov] != 0.0,
                                                 h[kSgdMaximize] != 0.0));
    }
    if (!skip) *t.step = old_step + 1.0f;
  }
}

// ------------------------------------------------------------------------------------------------ update kernel
// A unit of work is N = 16 / sizeof(S) consecutive elements: one 128-bit access for the param and the grad (4 x fp32,
// 2 x fp64, 8 x fp16/bf16), the same number of elements of each state and master (float32 states of a bf16 param:
// two 128-bit accesses). The scalar tail and unaligned tensors use units of one element.
template <class X, int N>
struct Vec {
  X v[N];
};

template <class X, int N>
WF_HOST_DEVICE Vec<X, N> load_vec(const X* p) {
  Vec<X, N> out;
  if constexpr (N * sizeof(X) % 16 == 0) {
#if defined(__CUDA_ARCH__)
    for (int k = 0; k < int(N * sizeof(X) / 16); ++k) {
      const uint4 raw = reinterpret_cast<const uint4*>(p)[k];  // 128-bit global loads
      memcpy(reinterpret_cast<char*>(&out) + 16 * k, &raw, 16);
    }
#else
    std::memcpy(&out, p, sizeof(out));
#endif
  } else {
    for (int k = 0; k < N; ++k) out.v[k] = p[k];
  }
  return out;
}

template <class X, int N>
WF_HOST_DEVICE void store_vec(X* p, const Vec<X, N>& in) {
  if constexpr (N * sizeof(X) % 16 == 0) {
#if defined(__CUDA_ARCH__)
    for (int k = 0; k < int(N * sizeof(X) / 16); ++k) {
      uint4 raw;
      memcpy(&raw, reinterpret_cast<const char*>(&in) + 16 * k, 16);
      reinterpret_cast<uint4*>(p)[k] = raw;  // 128-bit global stores
    }
#else
    std::memcpy(p, &in, sizeof(in));
#endif
  } else {
    for (int k = 0; k < N; ++k) p[k] = in.v[k];
  }
}

template <class T, class S>
WF_HOST_DEVICE T to_op(S x) {
  return T(static_cast<opmath_t<S>>(x));
}

// 32 random bits from (seed, tensor, step, element): splitmix64's finaliser over a mix of the four (counter-based,
// so the same seed reproduces a run, on the host as on the device, with no state to advance).
WF_HOST_DEVICE uint32_t random_bits(uint64_t seed, uint64_t tensor, uint64_t step, uint64_t element) {
  uint64_t x = seed ^ (tensor * 0x9E3779B97F4A7C15ull) ^ (step * 0xD1B54A32D192ED03ull) ^ (element * 0x8CB92BA72F3D8DD7ull);
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return uint32_t((x ^ (x >> 31)) >> 32);
}

// x rounded to bfloat16 stochastically, without bias: up with probability (x - down) / (up - down). The low 16 bits
// of x's float32 pattern are the position between the two neighbours; adding 16 random bits carries into the kept
// half with exactly that probability. inf and NaN round to nearest (unchanged).
WF_HOST_DEVICE c10::BFloat16 round_stochastic(float x, uint32_t r) {
#if defined(__CUDA_ARCH__)
  uint32_t bits = __float_as_uint(x);
#else
  uint32_t bits;
  std::memcpy(&bits, &x, 4);
#endif
  if ((bits & 0x7f800000u) == 0x7f800000u) return c10::BFloat16(x);
  return c10::BFloat16(uint16_t((bits + (r & 0xffffu)) >> 16), c10::BFloat16::from_bits());
}

// What the optimizer step sees of one launch's tensor: its record and the features it uses.
struct UnitContext {
  const float* grad_scale;
  const double* clip_coef;
  uint64_t rng_seed, rng_step;  // rng_step 0: no stochastic rounding
  int32_t index;
  bool first;
};

// The param written back: with a master, the master (float32) and the param rounded to nearest from it; with
// stochastic rounding (bf16 only), rounded stochastically; else rounded to nearest.
template <class S, class T>
WF_HOST_DEVICE S param_out(T value, const UnitContext& c, int64_t element) {
  if constexpr (std::is_same_v<S, c10::BFloat16>) {
    if (c.rng_step != 0)
      return round_stochastic(float(value), random_bits(c.rng_seed, uint64_t(c.index), c.rng_step, uint64_t(element)));
  }
  return S(value);
}

// One unit of N elements starting at element i. S: param and grad storage; X: state storage (S, or float32 with
// a master). Loads every operand of the unit, computes, then stores (all loads before any store).
template <class S, class X, int N, bool kAdam>
WF_HOST_DEVICE void update_unit(const TensorMeta& t, int64_t i, const double* r, const UnitContext& c) {
  using T = opmath_t<S>;
  S* p = static_cast<S*>(t.p) + i;
  S* g = static_cast<S*>(t.g) + i;
  X* s1 = t.s1 ? static_cast<X*>(t.s1) + i : nullptr;
  X* s2 = t.s2 ? static_cast<X*>(t.s2) + i : nullptr;
  X* s3 = t.s3 ? static_cast<X*>(t.s3) + i : nullptr;
  float* master = t.master ? t.master + i : nullptr;
  T pv[N], gv[N], av[N], bv[N], cv[N];  // param, grad, then exp_avg, exp_avg_sq, max (Adam) or the buffer (SGD)
  {
    const Vec<S, N> gp = load_vec<S, N>(g);
    // A master's first step starts from the param (a master created inside a capture is uninitialised memory).
    const bool from_master = master && !c.first;
    Vec<float, N> mp{};
    Vec<S, N> pp{};
    if (from_master) mp = load_vec<float, N>(master);
    else pp = load_vec<S, N>(p);
    for (int k = 0; k < N; ++k) {
      pv[k] = from_master ? T(mp.v[k]) : to_op<T>(pp.v[k]);
      gv[k] = to_op<T>(gp.v[k]);
      av[k] = bv[k] = cv[k] = T(0);
    }
  }
  if constexpr (kAdam) {
    const AdamCudaScalars<T> s = read_adam_record<T>(r);
    if (!c.first) {
      const Vec<X, N> ap = load_vec<X, N>(s1), bp = load_vec<X, N>(s2);
      Vec<X, N> cp{};
      if (s.amsgrad) cp = load_vec<X, N>(s3);
      for (int k = 0; k < N; ++k) {
        av[k] = to_op<T>(ap.v[k]);
        bv[k] = to_op<T>(bp.v[k]);
        cv[k] = s.amsgrad ? to_op<T>(cp.v[k]) : T(0);
      }
    }
    for (int k = 0; k < N; ++k) {
      if (c.grad_scale) gv[k] = gv[k] / T(*c.grad_scale);  // torch: grad /= opmath(*grad_scale), stored back
      if (c.clip_coef) gv[k] = to_op<T>(S(gv[k] * T(*c.clip_coef)));  // clip_grad_norm_'s _foreach_mul_
      adam_cuda_update<T>(pv[k], gv[k], av[k], bv[k], cv[k], s);
    }
    Vec<X, N> ap, bp, cp;
    for (int k = 0; k < N; ++k) {
      ap.v[k] = X(av[k]);
      bp.v[k] = X(bv[k]);
      cp.v[k] = X(cv[k]);
    }
    store_vec<X, N>(s1, ap);
    store_vec<X, N>(s2, bp);
    if (s.amsgrad) store_vec<X, N>(s3, cp);
  } else {
    const SgdCudaScalars<T> s = read_sgd_record<T>(r);
    if (s.has_momentum && !c.first) {
      const Vec<X, N> ap = load_vec<X, N>(s1);
      for (int k = 0; k < N; ++k) av[k] = to_op<T>(ap.v[k]);
    }
    for (int k = 0; k < N; ++k) {
      if (c.grad_scale) gv[k] = gv[k] / T(*c.grad_scale);
      if (c.clip_coef) gv[k] = to_op<T>(S(gv[k] * T(*c.clip_coef)));
      sgd_cuda_update<T>(pv[k], gv[k], av[k], c.first, s);
    }
    if (s.has_momentum) {
      Vec<X, N> ap;
      for (int k = 0; k < N; ++k) ap.v[k] = X(av[k]);
      store_vec<X, N>(s1, ap);
    }
  }
  Vec<S, N> pp, gp;
  Vec<float, N> mp;
  for (int k = 0; k < N; ++k) {
    mp.v[k] = float(pv[k]);
    pp.v[k] = master ? S(mp.v[k]) : param_out<S>(pv[k], c, i + k);
    gp.v[k] = S(gv[k]);
  }
  if (master) store_vec<float, N>(master, mp);
  store_vec<S, N>(p, pp);
  if (c.grad_scale) store_vec<S, N>(g, gp);
}

// A skipped first step leaves state created inside a CUDA graph capture (uninitialised memory) as it is made
// eagerly: Adam's states zero, a master equal to its param.
template <class S, class X, bool kAdam>
WF_HOST_DEVICE void init_states(const TensorMeta& t, int64_t begin, int64_t end, int tid, int nthreads) {
  for (int64_t i = begin + tid; i < end; i += nthreads) {
    if (kAdam) {
      static_cast<X*>(t.s1)[i] = X(0.0f);
      static_cast<X*>(t.s2)[i] = X(0.0f);
      if (t.s3) static_cast<X*>(t.s3)[i] = X(0.0f);
    }
    if (t.master) t.master[i] = float(static_cast<const S*>(t.p)[i]);
  }
}

// The tensor that block `block` of the launch works on (binary search of first_block).
WF_HOST_DEVICE int tensor_of_block(const LaunchParams& a, int64_t block) {
  int lo = 0, hi = a.n_tensors - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (a.first_block[mid] <= block) lo = mid; else hi = mid - 1;
  }
  return lo;
}

// One thread of update block `block`: units of its chunk, vectors first, then the scalar tail. kMaster: the
// launch's tensors have float32 masters and states (all of a launch do or none do).
template <class S, bool kAdam, bool kMaster>
WF_HOST_DEVICE void update_thread(const LaunchParams& a, int64_t block, int tid, int nthreads) {
  using X = std::conditional_t<kMaster, float, S>;
  constexpr int kN = 16 / int(sizeof(S));
  const int ti = tensor_of_block(a, block);
  const TensorMeta& t = a.t[ti];
  const double* r = a.scratch + int64_t(ti) * kRecordWords;
  const UnitContext c{a.grad_scale, a.clip_coef, a.rng_seed, uint64_t(r[kRecRng]), t.index, r[kRecFirst] != 0.0};
  const int64_t begin = (block - a.first_block[ti]) * kChunk;
  const int64_t end = begin + kChunk < t.numel ? begin + kChunk : t.numel;
  if (r[kRecSkip] != 0.0) {  // SGD's buffer stays uninitialised: its counter still says "first"
    if (c.first) init_states<S, X, kAdam>(t, begin, end, tid, nthreads);
    return;
  }
  const int64_t vec_end = t.aligned ? begin + (end - begin) / kN * kN : begin;
  for (int64_t i = begin + int64_t(tid) * kN; i < vec_end; i += int64_t(nthreads) * kN)
    update_unit<S, X, kN, kAdam>(t, i, r, c);
  for (int64_t i = vec_end + tid; i < end; i += nthreads) update_unit<S, X, 1, kAdam>(t, i, r, c);
}

// ------------------------------------------------------------------------------------------------- host: plan
// Splits the tensors of one dtype (indices into the op's lists) into launches of at most kMaxTensors tensors;
// a tensor with no elements gets no block but still gets a record (its step counter advances, as torch's does).
struct LaunchPlan {
  std::vector<int64_t> tensors;        // indices into the op's lists
  std::vector<int32_t> first_block;    // size tensors + 1
};

inline std::vector<LaunchPlan> make_launches(const std::vector<int64_t>& indices, const std::vector<int64_t>& numels) {
  std::vector<LaunchPlan> out;
  for (size_t k = 0; k < indices.size(); ++k) {
    if (out.empty() || int(out.back().tensors.size()) == kMaxTensors) out.push_back({{}, {0}});
    LaunchPlan& l = out.back();
    const int64_t i = indices[k];
    l.tensors.push_back(i);
    l.first_block.push_back(l.first_block.back() + int32_t((numels[i] + kChunk - 1) / kChunk));
  }
  return out;
}

}  // namespace warmup_fused
