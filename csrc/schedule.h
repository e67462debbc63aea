// The schedule evaluator: the single source of truth for lr(step), compiled for host and device.
//
// A schedule is a small "program" held in two flat arrays:
//   ints (int64):  [num_groups,
//                   per group g: phase_index, num_phases, steps_per_epoch,
//                   phases (kPhaseWords each): begin_epoch, code_index, code_len, table_index, table_len,
//                   code words: opcode | (argument << 8)]
//   vals (double): constants and tables.
// lr(group, step): epoch = step / steps_per_epoch; the phase is the last one with begin <= epoch; if the
// phase has a table covering the local epoch, the table entry is the answer, else its postfix code runs on a
// tiny stack of doubles. The code mirrors the reference's Python expression tree op for op, so + - * / sqrt
// (correctly rounded in IEEE double) give the reference's bits; cos/pow/exp/log/tanh are the device's own
// unless a table (built on the host with the same libm as Python) covers the step.
//
// Bit-exactness needs: no fast-math and no contraction. The host build uses -ffp-contract=off; the device code is
// compiled with nvcc's default -fmad=true (as torch's kernels are, for optimizer parity), so every double operation
// here goes through the round-to-nearest intrinsics below, which nvcc never fuses.
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
  kDiv,         // a / b
  kFloorDiv,    // Python int a // b on integral values
  kMod,         // Python float a % b
  kMax,         // Python max(a, b): b if b > a else a
  kMin,         // Python min(a, b): b if b < a else a
  kSqrt,        // sqrt(a) (correctly rounded)
  kRepeatMul,   // a * b * b * ... (c times, left to right): torch's recursive lr *= gamma
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

WF_HOST_DEVICE int64_t floordiv_int(int64_t a, int64_t b) {
  int64_t q = a / b;
  if ((a % b != 0) && ((a < 0) != (b < 0))) q -= 1;
  return q;
}

// Python's float %: fmod (exact) with the sign of the divisor.
WF_HOST_DEVICE double python_mod(double a, double b) {
  double m = std::fmod(a, b);
  if (m != 0.0) {
    if ((b < 0.0) != (m < 0.0)) m = add_rn(m, b);
  } else {
    m = std::copysign(0.0, b);
  }
  return m;
}

// Evaluates lr for `group` at `step` (>= 0). Malformed programs and negative steps yield NaN, never a read
// out of bounds of the code or the stack (the host validates offsets once, see validate_program).
WF_HOST_DEVICE double schedule_lr(const int64_t* ints, const double* vals, int64_t group, int64_t step) {
  if (step < 0) return NAN;
  const int64_t* g = ints + kHeaderWords + kGroupWords * group;
  const int64_t* phases = ints + g[0];
  const int64_t num_phases = g[1];
  const int64_t epoch = step / g[2];
  // Binary search for the last phase with begin <= epoch (phase 0 begins at 0).
  int64_t lo = 0, hi = num_phases - 1;
  while (lo < hi) {
    int64_t mid = (lo + hi + 1) / 2;
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
    if (op == kRepeatMul) {
      if (sp < 3) return NAN;
      double x = stack[sp - 3];
      const double factor = stack[sp - 2];
      // Stops early once the product can no longer change: x * factor == x (0, inf, a factor of 1, or a
      // rounding fixed point such as the smallest subnormal times 0.999), or NaN. Every later step would
      // compute the same product, so the result is that of all k steps (k can be ~2**53).
      for (int64_t k = int64_t(stack[sp - 1]); k > 0 && !std::isnan(x); --k) {
        const double y = mul_rn(x, factor);
        if (y == x && std::signbit(y) == std::signbit(x)) break;
        x = y;
      }
      sp -= 2;
      stack[sp - 1] = x;
      continue;
    }
    if (op >= kSqrt) {  // unary
      if (sp < 1) return NAN;
      double& a = stack[sp - 1];
      if (op == kSqrt) a = sqrt_rn(a);
      else if (op == kCos) a = std::cos(a);
      else if (op == kExp) a = std::exp(a);
      else if (op == kLog) a = std::log(a);
      else if (op == kTanh) a = std::tanh(a);
      else if (op == kRoundF32) a = double(static_cast<float>(a));
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
      case kDiv: a = div_rn(a, b); break;
      case kFloorDiv:  // validated operands: integral, |x| < 2^53, divisor != 0
        if (b == 0.0) return NAN;
        a = double(floordiv_int(int64_t(a), int64_t(b)));
        break;
      case kMod: a = python_mod(a, b); break;
      case kMax: a = (b > a) ? b : a; break;
      case kMin: a = (b < a) ? b : a; break;
      default: return NAN;
    }
  }
  return sp == 1 ? stack[0] : NAN;
}

}  // namespace warmup_fused
