// Host side of the fused step: argument checks shared by every backend, and the launch sequence of the CUDA step
// (multi_tensor.h), written once for the CUDA op (cuda/optim_cuda.cu) and its CPU emulation
// (cpu/cuda_emulation.cpp), which differ only in how a "kernel" runs (the Launcher).
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_strided.h>

#include <memory>
#include <vector>

#include "multi_tensor.h"
#include "program.h"

namespace warmup_fused {

// The per-tensor lists of one op call. SGD: s1 = momentum buffers, s2 and s3 empty. masters: empty, or one float32
// master weight per param (an empty placeholder where a param has none); a param with a master has float32 states.
struct StepLists {
  at::TensorList params, grads, s1, s2, s3, steps, masters;
  at::IntArrayRef groups;
  bool adam;
};

inline void check_step_lists(const StepLists& l, int64_t groups, const c10::Device& device) {
  const size_t n = l.params.size();
  TORCH_CHECK_VALUE(l.grads.size() == n && l.steps.size() == n && l.groups.size() == n,
                    "params, grads, state_steps and tensor_group must have the same length (", n, ", ",
                    l.grads.size(), ", ", l.steps.size(), ", ", l.groups.size(), ")");
  if (l.adam) {
    TORCH_CHECK_VALUE(l.s1.size() == n && l.s2.size() == n, "exp_avgs and exp_avg_sqs need one tensor per param");
    TORCH_CHECK_VALUE(l.s3.empty() || l.s3.size() == n, "max_exp_avg_sqs must be empty or have one tensor per param");
  } else {
    TORCH_CHECK_VALUE(l.s1.empty() || l.s1.size() == n, "momentum_buffers must be empty or have one tensor per param");
  }
  TORCH_CHECK_VALUE(l.masters.empty() || l.masters.size() == n, "masters must be empty or have one tensor per param");
  const char* s1_name = l.adam ? "exp_avgs" : "momentum_buffers";
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& p = l.params[i];
    check_param(p, l.groups[i], groups, device, i);
    check_grad(p, l.grads[i], i);
    // States have the param's dtype, or float32 with a master (which only bf16/fp16 params take).
    const bool master = has_state(l.masters, i, p);
    const at::ScalarType state_dtype = master ? at::kFloat : p.scalar_type();
    if (master) {
      TORCH_CHECK_TYPE(p.scalar_type() == at::kHalf || p.scalar_type() == at::kBFloat16, "masters[", i,
                       "]: only float16 and bfloat16 params take a float32 master, params[", i, "] is ",
                       p.scalar_type());
      check_state(p, l.masters[i], "masters", i, at::kFloat);
    }
    if (l.adam || has_state(l.s1, i, p)) check_state(p, l.s1[i], s1_name, i, state_dtype);
    if (l.adam) check_state(p, l.s2[i], "exp_avg_sqs", i, state_dtype);
    if (has_state(l.s3, i, p)) check_state(p, l.s3[i], "max_exp_avg_sqs", i, state_dtype);
    TORCH_CHECK_TYPE(l.steps[i].scalar_type() == at::kFloat && l.steps[i].numel() == 1 &&
                         l.steps[i].device() == device,
                     "state_steps[", i, "] must be a float32 tensor with one element on ", device);
  }
}

// Grads in their param's memory layout, which the flat kernels need: the grads themselves where they already are
// (the common case), else copies. restore_grads writes unscaled copies back, as torch unscales p.grad in place.
inline std::vector<at::Tensor> conform_grads(at::TensorList params, at::TensorList grads) {
  std::vector<at::Tensor> out(grads.begin(), grads.end());
  for (size_t i = 0; i < grads.size(); ++i) {
    if (grads[i].is_non_overlapping_and_dense() && same_layout(grads[i], params[i])) continue;
    out[i] = at::empty_strided(params[i].sizes(), params[i].strides(), params[i].options());
    out[i].copy_(grads[i]);
  }
  return out;
}

inline void restore_grads(at::TensorList grads, const std::vector<at::Tensor>& used, bool scaled) {
  if (!scaled) return;
  for (size_t i = 0; i < grads.size(); ++i)
    if (!used[i].is_same(grads[i])) grads[i].copy_(used[i]);
}

inline const float* optional_ptr(const std::optional<at::Tensor>& t) {
  return (t.has_value() && t->defined()) ? t->data_ptr<float>() : nullptr;
}

// Group-kernel parameters from the (checked) per-device buffers.
inline GroupParams group_params(const at::Tensor& sched_step, const at::Tensor& scratch, const at::Tensor& ints,
                                const at::Tensor& vals, const at::Tensor& hparams,
                                const c10::List<std::optional<at::Tensor>>& lr_tensors,
                                const std::optional<at::Tensor>& found_inf) {
  GroupParams a{};
  a.ints = ints.data_ptr<int64_t>();
  a.vals = vals.data_ptr<double>();
  a.hparams = hparams.data_ptr<double>();
  a.cols = hparams.size(1);
  a.groups = hparams.size(0);
  a.sched_step = sched_step.data_ptr<int64_t>();
  a.scratch = scratch.data_ptr<double>();
  a.found_inf = optional_ptr(found_inf);
  int k = 0;
  for (size_t g = 0; g < lr_tensors.size(); ++g) {
    const std::optional<at::Tensor> t = lr_tensors.get(g);
    if (!t.has_value() || !t->defined()) continue;
    a.lr_tensor[k] = t->data_ptr();
    a.lr_tensor_is_double[k] = t->scalar_type() == at::kDouble;
    ++k;
  }
  return a;
}

inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// The CUDA step's kernel sequence (see multi_tensor.h), run by `L`: L.group(GroupParams),
// L.records<S, kAdam>(LaunchParams), L.update<S, kAdam, kMaster>(LaunchParams).
template <class Launcher>
void run_multi_tensor_step(Launcher& L, const StepLists& l, const at::Tensor& sched_step,
                           const at::Tensor& scratch, const at::Tensor& ints, const at::Tensor& vals,
                           const at::Tensor& hparams, const c10::List<std::optional<at::Tensor>>& lr_tensors,
                           const std::optional<at::Tensor>& grad_scale, const std::optional<at::Tensor>& found_inf,
                           const std::optional<at::Tensor>& clip_coef, int64_t rng_seed) {
  const c10::Device device = sched_step.device();
  check_step_buffers(sched_step, scratch, ints, vals, hparams, hparam_cols(l.adam), lr_tensors, grad_scale,
                     found_inf, clip_coef, device);
  check_step_lists(l, hparams.size(0), device);
  // Nothing was written up to here.
  const std::vector<at::Tensor> grads = conform_grads(l.params, l.grads);
  L.group(group_params(sched_step, scratch, ints, vals, hparams, lr_tensors, found_inf));

  auto lp = std::make_unique<LaunchParams>();  // ~17 KB: the kernels' parameter block
  lp->scratch = scratch.data_ptr<double>();
  lp->hparams = hparams.data_ptr<double>();
  lp->cols = hparams.size(1);
  lp->groups = hparams.size(0);
  lp->grad_scale = optional_ptr(grad_scale);
  lp->clip_coef = (clip_coef.has_value() && clip_coef->defined()) ? clip_coef->data_ptr<double>() : nullptr;
  lp->rng_seed = uint64_t(rng_seed);
  // One kernel per (dtype, with or without master): launches hold tensors of one kind.
  for (const auto& [dtype, with_master] : {std::pair{at::kFloat, false}, {at::kDouble, false}, {at::kHalf, false},
                                          {at::kBFloat16, false}, {at::kHalf, true}, {at::kBFloat16, true}}) {
    std::vector<int64_t> indices, numels(l.params.size());
    for (size_t i = 0; i < l.params.size(); ++i) {
      numels[i] = l.params[i].numel();
      if (l.params[i].scalar_type() == dtype && has_state(l.masters, i, l.params[i]) == with_master)
        indices.push_back(int64_t(i));
    }
    for (const LaunchPlan& plan : make_launches(indices, numels)) {
      lp->n_tensors = int32_t(plan.tensors.size());
      lp->n_blocks = plan.first_block.back();
      for (size_t j = 0; j < plan.first_block.size(); ++j) lp->first_block[j] = plan.first_block[j];
      for (size_t j = 0; j < plan.tensors.size(); ++j) {
        const int64_t i = plan.tensors[j];
        TensorMeta& t = lp->t[j];
        t.p = l.params[i].data_ptr();
        t.g = grads[i].data_ptr();
        t.s1 = has_state(l.s1, i, l.params[i]) ? l.s1[i].data_ptr() : nullptr;
        t.s2 = l.adam ? l.s2[i].data_ptr() : nullptr;
        t.s3 = has_state(l.s3, i, l.params[i]) ? l.s3[i].data_ptr() : nullptr;
        t.master = with_master ? l.masters[i].data_ptr<float>() : nullptr;
        t.step = l.steps[i].data_ptr<float>();
        t.numel = numels[i];
        t.group = int32_t(l.groups[i]);
        t.index = int32_t(i);
        t.aligned = aligned16(t.p) && aligned16(t.g) && (!t.s1 || aligned16(t.s1)) && (!t.s2 || aligned16(t.s2)) &&
                    (!t.s3 || aligned16(t.s3)) && (!t.master || aligned16(t.master));
      }
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "warmup_fused_step", [&] {
        if (l.adam) L.template records<scalar_t, true>(*lp);
        else L.template records<scalar_t, false>(*lp);
        if (lp->n_blocks == 0) return;
        if constexpr (std::is_same_v<scalar_t, at::Half> || std::is_same_v<scalar_t, at::BFloat16>) {
          if (with_master) {
            if (l.adam) L.template update<scalar_t, true, true>(*lp);
            else L.template update<scalar_t, false, true>(*lp);
            return;
          }
        }
        if (l.adam) L.template update<scalar_t, true, false>(*lp);
        else L.template update<scalar_t, false, false>(*lp);
      });
    }
  }
  restore_grads(l.grads, grads, grad_scale.has_value() && grad_scale->defined());
}

}  // namespace warmup_fused
