// CUDA kernels of adam_step / sgd_step: ONE launch updates every tensor of every param group on a device.
//
// Host side: a table of tensors (pointers, numel, group, dtype) and a list of chunks is built and copied to the
// device only when the set of tensors (their data_ptrs, sizes, dtypes, groups) changes; it is cached by that key,
// so steady-state steps (and CUDA-graph capture) launch one kernel with no host<->device traffic and no sync.
// Device side: each block takes one chunk; thread 0 reads the schedule counter, evaluates its group's LR in
// double with schedule.h and the tensor's bias corrections, then all threads update the chunk with
// optim_math.h's torch-CUDA mirror. The counters are advanced after every block has read them: the last block
// to finish (atomic counter + __threadfence) increments the per-param steps and sched_step and writes last_lr.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <cstring>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "../optim_math.h"
#include "../program.h"

namespace warmup_fused {
namespace {

constexpr int kThreads = 512;
constexpr int64_t kChunkElems = 16384;

enum DType : int32_t { kF32 = 0, kF64, kF16, kBF16 };

struct Entry {
  void* p;
  void* g;
  void* s1;  // exp_avg | momentum buffer
  void* s2;  // exp_avg_sq
  void* s3;  // max_exp_avg_sq
  float* step;
  int64_t numel;
  int32_t group;
  int32_t dtype;
  int32_t first;  // SGD: buffer not initialised yet
  int32_t pad;
};

struct Chunk {
  int64_t tensor;
  int64_t start;
};

struct Table {
  at::Tensor bytes;    // Entry[n] then Chunk[c] on the device
  at::Tensor counter;  // int32 blocks-done counter (reset by the last block)
  int64_t n = 0, chunks = 0;
};

template <class S>
__device__ __forceinline__ auto to_op(S x) {
  if constexpr (std::is_same_v<S, double>) return x;
  else return static_cast<float>(x);
}

struct LaunchArgs {
  const Entry* entries;
  const Chunk* chunks;
  int64_t n_chunks, n_entries;
  const int64_t* ints;
  const double* vals;
  const double* hparams;
  int64_t* sched_step;
  double* last_lr;
  int64_t groups;
  const float* grad_scale;
  const float* found_inf;
  int* done;
  bool adamw;
};

// Called by every block once its chunk is done: the last one advances the counters.
__device__ void finish_block(const LaunchArgs& a, bool skip, bool bump_steps) {
  __shared__ bool last;
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence();
    last = atomicAdd(a.done, 1) == int(gridDim.x) - 1;
  }
  __syncthreads();
  if (!last) return;
  __threadfence();
  const int64_t step = *a.sched_step;
  for (int64_t g = threadIdx.x; g < a.groups; g += blockDim.x)
    a.last_lr[g] = schedule_lr(a.ints, a.vals, g, step);
  if (bump_steps && !skip)
    for (int64_t i = threadIdx.x; i < a.n_entries; i += blockDim.x)
      if (a.entries[i].step) *a.entries[i].step = *a.entries[i].step + 1.0f;
  __syncthreads();
  if (threadIdx.x == 0) {
    *a.sched_step = step + 1;
    *a.done = 0;
  }
}

template <class S, bool kAdamW>
__device__ void adam_chunk(const Entry& e, int64_t start, double lr, const double* h, const float* gs) {
  using T = std::conditional_t<std::is_same_v<S, double>, double, float>;
  const auto s = adam_cuda_scalars<T>(lr, h[kBeta1], h[kBeta2], h[kEps], h[kWeightDecay],
                                      h[kAmsgrad] != 0.0 && e.s3 != nullptr, h[kMaximize] != 0.0, *e.step + 1.0f);
  // Distinct tensors (torch gives each param, grad and state its own storage): __restrict__ lets the
  // unrolled loop issue the next elements' loads before this element's stores.
  S* __restrict__ p = static_cast<S*>(e.p);
  S* __restrict__ g = static_cast<S*>(e.g);
  S* __restrict__ m = static_cast<S*>(e.s1);
  S* __restrict__ v = static_cast<S*>(e.s2);
  S* __restrict__ vm = static_cast<S*>(e.s3);
  const int64_t end = start + kChunkElems < e.numel ? start + kChunkElems : e.numel;
#pragma unroll 4
  for (int64_t i = start + threadIdx.x; i < end; i += blockDim.x) {
    T gi = T(to_op(g[i]));
    if (gs) {
      gi = gi / T(*gs);
      g[i] = S(gi);
    }
    T pi = T(to_op(p[i])), mi = T(to_op(m[i])), vi = T(to_op(v[i]));
    T vmi = s.amsgrad ? T(to_op(vm[i])) : T(0);
    adam_cuda_update<T, kAdamW>(pi, gi, mi, vi, vmi, s);
    p[i] = S(pi);
    m[i] = S(mi);
    v[i] = S(vi);
    if (s.amsgrad) vm[i] = S(vmi);
  }
}

template <class S>
__device__ void sgd_chunk(const Entry& e, int64_t start, double lr, const double* h, const float* gs) {
  using T = std::conditional_t<std::is_same_v<S, double>, double, float>;
  S* __restrict__ p = static_cast<S*>(e.p);
  S* __restrict__ g = static_cast<S*>(e.g);
  S* __restrict__ b = static_cast<S*>(e.s1);
  const bool has_m = h[kMomentum] != 0.0 && e.s1 != nullptr;
  const int64_t end = start + kChunkElems < e.numel ? start + kChunkElems : e.numel;
#pragma unroll 4
  for (int64_t i = start + threadIdx.x; i < end; i += blockDim.x) {
    T gi = T(to_op(g[i]));
    if (gs) {
      gi = T(double(gi) / double(*gs));  // torch: g /= static_cast<double>(*grad_scale_ptr)
      g[i] = S(gi);
    }
    T pi = T(to_op(p[i]));
    T bi = (has_m && !e.first) ? T(to_op(b[i])) : T(0);
    sgd_cuda_update<T>(pi, gi, bi, e.first != 0, lr, has_m ? h[kMomentum] : 0.0, h[kDampening], h[kSgdWeightDecay],
                       h[kNesterov] != 0.0, h[kSgdMaximize] != 0.0);
    p[i] = S(pi);
    if (has_m) b[i] = S(bi);
  }
}

template <bool kAdam>
__global__ void __launch_bounds__(kThreads) optim_kernel(LaunchArgs a) {
  const bool skip = a.found_inf && *a.found_inf != 0.0f;
  if (!skip && blockIdx.x < a.n_chunks) {
    const Chunk c = a.chunks[blockIdx.x];
    const Entry e = a.entries[c.tensor];
    __shared__ double lr;
    if (threadIdx.x == 0) lr = schedule_lr(a.ints, a.vals, e.group, *a.sched_step);
    __syncthreads();
    const double* h = a.hparams + e.group * (kAdam ? kAdamHparams : kSgdHparams);
    if constexpr (kAdam) {
      switch (e.dtype) {
        case kF32: a.adamw ? adam_chunk<float, true>(e, c.start, lr, h, a.grad_scale)
                           : adam_chunk<float, false>(e, c.start, lr, h, a.grad_scale); break;
        case kF64: a.adamw ? adam_chunk<double, true>(e, c.start, lr, h, a.grad_scale)
                           : adam_chunk<double, false>(e, c.start, lr, h, a.grad_scale); break;
        case kF16: a.adamw ? adam_chunk<c10::Half, true>(e, c.start, lr, h, a.grad_scale)
                           : adam_chunk<c10::Half, false>(e, c.start, lr, h, a.grad_scale); break;
        default: a.adamw ? adam_chunk<c10::BFloat16, true>(e, c.start, lr, h, a.grad_scale)
                         : adam_chunk<c10::BFloat16, false>(e, c.start, lr, h, a.grad_scale); break;
      }
    } else {
      switch (e.dtype) {
        case kF32: sgd_chunk<float>(e, c.start, lr, h, a.grad_scale); break;
        case kF64: sgd_chunk<double>(e, c.start, lr, h, a.grad_scale); break;
        case kF16: sgd_chunk<c10::Half>(e, c.start, lr, h, a.grad_scale); break;
        default: sgd_chunk<c10::BFloat16>(e, c.start, lr, h, a.grad_scale); break;
      }
    }
  }
  finish_block(a, skip, kAdam);
}

// ------------------------------------------------------------------------------------------------- host

// The kernel's dtype switch (params were validated by check_param).
int32_t dtype_code(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return kF32;
    case at::kDouble: return kF64;
    case at::kHalf: return kF16;
    default: return kBF16;
  }
}

