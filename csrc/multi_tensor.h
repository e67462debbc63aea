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
enum GroupCol : int { kLrSource = 0, kHostLr, kMomentumSource, kHostMomentum, kCommonCols };
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
  void* p;   // param
  void* g;   // grad
  void* s1;  // exp_avg | momentum_buffer (null: SGD without momentum)
  void* s2;  // exp_avg_sq
  void* s3;  // max_exp_avg_sq (null: no amsgrad)
  float* step;  // per-param step counter (Adam: state['step']; SGD: steps taken, 0 = buffer not initialised)
  int64_t numel;
  int32_t group;
  int32_t aligned;  // every pointer above is 16-byte aligned: the vector path applies
};

struct LaunchParams {
  int32_t n_tensors, n_blocks;
  int32_t first_block[kMaxTensors + 1];  // blocks of tensor i: [first_block[i], first_block[i + 1])
  TensorMeta t[kMaxTensors];
  double* scratch;          // records at [0, n_tensors * kRecordWords), then the skip flag and the group rows
  const double* hparams;
  int64_t cols, groups;
  const float* grad_scale;  // null: no AMP scaling
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
enum RecordWord : int { kRecFirst = 0, kRecSkip, kRecA, kRecB, kRecC, kRecD, kRecE, kRecF, kRecG, kRecH, kRecI };

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
// 16 bytes of S: the unit of the vector path (4 x fp32, 2 x fp64, 8 x fp16/bf16).
template <class S>
struct alignas(16) Pack {
  static constexpr int kN = 16 / int(sizeof(S));
  S v[kN];
};

template <class S>
WF_HOST_DEVICE Pack<S> load_pack(const S* p) {
  Pack<S> out;
#if defined(__CUDA_ARCH__)
  const uint4 raw = *reinterpret_cast<const uint4*>(p);  // one 128-bit global load
  memcpy(&out, &raw, sizeof(raw));
#else
  std::memcpy(&out, p, sizeof(out));
#endif
  return out;
}

template <class S>
WF_HOST_DEVICE void store_pack(S* p, const Pack<S>& in) {
#if defined(__CUDA_ARCH__)
  uint4 raw;
  memcpy(&raw, &in, sizeof(raw));
  *reinterpret_cast<uint4*>(p) = raw;  // one 128-bit global store
#else
  std::memcpy(p, &in, sizeof(in));
#endif
}

template <class T, class S>
WF_HOST_DEVICE T to_op(S x) {
  return T(static_cast<opmath_t<S>>(x));
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

// The unit of work of one thread: a Pack of elements (vector path) or one element (tail), as arrays of N values.
// Adam: loads every operand of the group, computes, then stores (all loads issued before any store).
template <class S, int N>
WF_HOST_DEVICE void adam_elements(S* p, S* g, S* m, S* v, S* vm, const AdamCudaScalars<opmath_t<S>>& s,
                                  const float* gs, bool first) {
  using T = opmath_t<S>;
  T pv[N], gv[N], mv[N], vv[N], vmv[N];
  if constexpr (N > 1) {
    const Pack<S> pp = load_pack(p), gp = load_pack(g);
    Pack<S> mp{}, vp{}, vmp{};
    if (!first) {
      mp = load_pack(m);
      vp = load_pack(v);
      if (s.amsgrad) vmp = load_pack(vm);
    }
    for (int k = 0; k < N; ++k) {
      pv[k] = to_op<T>(pp.v[k]);
      gv[k] = to_op<T>(gp.v[k]);
      mv[k] = first ? T(0) : to_op<T>(mp.v[k]);
      vv[k] = first ? T(0) : to_op<T>(vp.v[k]);
      vmv[k] = (first || !s.amsgrad) ? T(0) : to_op<T>(vmp.v[k]);
    }
  } else {
    pv[0] = to_op<T>(*p);
    gv[0] = to_op<T>(*g);
    mv[0] = first ? T(0) : to_op<T>(*m);
    vv[0] = first ? T(0) : to_op<T>(*v);
    vmv[0] = (first || !s.amsgrad) ? T(0) : to_op<T>(*vm);
  }
  for (int k = 0; k < N; ++k) {
    if (gs != nullptr) gv[k] = gv[k] / T(*gs);  // torch: grad /= opmath(*grad_scale), stored back unscaled
    adam_cuda_update<T>(pv[k], gv[k], mv[k], vv[k], vmv[k], s);
  }
  if constexpr (N > 1) {
    Pack<S> pp, mp, vp, gp, vmp;
    for (int k = 0; k < N; ++k) {
      pp.v[k] = S(pv[k]);
      mp.v[k] = S(mv[k]);
      vp.v[k] = S(vv[k]);
      gp.v[k] = S(gv[k]);
      vmp.v[k] = S(vmv[k]);
    }
    store_pack(p, pp);
    store_pack(m, mp);
    store_pack(v, vp);
    if (s.amsgrad) store_pack(vm, vmp);
    if (gs != nullptr) store_pack(g, gp);
  } else {
    *p = S(pv[0]);
    *m = S(mv[0]);
    *v = S(vv[0]);
    if (s.amsgrad) *vm = S(vmv[0]);
    if (gs != nullptr) *g = S(gv[0]);
  }
}

template <class S, int N>
WF_HOST_DEVICE void sgd_elements(S* p, S* g, S* b, const SgdCudaScalars<opmath_t<S>>& s, const float* gs,
                                 bool first) {
  using T = opmath_t<S>;
  const bool load_buf = s.has_momentum && !first;
  T pv[N], gv[N], bv[N];
  if constexpr (N > 1) {
    const Pack<S> pp = load_pack(p), gp = load_pack(g);
    Pack<S> bp{};
    if (load_buf) bp = load_pack(b);
    for (int k = 0; k < N; ++k) {
      pv[k] = to_op<T>(pp.v[k]);
      gv[k] = to_op<T>(gp.v[k]);
      bv[k] = load_buf ? to_op<T>(bp.v[k]) : T(0);
    }
  } else {
    pv[0] = to_op<T>(*p);
    gv[0] = to_op<T>(*g);
    bv[0] = load_buf ? to_op<T>(*b) : T(0);
  }
  for (int k = 0; k < N; ++k) {
    if (gs != nullptr) gv[k] = gv[k] / T(*gs);
    sgd_cuda_update<T>(pv[k], gv[k], bv[k], first, s);
  }
  if constexpr (N > 1) {
    Pack<S> pp, gp, bp;
    for (int k = 0; k < N; ++k) {
      pp.v[k] = S(pv[k]);
      gp.v[k] = S(gv[k]);
      bp.v[k] = S(bv[k]);
    }
    store_pack(p, pp);
    if (s.has_momentum) store_pack(b, bp);
    if (gs != nullptr) store_pack(g, gp);
  } else {
    *p = S(pv[0]);
    if (s.has_momentum) *b = S(bv[0]);
    if (gs != nullptr) *g = S(gv[0]);
  }
}

// Zeroes a tensor's Adam states in [begin, end): a skipped first step leaves states created inside a CUDA graph
// capture (uninitialised memory) as torch would have them, zeros.
template <class S>
WF_HOST_DEVICE void zero_states(S* m, S* v, S* vm, int64_t begin, int64_t end, int tid, int nthreads) {
  for (int64_t i = begin + tid; i < end; i += nthreads) {
    m[i] = S(0.0f);
    v[i] = S(0.0f);
    if (vm != nullptr) vm[i] = S(0.0f);
  }
}

// One thread of update block `block`: elements of its chunk, vectors first, then the scalar tail.
template <class S, bool kAdam>
WF_HOST_DEVICE void update_thread(const LaunchParams& a, int64_t block, int tid, int nthreads) {
  using T = opmath_t<S>;
  constexpr int kN = Pack<S>::kN;
  const int ti = tensor_of_block(a, block);
  const TensorMeta& t = a.t[ti];
  const double* r = a.scratch + int64_t(ti) * kRecordWords;
  const bool first = r[kRecFirst] != 0.0;
  const int64_t begin = (block - a.first_block[ti]) * kChunk;
  const int64_t end = begin + kChunk < t.numel ? begin + kChunk : t.numel;
  S* p = static_cast<S*>(t.p);
  S* g = static_cast<S*>(t.g);
  S* s1 = static_cast<S*>(t.s1);
  const int64_t vec_end = t.aligned ? begin + (end - begin) / kN * kN : begin;
  if constexpr (kAdam) {
    S* s2 = static_cast<S*>(t.s2);
    S* s3 = static_cast<S*>(t.s3);
    if (r[kRecSkip] != 0.0) {
      if (first) zero_states<S>(s1, s2, s3, begin, end, tid, nthreads);
      return;
    }
    const AdamCudaScalars<T> s = read_adam_record<T>(r);
    for (int64_t i = begin + int64_t(tid) * kN; i < vec_end; i += int64_t(nthreads) * kN)
      adam_elements<S, kN>(p + i, g + i, s1 + i, s2 + i, s.amsgrad ? s3 + i : nullptr, s, a.grad_scale, first);
    for (int64_t i = vec_end + tid; i < end; i += nthreads)
      adam_elements<S, 1>(p + i, g + i, s1 + i, s2 + i, s.amsgrad ? s3 + i : nullptr, s, a.grad_scale, first);
  } else {
    if (r[kRecSkip] != 0.0) return;  // the buffer stays uninitialised: the counter still says "first"
    const SgdCudaScalars<T> s = read_sgd_record<T>(r);
    S* b = s.has_momentum ? s1 : nullptr;
    for (int64_t i = begin + int64_t(tid) * kN; i < vec_end; i += int64_t(nthreads) * kN)
      sgd_elements<S, kN>(p + i, g + i, b ? b + i : nullptr, s, a.grad_scale, first);
    for (int64_t i = vec_end + tid; i < end; i += nthreads)
      sgd_elements<S, 1>(p + i, g + i, b ? b + i : nullptr, s, a.grad_scale, first);
  }
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
