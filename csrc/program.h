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

// Length checks of the optimizer ops' tensor lists, shared by the CPU and CUDA implementations.
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
