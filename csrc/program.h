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

}  // namespace warmup_fused
