#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "../program.h"

namespace warmup_fused {
namespace {

at::Tensor lr_at_cpu(const at::Tensor& ints, const at::Tensor& vals, const at::Tensor& steps, int64_t num_groups) {
  validate_program(ints, vals);
  TORCH_CHECK_VALUE(num_groups == ints.data_ptr<int64_t>()[0], "num_groups=", num_groups,
                    " does not match the program's ", ints.data_ptr<int64_t>()[0]);
  TORCH_CHECK_TYPE(steps.scalar_type() == at::kLong, "steps must be int64, got ", steps.scalar_type());
  TORCH_CHECK_VALUE(steps.dim() == 1, "steps must be 1-D");
  const at::Tensor steps_c = steps.contiguous();
  const int64_t groups = num_groups, n = steps_c.numel();
  at::Tensor out = at::empty({groups, n}, steps.options().dtype(at::kDouble));
  const int64_t* p = ints.data_ptr<int64_t>();
  const double* v = vals.data_ptr<double>();
  const int64_t* s = steps_c.data_ptr<int64_t>();
  double* o = out.data_ptr<double>();
  at::parallel_for(0, groups * n, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) o[i] = schedule_lr(p, v, i / n, s[i % n]);
  });
  return out;
}

void plateau_observe_cpu(const at::Tensor& vals, int64_t offset, const at::Tensor& metric) {
  check_plateau(vals, offset, metric);
  const double current = metric.scalar_type() == at::kDouble ? *metric.data_ptr<double>()
                                                              : double(*metric.data_ptr<float>());
  plateau_observe(vals.data_ptr<double>() + offset, vals.numel() - offset, current);
}

}  // namespace

TORCH_LIBRARY_IMPL(warmup_fused, CPU, m) {
  m.impl("lr_at", &lr_at_cpu);
  m.impl("plateau_observe", &plateau_observe_cpu);
}

}  // namespace warmup_fused
