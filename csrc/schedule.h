// The schedule evaluator: the single source of truth for lr(step), compiled for host and device.
//
// A schedule is a small "program" held in two flat arrays:
//   ints (int64):  [num_groups,
//                   per group g: phase_index, num_phases, steps_per_epoch,
//                   phases (kPhaseWords each): begin_epoch, code_index, code_len, table_index, table_len,
//                   code words: opcode | (argument << 8)]
//   vals (double): constants, tables and repeat_mul anchor blocks.
// lr(group, step): epoch = step / steps_per_epoch; the phase is the last one with begin <= epoch; if the
// phase has a table covering the local epoch, the table entry is the answer, else its postfix code runs on a
// tiny stack of doubles. The code mirrors the reference's Python expression tree op for op, so + - * / sqrt
// (correctly rounded in IEEE double) give the reference's bits; cos/pow/exp/log/tanh are the device's own
// unless a table (built on the host with the same libm as Python) covers the step. Where Python would raise
// (a zero divisor of / // %), the result is NaN: the device cannot raise (constant zero divisors are refused
// when a Schedule is compiled). A program may hold more groups than the optimizer has param groups: a
// Schedule with a momentum channel puts the momentum of group g in program group num_groups + g.
//
// Bit-exactness needs: no fast-math and no contraction. The host build uses -ffp-contract=off; device code is
// compiled with nvcc's default -fmad=true (as torch's kernels are, for optimizer parity), so the double + - * / sqrt
// here go through the round-to-nearest intrinsics below (add_rn, ...), which nvcc never fuses.
// No undefined behaviour for any validated program and any step: no double is converted to an integer
// type unless it is known to be in range, and validate_program's bound checks cannot overflow.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define WF_HOST_DEVICE __host__ __device__ __forceinline__
#elif defined(__GNUC__)
// always_inline also lets the CPU kernels' AVX2+FMA clones inline (and vectorise) this shared math.
#define WF_HOST_DEVICE inline __attribute__((always_inline))
#else
#define WF_HOST_DEVICE inline
#endif

