// Per-element AdamW / Adam / SGD updates, shared by the CPU and CUDA kernels (host+device).
//
// Bit parity is the point of this file: each function reproduces, operation for operation, the arithmetic
// of one of torch's fused kernels, so that fed the same learning rate our params and states are bit-identical
// to torch.optim.{Adam,AdamW,SGD}(fused=True) on the same device.
//
//  * CPU (aten/src/ATen/native/cpu/FusedAdamKernel.cpp, FusedSGDKernel.cpp): every scalar is computed in
//    double and cast to the opmath type (float for fp32/fp16/bf16, double for fp64) per operation. GCC
//    contracted torch's a*b+c into FMA differently in each of its compiled loops; `TorchCpuLoop` says which
//    loop an element goes through (details there).
//  * CUDA (aten/src/ATen/native/cuda/fused_adam_utils.cuh, FusedSgdKernel.cu): torch builds with nvcc's default
//    -fmad=true, so its a*b+c are contracted to FMA; we build with the same default and write those fma()
//    explicitly, so that the contractions are torch's by construction (unverified on a GPU: the machine-code
//    test checks the loads, stores and spills, not the arithmetic).
//
// Host code is built with -ffp-contract=off: nothing here is contracted on the CPU unless it says fma.
#pragma once

#include <c10/util/bit_cast.h>

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "schedule.h"

