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

// ------------------------------------------------------------------------------ checks of the optimizer ops
// Every check runs before the op writes anything: a rejected call leaves every tensor as it was.

// params[i]: on `device`, float32/float64/float16/bfloat16, dense and non-overlapping (any such layout:
// contiguous, channels_last, ...; the kernels update the underlying memory as a flat array); group in range.
inline void check_param(const at::Tensor& p, int64_t group, int64_t groups, const c10::Device& device, size_t i) {
  TORCH_CHECK_VALUE(p.device() == device, "params[", i, "] is on ", p.device(), "; this call runs on ", device);
  TORCH_CHECK_TYPE(p.scalar_type() == at::kFloat || p.scalar_type() == at::kDouble ||
                       p.scalar_type() == at::kHalf || p.scalar_type() == at::kBFloat16,
                   "params[", i, "]: unsupported dtype ", p.scalar_type(),
                   " (float32, float64, float16 and bfloat16 are supported)");
  TORCH_CHECK_VALUE(p.layout() == at::kStrided && p.is_non_overlapping_and_dense(), "params[", i,
                    "] must be dense and non-overlapping (contiguous, channels_last, ...)");
  TORCH_CHECK_VALUE(group >= 0 && group < groups, "tensor_group[", i, "] = ", group, " is not a param group (",
                    groups, " groups)");
}

// grads[i]: the device, dtype and shape of its param; any strided layout (the op conforms it to the param's).
inline void check_grad(const at::Tensor& param, const at::Tensor& g, size_t i) {
  TORCH_CHECK_TYPE(g.layout() == at::kStrided, "grads[", i, "] must be a dense (strided) tensor, got ", g.layout());
  TORCH_CHECK_VALUE(g.device() == param.device(), "grads[", i, "] is on ", g.device(), ", its param on ",
                    param.device());
  TORCH_CHECK_TYPE(g.scalar_type() == param.scalar_type(), "grads[", i, "] is ", g.scalar_type(), ", its param ",
                   param.scalar_type());
  TORCH_CHECK_VALUE(g.sizes() == param.sizes(), "grads[", i, "] has shape ", g.sizes(), ", its param ",
                    param.sizes());
}

// Same shape and the same memory order (strides of the dimensions that have more than one element).
inline bool same_layout(const at::Tensor& a, const at::Tensor& b) {
  if (a.sizes() != b.sizes()) return false;
  for (int64_t d = 0; d < a.dim(); ++d)
    if (a.size(d) > 1 && a.stride(d) != b.stride(d)) return false;
  return true;
}

// what[i] (a state): the device, shape and memory layout (strides) of its param, and `dtype` (the param's, or
// float32 for the master weight and the states of a param that has one).
inline void check_state(const at::Tensor& param, const at::Tensor& t, const char* what, size_t i,
                        at::ScalarType dtype) {
  TORCH_CHECK_VALUE(t.device() == param.device(), what, "[", i, "] is on ", t.device(), ", its param on ",
                    param.device());
  TORCH_CHECK_TYPE(t.scalar_type() == dtype, what, "[", i, "] is ", t.scalar_type(), ", expected ", dtype);
  TORCH_CHECK_VALUE(same_layout(t, param), what, "[", i, "] has shape ", t.sizes(), " and strides ", t.strides(),
                    ", its param ", param.sizes(), " and ", param.strides(), " (states share their param's layout)");
}

// A state list that only some params use: empty, or one tensor per param with an empty placeholder where absent.
inline bool has_state(at::TensorList list, size_t i, const at::Tensor& param) {
  return !list.empty() && (list[i].numel() > 0 || param.numel() == 0) && list[i].defined();
}

inline void check_scalar(const at::Tensor& t, at::ScalarType dtype, const c10::Device& device, const char* what) {
  TORCH_CHECK_TYPE(t.scalar_type() == dtype && t.numel() == 1 && t.device() == device, what, " must be a ", dtype,
                   " tensor with one element on ", device, ", got ", t.scalar_type(), " with ", t.numel(),
                   " elements on ", t.device());
}

// plateau_observe's arguments: a plateau block inside vals, a one-element float32/float64 metric on vals' device.
inline void check_plateau(const at::Tensor& vals, int64_t offset, const at::Tensor& metric) {
  TORCH_CHECK_TYPE(vals.scalar_type() == at::kDouble && vals.dim() == 1 && vals.is_contiguous(),
                   "vals must be a contiguous 1-D float64 tensor");
  TORCH_CHECK_VALUE(offset >= 0 && offset + kPlHeader <= vals.numel(), "offset ", offset,
                    " leaves no room for a plateau block in ", vals.numel(), " values");
  TORCH_CHECK_TYPE((metric.scalar_type() == at::kFloat || metric.scalar_type() == at::kDouble) &&
                       metric.numel() == 1 && metric.device() == vals.device(),
                   "metric must be a float32 or float64 tensor with one element on ", vals.device());
}

// The per-device buffers every step hands to the kernels (see multi_tensor.h for their layout).
void check_step_buffers(const at::Tensor& sched_step, const at::Tensor& scratch, const at::Tensor& ints,
                        const at::Tensor& vals, const at::Tensor& hparams, int64_t cols,
                        const c10::List<std::optional<at::Tensor>>& lr_tensors,
                        const std::optional<at::Tensor>& grad_scale, const std::optional<at::Tensor>& found_inf,
                        const std::optional<at::Tensor>& clip_coef, const c10::Device& device);

}  // namespace warmup_fused