// Returns the cached device table for these entries (built and uploaded only when they change).
Table& get_table(const std::vector<Entry>& entries, const c10::Device& device) {
  static std::mutex mu;
  static std::unordered_map<std::string, Table> cache;
  std::string key(reinterpret_cast<const char*>(entries.data()), entries.size() * sizeof(Entry));
  key += std::to_string(device.index());
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  // Tables are never evicted: a captured CUDA graph keeps their device addresses, so freeing one would let a
  // replay read reused memory. Each is a few dozen bytes per tensor; a new one appears only when parameter or
  // state storage is reallocated (or SGD's first step), which a captured training loop does not do.
  std::vector<Chunk> chunks;
  for (size_t i = 0; i < entries.size(); ++i)
    for (int64_t s = 0; s < entries[i].numel; s += kChunkElems) chunks.push_back({int64_t(i), s});
  const int64_t bytes = int64_t(entries.size() * sizeof(Entry) + chunks.size() * sizeof(Chunk));
  at::Tensor host = at::empty({std::max<int64_t>(bytes, 1)}, at::TensorOptions().dtype(at::kByte));
  if (!entries.empty()) std::memcpy(host.data_ptr(), entries.data(), entries.size() * sizeof(Entry));
  if (!chunks.empty())
    std::memcpy(static_cast<char*>(host.data_ptr()) + entries.size() * sizeof(Entry), chunks.data(),
                chunks.size() * sizeof(Chunk));
  Table t;
  t.bytes = host.to(device);
  t.counter = at::zeros({1}, at::TensorOptions().dtype(at::kInt).device(device));
  t.n = int64_t(entries.size());
  t.chunks = int64_t(chunks.size());
  return cache.emplace(std::move(key), std::move(t)).first->second;
}