namespace warmup_fused {

// amsgrad's max_exp_avg_sq = max(max_exp_avg_sq, exp_avg_sq) as torch's CPU scalar tails and its CUDA kernel take
// it: std::max(a, b), which keeps a when b is NaN (the CPU vector loops' maxima: torch_max).
template <class T>
WF_HOST_DEVICE T std_max(T a, T b) {
  return (a < b) ? b : a;
}

// sqrt(v) / bias_correction2_sqrt + eps, with amsgrad's running max vmax already updated.
template <class T>
WF_HOST_DEVICE T adam_denom(T v, T vmax, bool amsgrad, T bc2_sqrt, T eps) {
  return std::sqrt(amsgrad ? vmax : v) / bc2_sqrt + eps;
}

// ------------------------------------------------------------------------------------------------- CPU (torch)

// The loop of torch's fused CPU kernel that updates an element, which fixes the FMA contractions GCC chose.
// torch 2.14.1 builds these kernels for DEFAULT and AVX2 only: its REGISTER_DISPATCH leaves the AVX512 slot
// empty and DispatchStub falls back to AVX2, so AVX2 and AVX512 machines both run the AVX2 kernel. Both kernels
// use 32-byte Vectorized: a Vectorized main loop, then a scalar tail for the last numel % Vec::size() elements.
//   kAvx2Vector, kAvx2Tail:       the AVX2 kernel (-mavx2 -mfma, GCC's default -ffp-contract=fast): its two loops
//                                 contract some a*b+c, not always the same product (see adam_cpu_update).
//   kDefaultVector, kDefaultTail: the DEFAULT kernel, built without FMA: nothing is contracted.
// Vector loops and tails also differ in amsgrad's max when a value is NaN or zeros differ in sign (torch_max).
enum class TorchCpuLoop { kDefaultVector, kDefaultTail, kAvx2Vector, kAvx2Tail };

constexpr bool is_tail(TorchCpuLoop loop) {
  return loop == TorchCpuLoop::kDefaultTail || loop == TorchCpuLoop::kAvx2Tail;
}

constexpr bool is_default(TorchCpuLoop loop) {
  return loop == TorchCpuLoop::kDefaultVector || loop == TorchCpuLoop::kDefaultTail;
}

// max(a, b) as torch's loop kLoop takes it:
//   tails:          std::max(a, b);
//   kDefaultVector: at::vec::maximum's scalar loop: a when a is NaN, else (a > b) ? a : b;
//   kAvx2Vector:    _mm256_max_ps(a, b) | unordered(a, b): (a > b) ? a : b, and a NaN of all one bits.
template <TorchCpuLoop kLoop, class T>
inline T torch_max(T a, T b) {
  if constexpr (is_tail(kLoop)) return std_max(a, b);
  const T greater = (a > b) ? a : b;
  if constexpr (kLoop == TorchCpuLoop::kDefaultVector) return (a != a) ? a : greater;
  using Bits = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
  return (a != a || b != b) ? c10::bit_cast<T>(~Bits(0)) : greater;
}

// a*b + c as torch's loop computes it where GCC had only this one product to fuse.
template <TorchCpuLoop kLoop, class T>
WF_HOST_DEVICE T torch_madd(T a, T b, T c) {
  if constexpr (is_default(kLoop)) return a * b + c;
  else return std::fma(a, b, c);
}

// Scalars of one CPU Adam step for one tensor, in the opmath type T, derived exactly as torch's CPU kernel does.
template <class T>
struct AdamCpuScalars {
  T beta2, c2, lerp_w, bc2_sqrt, eps, wd, neg_step_size, step_size, decay;  // decay = T(1 - lr*wd)
  bool has_wd, maximize, amsgrad;
};

template <class T>
WF_HOST_DEVICE AdamCpuScalars<T> adam_cpu_scalars(double lr, double beta1, double beta2, double eps, double wd,
                                                  bool amsgrad, bool maximize, float step_f) {
  const double step = double(step_f);  // torch: state_step.item<float>()
  const double bias_correction1 = 1 - std::pow(beta1, step);
  const double bias_correction2 = 1 - std::pow(beta2, step);
  const double step_size = lr / bias_correction1;
  AdamCpuScalars<T> s;
  s.beta2 = T(beta2);
  s.c2 = T(1 - beta2);
  s.lerp_w = T(1 - beta1);
  s.bc2_sqrt = T(std::sqrt(bias_correction2));
  s.eps = T(eps);
  s.wd = T(wd);
  s.neg_step_size = T(-step_size);
  s.step_size = T(step_size);
  s.decay = T(1 - lr * wd);
  s.has_wd = wd != 0.0;
  s.maximize = maximize;
  s.amsgrad = amsgrad;
  return s;
}

// One element. p, m, v, vmax are opmath values (loaded and stored by the caller); g is the grad already
// unscaled and, for maximize, multiplied by -1 (cpu_grad in cpu/optim_cpu.cpp; the same in sgd_cpu_update).
//
// torch 2.14.1's contractions, found by comparing bit for bit under ATEN_CPU_CAPABILITY=avx512, avx2 and default
// (four dtypes, sizes 1..70001, every flag: tests/test_optim.py) and read in libtorch_cpu.so's vfmadd operands.
// In the AVX2 kernel:
//   grad + param*wd                      -> fma(param, wd, grad)               (both loops)
//   exp_avg lerp                         -> fma (vector: explicit vec::fmadd; tail: contracted)
//   exp_avg_sq*beta2 + (c2*grad)*grad    -> kAvx2Vector: fma(c2*grad, grad, exp_avg_sq*beta2)
//                                           kAvx2Tail:   fma(exp_avg_sq, beta2, (c2*grad)*grad)
// In the DEFAULT kernel each of these is a*b + c, rounded twice.
// kLerpLow = |lerp_w| < 0.5 (torch's lerp picks its formula by the weight): a template parameter, so that the loop
// has no branch and vectorises.
template <class T, TorchCpuLoop kLoop, bool kAdamW, bool kLerpLow>
WF_HOST_DEVICE void adam_cpu_update(T& p, T g, T& m, T& v, T& vmax, const AdamCpuScalars<T>& s) {
  if (s.has_wd) {
    if (kAdamW) p = p * s.decay;
    else g = torch_madd<kLoop>(p, s.wd, g);
  }
  // exp_avg.lerp_(grad, 1 - beta1). Tail: m + w*(g-m), or g - (g-m)*(1-w); -(1-w) == w-1 exactly.
  const T w = s.lerp_w;
  m = kLerpLow ? torch_madd<kLoop>(w, g - m, m) : torch_madd<kLoop>(w - T(1), g - m, g);
  if constexpr (kLoop == TorchCpuLoop::kAvx2Vector) v = std::fma(s.c2 * g, g, v * s.beta2);
  else v = torch_madd<kLoop>(v, s.beta2, s.c2 * g * g);
  if (s.amsgrad) vmax = torch_max<kLoop>(vmax, v);
  const T denom = adam_denom(v, vmax, s.amsgrad, s.bc2_sqrt, s.eps);
  // Vector loop: p + (-step_size) * m / denom; tail: p - step_size * m / denom. Identical in IEEE arithmetic.
  p = p + s.neg_step_size * m / denom;
}

template <class T>
struct SgdScalars {
  T wd, momentum, one_minus_dampening, neg_lr, lr;
  bool has_wd, has_momentum, nesterov, maximize;
};

template <class T>
WF_HOST_DEVICE SgdScalars<T> sgd_scalars(double lr, double momentum, double dampening, double wd, bool nesterov,
                                         bool maximize) {
  SgdScalars<T> s;
  s.wd = T(wd);
  s.momentum = T(momentum);
  s.one_minus_dampening = T(1 - dampening);
  s.neg_lr = T(-lr);
  s.lr = T(lr);
  s.has_wd = wd != 0.0;
  s.has_momentum = momentum != 0.0;
  s.nesterov = nesterov;
  s.maximize = maximize;
  return s;
}

// torch's CPU fused SGD, with the AVX2 kernel's contractions (the DEFAULT kernel: none), found as in adam_cpu_update:
//   grad + param*wd, grad + buf*momentum, param - grad*lr   -> fma (both loops)
//   buf*momentum + grad*(1-dampening)  -> kAvx2Vector: fma(grad, 1-dampening, buf*momentum)
//                                         kAvx2Tail:   fma(buf, momentum, grad*(1-dampening))
template <class T, TorchCpuLoop kLoop>
WF_HOST_DEVICE void sgd_cpu_update(T& p, T g, T& buf, bool first, const SgdScalars<T>& s) {
  if (s.has_wd) g = torch_madd<kLoop>(p, s.wd, g);
  if (s.has_momentum) {
    if (first) buf = g;
    else if constexpr (kLoop == TorchCpuLoop::kAvx2Vector) buf = std::fma(g, s.one_minus_dampening, buf * s.momentum);
    else buf = torch_madd<kLoop>(buf, s.momentum, g * s.one_minus_dampening);
    g = s.nesterov ? torch_madd<kLoop>(buf, s.momentum, g) : buf;
  }
  p = torch_madd<kLoop>(g, s.neg_lr, p);  // vector: p + g*(-lr); tail: p - g*lr: the same value
}

// ------------------------------------------------------------------------------------------------ CUDA (torch)
// Mirrors torch 2.14.1's FusedAdamMathFunctor and FusedSgdMathFunctor (fused_adam_utils.cuh, FusedSgdKernel.cu) as
// compiled in its wheel (the sm_90 machine code is the authority: ../shared/CUDA_REVIEW.md): every hyperparameter
// cast to the opmath type T (float for fp32/fp16/bf16, double for fp64), bias corrections from the float step with
// pow in T, nvcc's contractions written as fma. The per-tensor scalars are computed once per step (records kernel)
// and the element functions below run per element; hoisting step_size = lr / bc1 and lr * wd out of the element
// loop changes no bit (torch's compiler hoists them too).

template <class T>
struct AdamCudaScalars {
  T lr, beta1, beta2, wd, eps, bc1, bc2_sqrt, step_size, lr_wd;
  bool has_wd, maximize, amsgrad, decoupled;  // decoupled: AdamW
};

template <class T>
WF_HOST_DEVICE AdamCudaScalars<T> adam_cuda_scalars(double lr, double beta1, double beta2, double eps, double wd,
                                                    bool amsgrad, bool maximize, bool decoupled, float step_f) {
  AdamCudaScalars<T> s;
  s.lr = T(lr);
  s.beta1 = T(beta1);
  s.beta2 = T(beta2);
  s.wd = T(wd);
  s.eps = T(eps);
  const T step = T(step_f);
  s.bc1 = T(1) - T(std::pow(s.beta1, step));
  s.bc2_sqrt = T(std::sqrt(T(1) - T(std::pow(s.beta2, step))));
  s.step_size = s.lr / s.bc1;
  s.lr_wd = s.lr * s.wd;
  s.has_wd = s.wd != T(0);  // torch tests the opmath value
  s.maximize = maximize;
  s.amsgrad = amsgrad;
  s.decoupled = decoupled;
  return s;
}

// One element; g is the grad already divided by the grad scale (if any).
template <class T>
WF_HOST_DEVICE void adam_cuda_update(T& p, T g, T& m, T& v, T& vmax, const AdamCudaScalars<T>& s) {
  if (s.maximize) g = -g;
  if (s.has_wd) {
    if (s.decoupled) p = std::fma(-s.lr_wd, p, p);  // param -= lr * weight_decay * param
    else g = std::fma(p, s.wd, g);              // grad += param * weight_decay
  }
  m = std::fma(s.beta1, m, std::fma(-s.beta1, g, g));
  const T g2 = g * g;
  v = std::fma(s.beta2, v, std::fma(-s.beta2, g2, g2));
  if (s.amsgrad) vmax = std_max(vmax, v);
  const T denom = adam_denom(v, vmax, s.amsgrad, s.bc2_sqrt, s.eps);
  p = p - s.step_size * m / denom;
}

template <class T>
struct SgdCudaScalars {
  T wd, momentum, lr, one_minus_dampening;
  bool has_wd, has_momentum, nesterov, maximize;
};

template <class T>
WF_HOST_DEVICE SgdCudaScalars<T> sgd_cuda_scalars(double lr, double momentum, double dampening, double wd,
                                                  bool nesterov, bool maximize) {
  SgdCudaScalars<T> s;
  s.wd = T(wd);
  s.momentum = T(momentum);
  s.lr = T(lr);
  s.one_minus_dampening = T(1) - T(dampening);  // (1 - dampening) in T
  s.has_wd = s.wd != T(0);
  s.has_momentum = s.momentum != T(0);
  s.nesterov = nesterov;
  s.maximize = maximize;
  return s;
}

// One element. `first`: the momentum buffer is initialised to the (decayed) grad, as torch does on a param's
// first step; otherwise buf = momentum * buf + (1 - dampening) * grad with (1 - dampening) * grad the fused product.
template <class T>
WF_HOST_DEVICE void sgd_cuda_update(T& p, T g, T& buf, bool first, const SgdCudaScalars<T>& s) {
  if (s.maximize) g = -g;                       // g *= -1 before weight decay
  if (s.has_wd) g = std::fma(p, s.wd, g);       // g += weight_decay * p
  if (s.has_momentum) {
    buf = first ? g : std::fma(g, s.one_minus_dampening, buf * s.momentum);
    g = s.nesterov ? std::fma(buf, s.momentum, g) : buf;  // nesterov: g + momentum * buf
  }
  p = std::fma(g, -s.lr, p);                    // p -= lr * g
}

}  // namespace warmup_fused
