// Every op schema of the library, in one block. Backends register their kernels in cpu/ and cuda/.
#include <Python.h>
#include <torch/library.h>

#include "program.h"

#ifndef WARMUP_FUSED_BUILD_INFO
#define WARMUP_FUSED_BUILD_INFO "cuda=0;arch="
#endif

// Importing warmup_fused._C runs the registrations below; the module itself has no functions.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}

namespace warmup_fused {

void check_program_tensors(const at::Tensor& ints, const at::Tensor& vals, const c10::Device& device) {
  TORCH_CHECK_TYPE(ints.scalar_type() == at::kLong, "schedule program ints must be int64, got ", ints.scalar_type());
  TORCH_CHECK_TYPE(vals.scalar_type() == at::kDouble, "schedule program vals must be float64, got ",
                   vals.scalar_type());
  TORCH_CHECK_VALUE(ints.dim() == 1 && vals.dim() == 1 && ints.is_contiguous() && vals.is_contiguous(),
                    "schedule program tensors must be 1-D and contiguous");
  TORCH_CHECK_VALUE(ints.device() == device && vals.device() == device, "schedule program is on ", ints.device(),
                    "/", vals.device(), " but the op runs on ", device);
  TORCH_CHECK_VALUE(ints.numel() >= kHeaderWords, "schedule program is empty");
}

void validate_program(const at::Tensor& ints_t, const at::Tensor& vals_t) {
  check_program_tensors(ints_t, vals_t, c10::Device(c10::kCPU));
  const int64_t* ints = ints_t.data_ptr<int64_t>();
  const int64_t n_ints = ints_t.numel(), n_vals = vals_t.numel();
  const int64_t groups = ints[0];
  TORCH_CHECK_VALUE(groups >= 1 && kHeaderWords + kGroupWords * groups <= n_ints, "bad group count ", groups);
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t* gh = ints + kHeaderWords + kGroupWords * g;
    const int64_t first = gh[0], count = gh[1], steps_per_epoch = gh[2];
    TORCH_CHECK_VALUE(steps_per_epoch >= 1, "group ", g, ": steps_per_epoch must be >= 1");
    TORCH_CHECK_VALUE(count >= 1 && first >= 0 && first + count * kPhaseWords <= n_ints,
                      "group ", g, ": phases out of bounds");
    for (int64_t p = 0; p < count; ++p) {
      const int64_t* ph = ints + first + p * kPhaseWords;
      TORCH_CHECK_VALUE(p == 0 ? ph[0] == 0 : ph[0] > ph[-kPhaseWords],
                        "group ", g, ": phase begins must start at 0 and increase");
      TORCH_CHECK_VALUE(ph[1] >= 0 && ph[2] >= 1 && ph[1] + ph[2] <= n_ints, "group ", g, " phase ", p,
                        ": code out of bounds");
      TORCH_CHECK_VALUE(ph[3] >= 0 && ph[4] >= 0 && ph[3] + ph[4] <= n_vals, "group ", g, " phase ", p,
                        ": table out of bounds");
      int depth = 0;
      for (int64_t i = 0; i < ph[2]; ++i) {
        const int64_t op = ints[ph[1] + i] & 0xff, arg = ints[ph[1] + i] >> 8;
        int pops, pushes = 1;
        if (op <= kConst) pops = 0;
        else if (op == kRepeatMul) pops = 3;
        else if (op == kSqrt || op == kCos || op == kExp || op == kLog || op == kTanh || op == kRoundF32) pops = 1;
        else if (op < kNumOps) pops = 2;
        else TORCH_CHECK_VALUE(false, "group ", g, " phase ", p, ": unknown opcode ", op);
        TORCH_CHECK_VALUE(op != kConst || (arg >= 0 && arg < n_vals), "constant index out of bounds");
        TORCH_CHECK_VALUE(depth >= pops, "group ", g, " phase ", p, ": stack underflow");
        depth += pushes - pops;
        TORCH_CHECK_VALUE(depth <= kStackDepth, "group ", g, " phase ", p, ": stack deeper than ", kStackDepth);
      }
      TORCH_CHECK_VALUE(depth == 1, "group ", g, " phase ", p, ": code must leave exactly one value");
    }
  }
}

}  // namespace warmup_fused

TORCH_LIBRARY(warmup_fused, m) {
  // lr(step) for every group: float64 [num_groups, len(steps)], computed by schedule.h on the steps' device.
  m.def("lr_at(Tensor ints, Tensor vals, Tensor steps, int num_groups) -> Tensor");
  // Raises if a (CPU) program could make schedule_lr read out of bounds.
  m.def("validate_program(Tensor ints, Tensor vals) -> ()");
  // "cuda=0|1;arch=<TORCH_CUDA_ARCH_LIST>" as built.
  m.def("build_info() -> str", [] { return std::string(WARMUP_FUSED_BUILD_INFO); });
  // --- optimizer ops (see optim_math.h) ---
  // One Adam/AdamW step over every param of every group on one device. The kernel reads sched_step, evaluates
  // lr = schedule_lr(prog, group, step) for each group (written to last_lr, float64 [G]), updates params and
  // states (per-param float32 state_steps incremented first, as torch does), then advances sched_step by 1.
  // hparams: float64 [G, 6] = beta1, beta2, eps, weight_decay, amsgrad, maximize. tensor_group[i]: param i's group.
  // max_exp_avg_sqs: empty, or one per param (read only for params of amsgrad groups). found_inf != 0 skips
  // the update (params, states, state_steps untouched) but still advances sched_step.
  m.def("adam_step(Tensor(a!)[] params, Tensor(b!)[] grads, Tensor(c!)[] exp_avgs, Tensor(d!)[] exp_avg_sqs, "
        "Tensor(e!)[] max_exp_avg_sqs, Tensor(f!)[] state_steps, Tensor(g!) sched_step, Tensor(h!) last_lr, "
        "Tensor prog_ints, Tensor prog_vals, Tensor hparams, int[] tensor_group, bool adamw, "
        "Tensor? grad_scale=None, Tensor? found_inf=None) -> ()");
  // One SGD step, same conventions. hparams: float64 [G, 5] = momentum, dampening, weight_decay, nesterov,
  // maximize. momentum_buffers: empty, or one per param (used for params of groups with momentum != 0).
  // is_first_step: empty, or one flag per param: the buffer is initialised to the (decayed) grad, as torch does.
  m.def("sgd_step(Tensor(a!)[] params, Tensor(b!)[] grads, Tensor(c!)[] momentum_buffers, Tensor(d!) sched_step, "
        "Tensor(e!) last_lr, Tensor prog_ints, Tensor prog_vals, Tensor hparams, int[] tensor_group, "
        "bool[] is_first_step, Tensor? grad_scale=None, Tensor? found_inf=None) -> ()");
}

TORCH_LIBRARY_IMPL(warmup_fused, CPU, m) {
  m.impl("validate_program", &warmup_fused::validate_program);
}
