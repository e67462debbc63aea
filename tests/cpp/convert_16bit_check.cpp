// Every input of csrc/cpu/convert_16bit.h against the conversions torch's CPU kernels use: c10's scalar ones
// (the tails, the DEFAULT kernel) and the AVX2 vector loop's (F16C for float16, cvtfp32_bf16 for bfloat16: round
// to nearest even, a NaN stored as 0xFFFF). Prints the mismatch counts; run by tests/test_conversions.py.
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <immintrin.h>

#include <cstdio>

#include "../../csrc/cpu/convert_16bit.h"

using namespace warmup_fused;

__attribute__((target("f16c"))) uint16_t f16c_narrow(float f) { return _cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT); }
__attribute__((target("f16c"))) float f16c_widen(uint16_t h) { return _cvtsh_ss(h); }

int main() {
  long half_c10 = 0, half_f16c = 0, bf16_c10 = 0, bf16_vector = 0, widen = 0;
  for (uint64_t i = 0; i < (uint64_t(1) << 32); ++i) {
    const float f = f32_of(uint32_t(i));
    half_c10 += narrow_half<false>(f) != c10::detail::fp16_ieee_from_fp32_value(f);
    half_f16c += narrow_half<true>(f) != f16c_narrow(f);
    const uint16_t bf16 = c10::BFloat16(f).x;
    bf16_c10 += narrow_bf16<false>(f) != bf16;
    bf16_vector += narrow_bf16<true>(f) != (f != f ? 0xFFFF : bf16);
  }
  for (uint32_t h = 0; h < 65536; ++h) {
    const uint32_t ours = bits_of(widen_half(uint16_t(h)));
    widen += ours != bits_of(f16c_widen(uint16_t(h))) || ours != bits_of(c10::detail::fp16_ieee_to_fp32_value(h));
  }
  std::printf("half_c10=%ld half_f16c=%ld bf16_c10=%ld bf16_vector=%ld widen_half=%ld\n", half_c10, half_f16c,
              bf16_c10, bf16_vector, widen);
  return 0;
}
