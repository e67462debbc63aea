// float16 / bfloat16 <-> float conversions of torch's CPU kernels, bit for bit (rounding to nearest even; a NaN
// stored as each of torch's loops stores it), written without branches so
// that GCC vectorises the loops that use them (c10's conversions branch). tests/test_conversions.py checks them
// against c10 and F16C on every input.
#pragma once

#include <c10/util/bit_cast.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#ifndef WF_INLINE
#if defined(__GNUC__)
#define WF_INLINE inline __attribute__((always_inline))
#else
#define WF_INLINE inline
#endif
#endif

namespace warmup_fused {

WF_INLINE float f32_of(uint32_t u) { return c10::bit_cast<float>(u); }
WF_INLINE uint32_t bits_of(float f) { return c10::bit_cast<uint32_t>(f); }
WF_INLINE uint32_t select_bits(bool c, uint32_t a, uint32_t b) {  // c ? a : b without a branch
  const uint32_t m = 0u - uint32_t(c);
  return (a & m) | (b & ~m);
}

// bfloat16 NaN: cvtfp32_bf16's 0xFFFF in the AVX2 vector loop, c10's 0x7FC0 elsewhere.
template <bool kVectorNan>
WF_INLINE uint16_t narrow_bf16(float f) {
  const uint32_t u = bits_of(f);
  const uint32_t rounded = (u + (((u >> 16) & 1u) + 0x7FFFu)) >> 16;
  return uint16_t(select_bits(f != f, kVectorNan ? 0xFFFFu : 0x7FC0u, rounded));
}

WF_INLINE float widen_half(uint16_t h) {  // exact, with no subnormal float arithmetic
  const uint32_t sign = uint32_t(h & 0x8000u) << 16, magnitude = h & 0x7FFFu;
  // normal, infinite, NaN: exponent and mantissa moved into float's fields with the exponent raised by 224, so that
  // half's 31 becomes float's 255, then scaled by 2^-112 (exact; a NaN quieted): a net rebias of 127 - 15
  const float normal = f32_of((magnitude << 13) + (224u << 23)) * 0x1.0p-112f;
  // subnormal: the mantissa m placed under 0.5's exponent is 0.5 + m * 2^-24; minus 0.5 leaves m * 2^-24 exactly
  const float subnormal = f32_of(magnitude | (126u << 23)) - 0.5f;
  return f32_of(sign | select_bits(magnitude < 0x0400u, bits_of(subnormal), bits_of(normal)));
}

// float16 NaN: F16C keeps the payload's top bits (torch's AVX2 kernel: the vector loop's and, through c10's
// float2half_scalar, the tail's conversions), c10's software conversion (the DEFAULT kernel) stores 0x7E00.
template <bool kF16c>
WF_INLINE uint16_t narrow_half(float f) {
  const uint32_t u = bits_of(f), sign = (u >> 16) & 0x8000u;
  // Rounding by the float adder: 4|f| plus 2^(e+15) (e: f's exponent, raised to half's subnormal exponent -14)
  // keeps 10 bits of 4|f| below the added bit, rounded to nearest even; the sum's exponent (rebiased by its field
  // bits) and those bits then add up to half's encoding, a carry included. |f| >= 2^16 overflows to inf at once.
  const float magnitude = std::abs(f) * 0x1.0p+112f * 0x1.0p-110f;
  const uint32_t exponent = std::max(u & 0x7F800000u, 113u << 23);
  const uint32_t sum = bits_of(f32_of(exponent + (15u << 23)) + magnitude);
  const uint32_t finite = ((sum >> 13) & 0x7C00u) + (sum & 0x0FFFu);
  const uint32_t nan = 0x7E00u | (kF16c ? (u >> 13) & 0x03FFu : 0u);
  return uint16_t(sign | select_bits(f != f, nan, finite));
}

}  // namespace warmup_fused