namespace warmup_fused {

enum Op : int64_t {
  kStep = 0,    // push double(epoch)
  kLocal,       // push double(epoch - phase begin)
  kConst,       // push vals[arg]
  kAdd,         // a + b
  kSub,         // a - b
  kMul,         // a * b
  kDiv,         // a / b (NaN if b == 0: Python raises)
  kFloorDiv,    // Python float a // b
  kMod,         // Python float a % b
  kMax,         // Python max(a, b): b if b > a else a
  kMin,         // Python min(a, b): b if b < a else a
  kSqrt,        // sqrt(a) (correctly rounded)
  kRepeatMul,   // x * f * f * ... (c times, left to right; c popped): torch's recursive lr *= gamma. x, f and
                // the anchors live in the block vals[arg...] (see repeat_mul below).
  kCos,         // transcendental ops below: exact only through a table
  kPow,
  kExp,
  kLog,
  kTanh,
  kRoundF32,    // double(float(a)): round to float32 (Keras/TF schedules compute in float32)
  kNumOps
};

constexpr int64_t kHeaderWords = 1;
constexpr int64_t kGroupWords = 3;
constexpr int64_t kPhaseWords = 5;
constexpr int kStackDepth = 16;

// IEEE double + - * / sqrt, each correctly rounded and never contracted with a neighbour.
#if defined(__CUDA_ARCH__)
__device__ __forceinline__ double add_rn(double a, double b) { return __dadd_rn(a, b); }
__device__ __forceinline__ double sub_rn(double a, double b) { return __dsub_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ double div_rn(double a, double b) { return __ddiv_rn(a, b); }
__device__ __forceinline__ double sqrt_rn(double a) { return __dsqrt_rn(a); }
#else
inline double add_rn(double a, double b) { return a + b; }
inline double sub_rn(double a, double b) { return a - b; }
inline double mul_rn(double a, double b) { return a * b; }
inline double div_rn(double a, double b) { return a / b; }
inline double sqrt_rn(double a) { return std::sqrt(a); }
#endif

// repeat_mul anchor blocks: vals[arg] = f, vals[arg + 1] = k* (the first count whose product is a fixed point:
// x_{k*} * f == x_{k*}, or NaN), vals[arg + 2] = x_{k*}, vals[arg + 3 + j] = x_{j * kRepeatAnchorEvery} for
// j = 0 .. k* / kRepeatAnchorEvery. At most kRepeatAnchorEvery - 1 multiplications remain per evaluation;
// k* <= kRepeatMaxCount bounds the block (the compiler refuses products that settle later).
constexpr int64_t kRepeatAnchorEvery = 256;
constexpr int64_t kRepeatMaxCount = int64_t(1) << 26;
constexpr int64_t kRepeatHeaderWords = 3;

// Python's float //, as CPython computes it (_float_div_mod), for every operand, inf and NaN included.
WF_HOST_DEVICE double python_floordiv(double a, double b) {
  if (b == 0.0) return NAN;  // ZeroDivisionError in Python
  const double mod = std::fmod(a, b);
  double div = div_rn(sub_rn(a, mod), b);
  if (mod != 0.0 && ((b < 0.0) != (mod < 0.0))) div = sub_rn(div, 1.0);
  if (div == 0.0) return std::copysign(0.0, div_rn(a, b));
  double floordiv = std::floor(div);
  if (sub_rn(div, floordiv) > 0.5) floordiv = add_rn(floordiv, 1.0);
  return floordiv;
}

// Python's float %: fmod (exact) with the sign of the divisor.
WF_HOST_DEVICE double python_mod(double a, double b) {
  if (b == 0.0) return NAN;  // ZeroDivisionError in Python
  double m = std::fmod(a, b);
  if (m != 0.0) {
    if ((b < 0.0) != (m < 0.0)) m = add_rn(m, b);
  } else {
    m = std::copysign(0.0, b);
  }
  return m;
}

// float32 rounding (ties to even). A double beyond float's range is not representable, which C++ leaves
// undefined: from the midpoint between FLT_MAX and 2^128 on, IEEE rounds to infinity.
WF_HOST_DEVICE double round_f32(double a) {
  if (std::fabs(a) >= 0x1.ffffffp+127) return std::copysign(double(INFINITY), a);
  return double(static_cast<float>(a));
}

// x * f * ... (c multiplications, left to right) from an anchor block (layout above). c < 0 counts as 0
// (Python's range(c)); a NaN or non-integral c gives NaN (Python's range raises).
WF_HOST_DEVICE double repeat_mul(const double* block, double c) {
  if (!(c == std::floor(c))) return NAN;
  if (c >= block[1]) return block[2];  // +inf included
  const int64_t k = c > 0.0 ? int64_t(c) : 0;  // 0 <= c < k* <= kRepeatMaxCount: exact, in range
  double x = block[kRepeatHeaderWords + k / kRepeatAnchorEvery];
  for (int64_t r = k % kRepeatAnchorEvery; r > 0; --r) x = mul_rn(x, block[0]);
  return x;
}

// Evaluates lr for `group` at `step` (>= 0). Malformed programs and negative steps yield NaN, never a read
// out of bounds of the code, the stack or vals (the host validates a program once, see validate_program).
WF_HOST_DEVICE double schedule_lr(const int64_t* ints, const double* vals, int64_t group, int64_t step) {
  if (step < 0) return NAN;
  const int64_t* g = ints + kHeaderWords + kGroupWords * group;
  const int64_t* phases = ints + g[0];
  const int64_t num_phases = g[1];
  const int64_t epoch = step / g[2];
  // Binary search for the last phase with begin <= epoch (phase 0 begins at 0).
  int64_t lo = 0, hi = num_phases - 1;
  while (lo < hi) {
    int64_t mid = lo + (hi - lo + 1) / 2;
    if (phases[mid * kPhaseWords] <= epoch) lo = mid; else hi = mid - 1;
  }
  const int64_t* ph = phases + lo * kPhaseWords;
  const int64_t local = epoch - ph[0];
  if (local < ph[4]) return vals[ph[3] + local];

  double stack[kStackDepth];
  int sp = 0;
  const int64_t* code = ints + ph[1];
  for (int64_t i = 0; i < ph[2]; ++i) {
    const int64_t op = code[i] & 0xff;
    const int64_t arg = code[i] >> 8;
    if (op <= kConst) {
      if (sp >= kStackDepth) return NAN;
      stack[sp++] = op == kStep ? double(epoch) : op == kLocal ? double(local) : vals[arg];
      continue;
    }
    if (op >= kSqrt) {  // unary
      if (sp < 1) return NAN;
      double& a = stack[sp - 1];
      if (op == kSqrt) a = sqrt_rn(a);
      else if (op == kRepeatMul) a = repeat_mul(vals + arg, a);
      else if (op == kCos) a = std::cos(a);
      else if (op == kExp) a = std::exp(a);
      else if (op == kLog) a = std::log(a);
      else if (op == kTanh) a = std::tanh(a);
      else if (op == kRoundF32) a = round_f32(a);
      else if (op == kPow) {  // binary, listed with the transcendentals
        if (sp < 2) return NAN;
        stack[sp - 2] = std::pow(stack[sp - 2], a);
        --sp;
      } else return NAN;
      continue;
    }
    if (sp < 2) return NAN;
    const double b = stack[--sp];
    double& a = stack[sp - 1];
    switch (op) {
      case kAdd: a = add_rn(a, b); break;
      case kSub: a = sub_rn(a, b); break;
      case kMul: a = mul_rn(a, b); break;
      case kDiv: a = b == 0.0 ? NAN : div_rn(a, b); break;
      case kFloorDiv: a = python_floordiv(a, b); break;
      case kMod: a = python_mod(a, b); break;
      case kMax: a = (b > a) ? b : a; break;
      case kMin: a = (b < a) ? b : a; break;
      default: return NAN;
    }
  }
  return sp == 1 ? stack[0] : NAN;
}

// ReduceLROnPlateau on the device. A schedule with a plateau phase keeps the scheduler's state in a block of its
// vals (a phase reads its group's LR there with kConst), and plateau_observe updates that block in place from a
// metric: torch's ReduceLROnPlateau.step(metrics) operation for operation (is_better, cooldown, reduce_lr), in
// double, so the LRs equal torch's bit for bit. Block layout (float64 words):
enum PlateauWord : int {
  kPlMax = 0,          // mode: 0 "min", 1 "max"
  kPlAbs,              // threshold_mode: 0 "rel", 1 "abs"
  kPlThreshold, kPlPatience, kPlCooldown, kPlEps, kPlFactor,
  kPlBest, kPlBadEpochs, kPlCooldownCounter, kPlLastEpoch,  // the scheduler's state
  kPlGroups,           // G; then per group g, kPlGroupWords words: its LR, its min_lr, and 1 where the LR is held in a
  kPlHeader            // float32 tensor (torch rounds each new LR to float32 there)
};
constexpr int64_t kPlGroupWords = 3;

// `words`: the block's room in vals (from its start), which bounds the group count read from the block.
WF_HOST_DEVICE void plateau_observe(double* b, int64_t words, double current) {
  b[kPlLastEpoch] = add_rn(b[kPlLastEpoch], 1.0);
  const double best = b[kPlBest], threshold = b[kPlThreshold];
  bool better;
  if (b[kPlMax] == 0.0)
    better = b[kPlAbs] == 0.0 ? current < mul_rn(best, sub_rn(1.0, threshold)) : current < sub_rn(best, threshold);
  else
    better = b[kPlAbs] == 0.0 ? current > mul_rn(best, add_rn(threshold, 1.0)) : current > add_rn(best, threshold);
  if (better) {
    b[kPlBest] = current;
    b[kPlBadEpochs] = 0.0;
  } else {
    b[kPlBadEpochs] = add_rn(b[kPlBadEpochs], 1.0);
  }
  if (b[kPlCooldownCounter] > 0.0) {  // in cooldown: bad epochs are ignored
    b[kPlCooldownCounter] = sub_rn(b[kPlCooldownCounter], 1.0);
    b[kPlBadEpochs] = 0.0;
  }
  if (b[kPlBadEpochs] > b[kPlPatience]) {
    const double groups = b[kPlGroups], room = double((words - kPlHeader) / kPlGroupWords);
    for (int64_t g = 0; g < int64_t(groups < room ? groups : room); ++g) {
      double* group = b + kPlHeader + kPlGroupWords * g;
      const double reduced = mul_rn(group[0], b[kPlFactor]);
      const double next = group[1] > reduced ? group[1] : reduced;  // Python max(lr * factor, min_lr)
      if (sub_rn(group[0], next) > b[kPlEps]) group[0] = group[2] != 0.0 ? round_f32(next) : next;
    }
    b[kPlCooldownCounter] = b[kPlCooldown];
    b[kPlBadEpochs] = 0.0;
  }
}

}  // namespace warmup_fused
