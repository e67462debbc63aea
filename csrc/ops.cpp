// Every op schema of the library, in one block. Backends register their kernels in cpu/ and cuda/.
#include <Python.h>
#include <torch/library.h>

#include <sstream>

#include "multi_tensor.h"
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

// Every bound check is written so that it cannot overflow (a - b with both in [0, n] instead of a + b), since
// the words may be anything: this runs on untrusted programs (e.g. loaded from a checkpoint).
void validate_program(const at::Tensor& ints_t, const at::Tensor& vals_t) {
  check_program_tensors(ints_t, vals_t, c10::Device(c10::kCPU));
  const int64_t* ints = ints_t.data_ptr<int64_t>();
  const double* vals = vals_t.data_ptr<double>();
  const int64_t n_ints = ints_t.numel(), n_vals = vals_t.numel();
  // [index, index + len) lies within [0, n).
  auto within = [](int64_t index, int64_t len, int64_t n) { return index >= 0 && len >= 0 && index <= n && len <= n - index; };
  const int64_t groups = ints[0];
  TORCH_CHECK_VALUE(groups >= 1 && groups <= (n_ints - kHeaderWords) / kGroupWords, "bad group count ", groups);
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t* gh = ints + kHeaderWords + kGroupWords * g;
    const int64_t first = gh[0], count = gh[1], steps_per_epoch = gh[2];
    TORCH_CHECK_VALUE(steps_per_epoch >= 1, "group ", g, ": steps_per_epoch must be >= 1");
    TORCH_CHECK_VALUE(count >= 1 && first >= 0 && first <= n_ints && count <= (n_ints - first) / kPhaseWords,
                      "group ", g, ": phases out of bounds");
    for (int64_t p = 0; p < count; ++p) {
      const int64_t* ph = ints + first + p * kPhaseWords;
      TORCH_CHECK_VALUE(p == 0 ? ph[0] == 0 : ph[0] > ph[-kPhaseWords],
                        "group ", g, ": phase begins must start at 0 and increase");
      TORCH_CHECK_VALUE(ph[2] >= 1 && within(ph[1], ph[2], n_ints), "group ", g, " phase ", p, ": code out of bounds");
      TORCH_CHECK_VALUE(within(ph[3], ph[4], n_vals), "group ", g, " phase ", p, ": table out of bounds");
      int depth = 0;
      for (int64_t i = 0; i < ph[2]; ++i) {
        const int64_t op = ints[ph[1] + i] & 0xff, arg = ints[ph[1] + i] >> 8;
        int pops, pushes = 1;
        if (op <= kConst) pops = 0;
        else if (op == kSqrt || op == kRepeatMul || op == kCos || op == kExp || op == kLog || op == kTanh ||
                 op == kRoundF32) pops = 1;
        else if (op < kNumOps) pops = 2;
        else TORCH_CHECK_VALUE(false, "group ", g, " phase ", p, ": unknown opcode ", op);
        TORCH_CHECK_VALUE(op != kConst || within(arg, 1, n_vals), "group ", g, " phase ", p,
                          ": constant index out of bounds");
        if (op == kRepeatMul) {
          TORCH_CHECK_VALUE(within(arg, kRepeatHeaderWords + 1, n_vals), "group ", g, " phase ", p,
                            ": repeat_mul block out of bounds");
          const double settles = vals[arg + 1];
          TORCH_CHECK_VALUE(settles >= 0.0 && settles <= double(kRepeatMaxCount) && settles == std::floor(settles),
                            "group ", g, " phase ", p, ": repeat_mul fixed-point count ", settles,
                            " is not an integer in [0, ", kRepeatMaxCount, "]");
          const int64_t anchors = int64_t(settles) / kRepeatAnchorEvery + 1;
          TORCH_CHECK_VALUE(within(arg, kRepeatHeaderWords + anchors, n_vals), "group ", g, " phase ", p,
                            ": repeat_mul anchors out of bounds");
        }
        TORCH_CHECK_VALUE(depth >= pops, "group ", g, " phase ", p, ": stack underflow");
        depth += pushes - pops;
        TORCH_CHECK_VALUE(depth <= kStackDepth, "group ", g, " phase ", p, ": stack deeper than ", kStackDepth);
      }
      TORCH_CHECK_VALUE(depth == 1, "group ", g, " phase ", p, ": code must leave exactly one value");
    }
  }
}

