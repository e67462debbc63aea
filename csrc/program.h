// Host-side checks shared by every op that takes a schedule program (see schedule.h for the layout).
#pragma once

#include <torch/library.h>
#include <ATen/core/Tensor.h>

#include "schedule.h"

namespace warmup_fused {

// Validates a CPU copy of a program: every offset in bounds, every op known, every stack effect legal.
// After this, schedule_lr cannot read outside the two arrays for any step.
void validate_program(const at::Tensor& ints, const at::Tensor& vals);

// Checks dtype/device/contiguity of a program's tensors against `device` (does not read them).
void check_program_tensors(const at::Tensor& ints, const at::Tensor& vals, const c10::Device& device);

// Per-tensor checks of the optimizer ops, shared by the CPU and CUDA implementations.
// params[i]: on `device`, float32/float64/float16/bfloat16, contiguous; its group index within `groups`.
inline void check_param(const at::Tensor& p, int64_t group, int64_t groups, const c10::Device& device, size_t i) {
  TORCH_CHECK_VALUE(p.device() == device, "params[", i, "] is on ", p.device(), "; this call runs on ", device);
  TORCH_CHECK_TYPE(p.scalar_type() == at::kFloat || p.scalar_type() == at::kDouble ||
                       p.scalar_type() == at::kHalf || p.scalar_type() == at::kBFloat16,
                   "params[", i, "]: unsupported dtype ", p.scalar_type(),
                   " (float32, float64, float16 and bfloat16 are supported)");
  TORCH_CHECK_VALUE(p.is_contiguous(), "params[", i, "] must be contiguous");
  TORCH_CHECK_VALUE(group >= 0 && group < groups, "tensor_group[", i, "] = ", group,
                    " is not a group of the schedule (", groups, " groups)");
}

// what[i] (a grad or a state): the device, dtype and shape of its param, contiguous.
inline void check_like(const at::Tensor& param, const at::Tensor& t, const char* what, size_t i) {
  TORCH_CHECK_VALUE(t.device() == param.device(), what, "[", i, "] is on ", t.device(), ", its param on ",
                    param.device());
  TORCH_CHECK_TYPE(t.scalar_type() == param.scalar_type(), what, "[", i, "] is ", t.scalar_type(), ", its param ",
                   param.scalar_type());
  TORCH_CHECK_VALUE(t.sizes() == param.sizes(), what, "[", i, "] has shape ", t.sizes(), ", its param ",
                    param.sizes());
  TORCH_CHECK_VALUE(t.is_contiguous(), what, "[", i, "] must be contiguous");
}

// Length checks of the optimizer ops' tensor lists.
inline void check_adam_lists(size_t n, size_t grads, size_t exp_avgs, size_t exp_avg_sqs, size_t max_exp_avg_sqs,
                             size_t state_steps, size_t tensor_group) {
  TORCH_CHECK_VALUE(grads == n && exp_avgs == n && exp_avg_sqs == n && state_steps == n,
                    "params, grads, exp_avgs, exp_avg_sqs and state_steps must have the same length");
  TORCH_CHECK_VALUE(max_exp_avg_sqs == 0 || max_exp_avg_sqs == n,
                    "max_exp_avg_sqs must be empty or have one tensor per param");
  TORCH_CHECK_VALUE(tensor_group == n, "tensor_group has ", tensor_group, " entries for ", n, " params");
}

inline void check_sgd_lists(size_t n, size_t grads, size_t momentum_buffers, size_t is_first_step,
                            size_t tensor_group) {
  TORCH_CHECK_VALUE(grads == n, "params and grads must have the same length");
  TORCH_CHECK_VALUE(momentum_buffers == 0 || momentum_buffers == n,
                    "momentum_buffers must be empty or have one tensor per param");
  TORCH_CHECK_VALUE(is_first_step == 0 || is_first_step == n, "is_first_step must be empty or have one flag per param");
  TORCH_CHECK_VALUE(tensor_group == n, "tensor_group has ", tensor_group, " entries for ", n, " params");
}

}  // namespace warmup_fused