void launch(bool adam, std::vector<Entry>& entries, const c10::Device& device, const at::Tensor& sched_step,
            const at::Tensor& last_lr, const at::Tensor& ints, const at::Tensor& vals, const at::Tensor& hparams,
            int64_t k, bool adamw, const std::optional<at::Tensor>& grad_scale,
            const std::optional<at::Tensor>& found_inf) {
  check_program_tensors(ints, vals, device);
  const int64_t groups = hparams.size(0);
  TORCH_CHECK_TYPE(sched_step.scalar_type() == at::kLong && sched_step.numel() == 1 && sched_step.device() == device,
                   "sched_step must be an int64 tensor with one element on ", device);
  TORCH_CHECK_TYPE(last_lr.scalar_type() == at::kDouble && last_lr.numel() == groups && last_lr.is_contiguous() &&
                       last_lr.device() == device,
                   "last_lr must be a contiguous float64 tensor with one element per group on ", device);
  TORCH_CHECK_TYPE(hparams.scalar_type() == at::kDouble && hparams.dim() == 2 && hparams.size(1) == k &&
                       hparams.is_contiguous() && hparams.device() == device,
                   "hparams must be a contiguous float64 [G, ", k, "] tensor on ", device);
  auto scalar = [&](const std::optional<at::Tensor>& t, const char* name) -> const float* {
    if (!t.has_value() || !t->defined()) return nullptr;
    TORCH_CHECK_TYPE(t->scalar_type() == at::kFloat && t->numel() == 1 && t->device() == device, name,
                     " must be a float32 tensor with one element on ", device);
    return t->data_ptr<float>();
  };
  Table& table = get_table(entries, device);
  LaunchArgs a;
  const auto* base = static_cast<const char*>(table.bytes.data_ptr());
  a.entries = reinterpret_cast<const Entry*>(base);
  a.chunks = reinterpret_cast<const Chunk*>(base + table.n * sizeof(Entry));
  a.n_chunks = table.chunks;
  a.n_entries = table.n;
  a.ints = ints.data_ptr<int64_t>();
  a.vals = vals.data_ptr<double>();
  a.hparams = hparams.data_ptr<double>();
  a.sched_step = sched_step.data_ptr<int64_t>();
  a.last_lr = last_lr.data_ptr<double>();
  a.groups = groups;
  a.grad_scale = scalar(grad_scale, "grad_scale");
  a.found_inf = scalar(found_inf, "found_inf");
  a.done = table.counter.data_ptr<int>();
  a.adamw = adamw;
  const int64_t blocks = std::max<int64_t>(table.chunks, 1);
  TORCH_CHECK_VALUE(blocks < (int64_t(1) << 31), "too many chunks");
  auto stream = c10::cuda::getCurrentCUDAStream(device.index());
  if (adam) optim_kernel<true><<<unsigned(blocks), kThreads, 0, stream>>>(a);
  else optim_kernel<false><<<unsigned(blocks), kThreads, 0, stream>>>(a);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void adam_step_cuda(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                    at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs, at::TensorList state_steps,
                    const at::Tensor& sched_step, const at::Tensor& last_lr, const at::Tensor& ints,
                    const at::Tensor& vals, const at::Tensor& hparams, at::IntArrayRef tensor_group, bool adamw,
                    const std::optional<at::Tensor>& grad_scale, const std::optional<at::Tensor>& found_inf) {
  const size_t n = params.size();
  check_adam_lists(n, grads.size(), exp_avgs.size(), exp_avg_sqs.size(), max_exp_avg_sqs.size(), state_steps.size(),
                   tensor_group.size());
  const c10::Device device = sched_step.device();
  const c10::cuda::CUDAGuard guard(device);
  std::vector<Entry> entries(n);
  for (size_t i = 0; i < n; ++i) {
    check_param(params[i], tensor_group[i], hparams.size(0), device, i);
    check_like(params[i], grads[i], "grads", i);
    check_like(params[i], exp_avgs[i], "exp_avgs", i);
    check_like(params[i], exp_avg_sqs[i], "exp_avg_sqs", i);
    const bool ams = !max_exp_avg_sqs.empty() && max_exp_avg_sqs[i].numel() == params[i].numel() &&
                     params[i].numel() > 0;
    if (ams) check_like(params[i], max_exp_avg_sqs[i], "max_exp_avg_sqs", i);
    TORCH_CHECK_TYPE(state_steps[i].scalar_type() == at::kFloat && state_steps[i].numel() == 1 &&
                         state_steps[i].device() == device,
                     "state_steps[", i, "] must be a float32 tensor with one element on ", device);
    entries[i] = {params[i].data_ptr(), grads[i].data_ptr(), exp_avgs[i].data_ptr(), exp_avg_sqs[i].data_ptr(),
                  ams ? max_exp_avg_sqs[i].data_ptr() : nullptr, state_steps[i].data_ptr<float>(),
                  params[i].numel(), int32_t(tensor_group[i]), dtype_code(params[i]), 0, 0};
  }
  launch(true, entries, device, sched_step, last_lr, ints, vals, hparams, kAdamHparams, adamw, grad_scale,
         found_inf);
}

void sgd_step_cuda(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,
                   const at::Tensor& sched_step, const at::Tensor& last_lr, const at::Tensor& ints,
                   const at::Tensor& vals, const at::Tensor& hparams, at::IntArrayRef tensor_group,
                   c10::List<bool> is_first_step, const std::optional<at::Tensor>& grad_scale,
                   const std::optional<at::Tensor>& found_inf) {
  const size_t n = params.size();
  check_sgd_lists(n, grads.size(), momentum_buffers.size(), is_first_step.size(), tensor_group.size());
  const c10::Device device = sched_step.device();
  const c10::cuda::CUDAGuard guard(device);
  std::vector<Entry> entries(n);
  for (size_t i = 0; i < n; ++i) {
    check_param(params[i], tensor_group[i], hparams.size(0), device, i);
    check_like(params[i], grads[i], "grads", i);
    const bool has_buf = !momentum_buffers.empty() && momentum_buffers[i].numel() == params[i].numel() &&
                         params[i].numel() > 0;
    if (has_buf) check_like(params[i], momentum_buffers[i], "momentum_buffers", i);
    entries[i] = {params[i].data_ptr(), grads[i].data_ptr(), has_buf ? momentum_buffers[i].data_ptr() : nullptr,
                  nullptr, nullptr, nullptr, params[i].numel(), int32_t(tensor_group[i]), dtype_code(params[i]),
                  is_first_step.size() ? int32_t(bool(is_first_step.get(i))) : 0, 0};
  }
  launch(false, entries, device, sched_step, last_lr, ints, vals, hparams, kSgdHparams, false, grad_scale,
         found_inf);
}

}  // namespace

TORCH_LIBRARY_IMPL(warmup_fused, CUDA, m) {
  m.impl("adam_step", &adam_step_cuda);
  m.impl("sgd_step", &sgd_step_cuda);
}

}  // namespace warmup_fused