void check_step_buffers(const at::Tensor& sched_step, const at::Tensor& scratch, const at::Tensor& ints,
                        const at::Tensor& vals, const at::Tensor& hparams, int64_t cols,
                        const c10::List<std::optional<at::Tensor>>& lr_tensors,
                        const std::optional<at::Tensor>& grad_scale, const std::optional<at::Tensor>& found_inf,
                        const std::optional<at::Tensor>& clip_coef, const c10::Device& device) {
  check_program_tensors(ints, vals, device);
  check_scalar(sched_step, at::kLong, device, "sched_step");
  TORCH_CHECK_TYPE(hparams.scalar_type() == at::kDouble && hparams.dim() == 2 && hparams.size(1) == cols &&
                       hparams.size(0) >= 1 && hparams.is_contiguous() && hparams.device() == device,
                   "hparams must be a contiguous float64 [groups, ", cols, "] tensor on ", device, ", got ",
                   hparams.scalar_type(), " ", hparams.sizes(), " on ", hparams.device());
  const int64_t groups = hparams.size(0);
  TORCH_CHECK_TYPE(scratch.scalar_type() == at::kDouble && scratch.dim() == 1 && scratch.is_contiguous() &&
                       scratch.numel() >= scratch_words(groups) && scratch.device() == device,
                   "scratch must be a contiguous float64 tensor of at least ", scratch_words(groups),
                   " elements on ", device);
  TORCH_CHECK_VALUE(lr_tensors.empty() || int64_t(lr_tensors.size()) == groups,
                    "lr_tensors must be empty or have one entry per group");
  int count = 0;
  for (size_t g = 0; g < lr_tensors.size(); ++g) {
    const std::optional<at::Tensor> t = lr_tensors.get(g);
    if (!t.has_value() || !t->defined()) continue;
    TORCH_CHECK_TYPE((t->scalar_type() == at::kFloat || t->scalar_type() == at::kDouble) && t->numel() == 1 &&
                         t->device() == device,
                     "lr_tensors[", g, "] must be a float32 or float64 tensor with one element on ", device);
    ++count;
  }
  TORCH_CHECK_VALUE(count <= kMaxLrTensors, "at most ", kMaxLrTensors, " param groups can take their lr from a tensor");
  if (grad_scale.has_value() && grad_scale->defined()) check_scalar(*grad_scale, at::kFloat, device, "grad_scale");
  if (found_inf.has_value() && found_inf->defined()) check_scalar(*found_inf, at::kFloat, device, "found_inf");
  if (clip_coef.has_value() && clip_coef->defined()) {
    check_scalar(*clip_coef, at::kDouble, device, "clip_coef");
    TORCH_CHECK_VALUE(!(grad_scale.has_value() && grad_scale->defined()),
                      "clip_coef and grad_scale cannot both be given: unscale the grads first (clip_grad_norm_ "
                      "takes the norm of unscaled grads)");
  }
}

// What Python needs of the layouts in multi_tensor.h, as "name=value;...".
std::string layout() {
  std::ostringstream out;
  out << "lr_source=" << kLrSource << ";host_lr=" << kHostLr << ";momentum_source=" << kMomentumSource
      << ";host_momentum=" << kHostMomentum << ";stochastic=" << kStochastic << ";beta2=" << kBeta2 << ";eps=" << kEps << ";weight_decay="
      << kWeightDecay << ";amsgrad=" << kAmsgrad << ";maximize=" << kMaximize << ";decoupled=" << kDecoupled << ";adam_cols=" << kAdamCols
      << ";dampening=" << kDampening << ";sgd_weight_decay=" << kSgdWeightDecay << ";nesterov=" << kNesterov
      << ";sgd_maximize=" << kSgdMaximize << ";sgd_cols=" << kSgdCols << ";lr_from_schedule=" << kLrFromSchedule
      << ";lr_from_host=" << kLrFromHost << ";lr_from_tensor=" << kLrFromTensor << ";scratch_lr=" << kScratchLr
      << ";scratch_fixed=" << scratch_words(0) << ";max_lr_tensors=" << kMaxLrTensors
      << ";plateau_header=" << kPlHeader
      << ";plateau_group_words=" << kPlGroupWords;
  return out.str();
}

}  // namespace warmup_fused

TORCH_LIBRARY(warmup_fused, m) {
  // lr(step) for every group: float64 [num_groups, len(steps)], computed by schedule.h on the steps' device.
  m.def("lr_at(Tensor ints, Tensor vals, Tensor steps, int num_groups) -> Tensor");
  // Raises if a (CPU) program could make schedule_lr read out of bounds.
  m.def("validate_program(Tensor ints, Tensor vals) -> ()");
  // "cuda=0|1;arch=<TORCH_CUDA_ARCH_LIST>" as built.
  m.def("build_info() -> str", [] { return std::string(WARMUP_FUSED_BUILD_INFO); });
  // ReduceLROnPlateau.step(metric) on the plateau block at vals[offset] (schedule.h), in place; metric: one float32
  // or float64 element on vals' device (read there: no host sync).
  m.def("plateau_observe(Tensor(a!) vals, int offset, Tensor metric) -> ()");
  // Layout constants shared with Python (multi_tensor.h), "name=value;...".
  m.def("layout() -> str", [] { return warmup_fused::layout(); });
  // --- optimizer ops (multi_tensor.h, optim_math.h) ---
  // One Adam/AdamW step over every param of every group on one device (AdamW where hparams[g, decoupled] != 0). Per group, the LR comes from the schedule
  // program at sched_step, the group's host value or lr_tensors[g] (hparams[g, lr_source]), beta1 from the host
  // value or the program's momentum channel; each group's LR is written to scratch (last_lr). Per param, the
  // float32 state_steps counter advances by one (as torch's _foreach_add_ before its kernel) and the update uses
  // it; a param whose counter was 0 starts from zero states. found_inf == 1 skips the update and leaves the
  // counters of the params as they were, but sched_step still advances by one.
  // hparams: float64 [G, adam_cols] (layout op); scratch: float64 (layout op); lr_tensors: empty or one per group.
  // max_exp_avg_sqs: empty, or one per param (empty placeholder where the group has no amsgrad).
  // masters: empty, or one float32 master weight per bf16/fp16 param (placeholder where absent): the update runs on
  // the master (float32 states), the param is the master rounded to nearest. clip_coef (float64, one element):
  // grads are multiplied by it as loaded, as clip_grad_norm_'s _foreach_mul_ would (not stored back; not with
  // grad_scale). Groups with hparams[g, stochastic] != 0 round bf16 params stochastically from rng_seed.
  m.def("adam_step(Tensor(a!)[] params, Tensor(b!)[] grads, Tensor(c!)[] exp_avgs, Tensor(d!)[] exp_avg_sqs, "
        "Tensor(e!)[] max_exp_avg_sqs, Tensor(f!)[] state_steps, Tensor(g!)[] masters, Tensor(h!) sched_step, "
        "Tensor(i!) scratch, Tensor prog_ints, Tensor prog_vals, Tensor hparams, Tensor?[] lr_tensors, "
        "int[] tensor_group, Tensor? grad_scale=None, Tensor? found_inf=None, Tensor? clip_coef=None, "
        "int rng_seed=0) -> ()");
  // One SGD step, same conventions. state_steps: per-param steps taken (0: the momentum buffer is initialised to
  // the decayed grad, as torch does on a param's first step). momentum_buffers: empty or one per param (empty
  // placeholder where the group has no momentum).
  m.def("sgd_step(Tensor(a!)[] params, Tensor(b!)[] grads, Tensor(c!)[] momentum_buffers, "
        "Tensor(d!)[] state_steps, Tensor(e!)[] masters, Tensor(f!) sched_step, Tensor(g!) scratch, "
        "Tensor prog_ints, Tensor prog_vals, Tensor hparams, Tensor?[] lr_tensors, int[] tensor_group, "
        "Tensor? grad_scale=None, Tensor? found_inf=None, Tensor? clip_coef=None, int rng_seed=0) -> ()");
  // The CUDA kernels' code run on CPU tensors (cpu/cuda_emulation.cpp), for tests without a GPU; reference=True
  // runs a plain per-element loop over optim_math.h's torch-CUDA math instead (the oracle).
  m.def("adam_step_emulated(Tensor(a!)[] params, Tensor(b!)[] grads, Tensor(c!)[] exp_avgs, "
        "Tensor(d!)[] exp_avg_sqs, Tensor(e!)[] max_exp_avg_sqs, Tensor(f!)[] state_steps, Tensor(g!)[] masters, "
        "Tensor(h!) sched_step, Tensor(i!) scratch, Tensor prog_ints, Tensor prog_vals, Tensor hparams, "
        "Tensor?[] lr_tensors, int[] tensor_group, Tensor? grad_scale=None, Tensor? found_inf=None, "
        "Tensor? clip_coef=None, int rng_seed=0, bool reference=False) -> ()");
  m.def("sgd_step_emulated(Tensor(a!)[] params, Tensor(b!)[] grads, Tensor(c!)[] momentum_buffers, "
        "Tensor(d!)[] state_steps, Tensor(e!)[] masters, Tensor(f!) sched_step, Tensor(g!) scratch, "
        "Tensor prog_ints, Tensor prog_vals, Tensor hparams, Tensor?[] lr_tensors, int[] tensor_group, "
        "Tensor? grad_scale=None, Tensor? found_inf=None, Tensor? clip_coef=None, int rng_seed=0, "
        "bool reference=False) -> ()");
}

TORCH_LIBRARY_IMPL(warmup_fused, CPU, m) {
  m.impl("validate_program", &warmup_fused::validate_program);
}
