// Registers the CUDA kernels for the itr_kernels ops: checks, device guard, the current stream,
// outputs and workspace; the kernels themselves live in the csrc/cuda/*.cu files.
// Built with -DITR_CUDA_EMU (csrc/cuda_emu/), the same code registers the kernels run by the CPU
// emulation of CUDA for the itr_kernels_emu ops, on CPU tensors.
#include <ATen/ATen.h>
#include <torch/library.h>
#if defined(ITR_CUDA_EMU)
#include "cuda_emu/runtime.h"
#else
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include <cmath>
#include <limits>
#include <tuple>

#include "checks.h"
#include "cuda/launchers.h"

#if defined(ITR_CUDA_EMU)
#define ITR_OPS_NAMESPACE itr_kernels_emu
#define ITR_OPS_DISPATCH_KEY CPU
#define ITR_CUDA_CHECK(expr) ::itr::emu::check((expr), #expr)
#else
#define ITR_OPS_NAMESPACE itr_kernels
#define ITR_OPS_DISPATCH_KEY CUDA
#define ITR_CUDA_CHECK(expr) C10_CUDA_CHECK(expr)
#endif

namespace itr {
namespace cuda {
namespace {

#if defined(ITR_CUDA_EMU)
// The emulation runs launches in order on the calling thread: no device, no stream.
struct DeviceGuard {
  explicit DeviceGuard(c10::Device) {}
};
cudaStream_t current_stream() { return nullptr; }
#else
using DeviceGuard = c10::cuda::CUDAGuard;
cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream(); }
#endif

Dtype dtype_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kDouble: return Dtype::kFloat64;
    case at::kFloat: return Dtype::kFloat32;
    case at::kHalf: return Dtype::kFloat16;
    case at::kBFloat16: return Dtype::kBFloat16;
    default: TORCH_CHECK_TYPE(false, "unsupported dtype ", t.scalar_type());
  }
}

// Scores are read through their strides: scores.T (the text-to-image direction) is not copied.
Matrix matrix_of(const at::Tensor& scores) {
  return Matrix{scores.const_data_ptr(), dtype_of(scores), scores.size(0), scores.size(1), scores.stride(0),
                scores.stride(1)};
}

const bool* valid_ptr(const at::Tensor& v) { return v.defined() ? v.const_data_ptr<bool>() : nullptr; }

// Each row's candidates in the CPU ops' order (ranks_before): valid ones by relevance descending,
// NaN last among them, ties to the lower column, then the masked ones; and how many are valid.
// Two stable sorts: by relevance (NaN and masked entries as 0, so they keep column order), then by
// class (0: valid, 1: valid NaN, 2: masked), which keeps the first order within each class.
// (One descending sort would put NaN first, and masked-as--inf would tie with a valid -inf.)
std::tuple<at::Tensor, at::Tensor> relevance_order(const at::Tensor& R, const at::Tensor& V) {
  at::Tensor cls = R.isnan().to(at::kByte);
  if (V.defined()) cls = cls.masked_fill(V.logical_not(), 2);
  const at::Tensor by_relevance =
      std::get<1>(R.masked_fill(cls != 0, 0).sort(/*stable=*/true, /*dim=*/1, /*descending=*/true));
  // all three arguments: sort(true, 1) would resolve to sort(dim = 1, descending = true)
  const at::Tensor by_class =
      std::get<1>(cls.gather(1, by_relevance).sort(/*stable=*/true, /*dim=*/1, /*descending=*/false));
  const at::Tensor order = by_relevance.gather(1, by_class).contiguous();
  const at::Tensor n_valid =
      (V.defined() ? V.sum(1) : at::full({R.size(0)}, R.size(1), R.options().dtype(at::kLong))).to(at::kLong);
  return {order, n_valid};
}

at::Tensor smooth_rank_cuda(const at::Tensor& scores, const c10::optional<at::Tensor>& valid, double tau) {
  check_smooth_rank_args(scores, valid, tau);
  const DeviceGuard guard(scores.device());
  const at::Tensor V = valid.has_value() ? valid->contiguous() : at::Tensor();
  at::Tensor out = at::empty(scores.sizes(), scores.options());
  ITR_CUDA_CHECK(itr::cuda::smooth_rank(matrix_of(scores), valid_ptr(V), tau, out.mutable_data_ptr(),
                                        current_stream()));
  return out;
}

at::Tensor smooth_rank_backward_cuda(const at::Tensor& grad, const at::Tensor& scores,
                                     const c10::optional<at::Tensor>& valid, double tau) {
  check_smooth_rank_args(scores, valid, tau);
  check_like_scores(grad, scores, "grad");
  const DeviceGuard guard(scores.device());
  const at::Tensor V = valid.has_value() ? valid->contiguous() : at::Tensor();
  const at::Tensor G = grad.to(scores.scalar_type()).contiguous();
  at::Tensor out = at::empty(scores.sizes(), scores.options());
  ITR_CUDA_CHECK(itr::cuda::smooth_rank_backward(matrix_of(scores), valid_ptr(V), G.const_data_ptr(), dtype_of(G),
                                                 tau, out.mutable_data_ptr(), current_stream()));
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> smooth_ndcg_cuda(const at::Tensor& scores, const at::Tensor& relevance,
                                                                const c10::optional<at::Tensor>& valid, double tau,
                                                                int64_t k, bool linear_gain, bool compute_grad) {
  check_smooth_ndcg_args(scores, relevance, valid, tau);
  const DeviceGuard guard(scores.device());
  const int64_t Q = scores.size(0), N = scores.size(1);
  const auto acc_dtype = scores.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor V = valid.has_value() ? valid->contiguous() : at::Tensor();
  const at::Tensor R = relevance.to(acc_dtype).contiguous();
  // Gain set and ideal order: the first min(k, n_valid) of the relevance order.
  auto [order, set_size] = relevance_order(R, V);
  if (k > 0) set_size = set_size.clamp_max(k);
  set_size = set_size.contiguous();

  at::Tensor loss = at::zeros({Q}, scores.options());
  at::Tensor idcg = at::zeros({Q}, scores.options().dtype(acc_dtype));
  at::Tensor grad = at::zeros(compute_grad ? scores.sizes() : at::IntArrayRef{0}, scores.options());
  at::Tensor work = at::empty({3, Q, N}, scores.options().dtype(acc_dtype));
  ITR_CUDA_CHECK(itr::cuda::smooth_ndcg(matrix_of(scores), valid_ptr(V), R.const_data_ptr(),
                                        order.const_data_ptr<int64_t>(), set_size.const_data_ptr<int64_t>(), tau,
                                        linear_gain, work.mutable_data_ptr(), loss.mutable_data_ptr(),
                                        idcg.mutable_data_ptr(), compute_grad ? grad.mutable_data_ptr() : nullptr,
                                        current_stream()));
  return {loss, idcg, grad};
}

at::ScalarType acc_type(const at::Tensor& scores) {
  return scores.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

at::Tensor relevance_acc(const c10::optional<at::Tensor>& relevance, const at::Tensor& scores) {
  return relevance.has_value() ? relevance->to(acc_type(scores)).contiguous() : at::Tensor();
}

std::tuple<at::Tensor, at::Tensor> triplet_sn_cuda(const at::Tensor& scores, const c10::optional<at::Tensor>& relevance,
                                                   double margin, double temperature, double rho) {
  check_triplet_sn_args(scores, relevance, margin, temperature, rho);
  const DeviceGuard guard(scores.device());
  const int64_t B = scores.size(0);
  const at::Tensor R = relevance_acc(relevance, scores);
  at::Tensor loss = at::empty({2, B}, scores.options());
  at::Tensor stats = at::empty({2, 3, B}, scores.options().dtype(acc_type(scores)));
  ITR_CUDA_CHECK(itr::cuda::triplet_sn(matrix_of(scores), R.defined() ? R.const_data_ptr() : nullptr, margin,
                                       temperature, rho, loss.mutable_data_ptr(), stats.mutable_data_ptr(),
                                       current_stream()));
  return {loss, stats};
}

at::Tensor triplet_sn_backward_cuda(const at::Tensor& grad, const at::Tensor& scores,
                                    const c10::optional<at::Tensor>& relevance, const at::Tensor& stats, double margin,
                                    double temperature, double rho) {
  check_triplet_sn_backward_args(grad, scores, relevance, stats, margin, temperature, rho);
  const int64_t B = scores.size(0);
  const DeviceGuard guard(scores.device());
  const at::Tensor R = relevance_acc(relevance, scores);
  const at::Tensor G = grad.to(acc_type(scores)).contiguous();
  const at::Tensor St = stats.to(acc_type(scores)).contiguous();
  at::Tensor out = at::empty({B, B}, scores.options());
  ITR_CUDA_CHECK(itr::cuda::triplet_sn_backward(matrix_of(scores), R.defined() ? R.const_data_ptr() : nullptr,
                                                G.const_data_ptr(), St.const_data_ptr(), temperature, rho,
                                                out.mutable_data_ptr(), current_stream()));
  return out;
}

// The positive columns as int64 (the Python API checked their range; the kernels give a NaN loss
// for an index out of range rather than read outside the matrix).
at::Tensor positives_long(const c10::optional<at::Tensor>& positives) {
  return positives.has_value() ? positives->to(at::kLong).contiguous() : at::Tensor();
}

const int64_t* long_ptr(const at::Tensor& t) { return t.defined() ? t.const_data_ptr<int64_t>() : nullptr; }

std::tuple<at::Tensor, at::Tensor> infonce_cuda(const at::Tensor& scores, const c10::optional<at::Tensor>& positives,
                                                double temperature) {
  check_infonce_args(scores, positives, temperature);
  const DeviceGuard guard(scores.device());
  const int64_t Q = scores.size(0), D = query_directions(positives);
  const at::Tensor P = positives_long(positives);
  at::Tensor loss = at::empty({D, Q}, scores.options());
  at::Tensor stats = at::empty({D, 3, Q}, scores.options().dtype(acc_type(scores)));
  at::Tensor work = at::empty({itr::cuda::infonce_work_bytes(matrix_of(scores), !P.defined())},
                              scores.options().dtype(at::kByte));
  ITR_CUDA_CHECK(itr::cuda::infonce(matrix_of(scores), long_ptr(P), temperature, work.mutable_data_ptr(),
                                    loss.mutable_data_ptr(), stats.mutable_data_ptr(), current_stream()));
  return {loss, stats};
}

at::Tensor infonce_backward_cuda(const at::Tensor& grad, const at::Tensor& scores,
                                 const c10::optional<at::Tensor>& positives, const at::Tensor& stats,
                                 double temperature) {
  check_infonce_backward_args(grad, scores, positives, stats, temperature);
  const DeviceGuard guard(scores.device());
  const at::Tensor P = positives_long(positives);
  const at::Tensor G = grad.to(acc_type(scores)).contiguous(), St = stats.to(acc_type(scores)).contiguous();
  at::Tensor out = at::empty(scores.sizes(), scores.options());
  ITR_CUDA_CHECK(itr::cuda::infonce_backward(matrix_of(scores), long_ptr(P), G.const_data_ptr(), St.const_data_ptr(),
                                             temperature, out.mutable_data_ptr(), current_stream()));
  return out;
}

std::tuple<at::Tensor, at::Tensor> vse_triplet_cuda(const at::Tensor& scores,
                                                    const c10::optional<at::Tensor>& positives, double margin,
                                                    bool max_violation) {
  check_vse_triplet_args(scores, positives, margin);
  const DeviceGuard guard(scores.device());
  const int64_t Q = scores.size(0), D = query_directions(positives);
  const at::Tensor P = positives_long(positives);
  at::Tensor loss = at::empty({D, Q}, scores.options());
  at::Tensor aux = at::empty({D, Q}, scores.options().dtype(at::kLong));
  at::Tensor work = at::empty({itr::cuda::vse_triplet_work_bytes(matrix_of(scores), !P.defined(), max_violation)},
                              scores.options().dtype(at::kByte));
  ITR_CUDA_CHECK(itr::cuda::vse_triplet(matrix_of(scores), long_ptr(P), margin, max_violation,
                                        work.mutable_data_ptr(), loss.mutable_data_ptr(),
                                        aux.mutable_data_ptr<int64_t>(), current_stream()));
  return {loss, aux};
}

at::Tensor vse_triplet_backward_cuda(const at::Tensor& grad, const at::Tensor& scores,
                                     const c10::optional<at::Tensor>& positives, const at::Tensor& aux, double margin,
                                     bool max_violation) {
  check_vse_triplet_backward_args(grad, scores, positives, aux, margin);
  const DeviceGuard guard(scores.device());
  const at::Tensor P = positives_long(positives);
  const at::Tensor G = grad.to(acc_type(scores)).contiguous(), A = aux.contiguous();
  // the positives of the text-to-image queries, contiguous (square sum of hinges only)
  const at::Tensor D =
      !P.defined() && !max_violation ? scores.diagonal().to(acc_type(scores)).contiguous() : at::Tensor();
  const void* diag = D.defined() ? D.const_data_ptr() : nullptr;
  at::Tensor out = at::empty(scores.sizes(), scores.options());
  ITR_CUDA_CHECK(itr::cuda::vse_triplet_backward(matrix_of(scores), long_ptr(P), G.const_data_ptr(),
                                                 A.const_data_ptr<int64_t>(), diag, margin, max_violation,
                                                 out.mutable_data_ptr(), current_stream()));
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> kendall_full_cuda(const at::Tensor& scores, const at::Tensor& relevance,
                                                                 const c10::optional<at::Tensor>& valid, double gap,
                                                                 int64_t phi, double margin, double temperature,
                                                                 bool compute_grad) {
  check_kendall_full_args(scores, relevance, valid, gap, phi, temperature);
  const DeviceGuard guard(scores.device());
  const int64_t Q = scores.size(0), N = scores.size(1);
  const at::Tensor V = valid.has_value() ? valid->contiguous() : at::Tensor();
  const at::Tensor R = relevance.to(acc_type(scores)).contiguous();
  at::Tensor sums = at::zeros({Q}, scores.options().dtype(acc_type(scores)));  // N^2 growth: float16 overflows
  at::Tensor counts = at::zeros({Q}, scores.options().dtype(at::kLong));
  at::Tensor grad = at::zeros(compute_grad ? scores.sizes() : at::IntArrayRef{0}, scores.options());
  // Per-tile partial sums (accumulator type) followed by per-tile counts (int64).
  const int64_t parts = Q * itr::cuda::kendall_tiles(N);
  at::Tensor work = at::empty({parts * 2}, scores.options().dtype(at::kDouble));
  ITR_CUDA_CHECK(itr::cuda::kendall_full(matrix_of(scores), R.const_data_ptr(), valid_ptr(V), gap, static_cast<int>(phi),
                                         margin, temperature, work.mutable_data_ptr(), sums.mutable_data_ptr(),
                                         counts.mutable_data_ptr<int64_t>(),
                                         compute_grad ? grad.mutable_data_ptr() : nullptr,
                                         current_stream()));
  return {sums, counts, grad};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> kendall_swhs_cuda(const at::Tensor& scores, const at::Tensor& relevance,
                                                                 const c10::optional<at::Tensor>& valid,
                                                                 int64_t window, int64_t stride, double gap) {
  check_swhs_args(scores, relevance, valid, window, stride, gap);
  const DeviceGuard guard(scores.device());
  const int64_t Q = scores.size(0), N = scores.size(1);
  const int64_t steps = swhs_steps(N, window, stride);
  const at::Tensor V = valid.has_value() ? valid->contiguous() : at::Tensor();
  const at::Tensor R = relevance.to(acc_type(scores)).contiguous();
  auto [order, n_valid] = relevance_order(R, V);
  n_valid = n_valid.contiguous();
  at::Tensor upper = at::zeros({Q, steps}, scores.options().dtype(at::kLong));
  at::Tensor lower = at::zeros({Q, steps}, scores.options().dtype(at::kLong));
  at::Tensor keep = at::zeros({Q, steps}, scores.options().dtype(at::kBool));
  ITR_CUDA_CHECK(itr::cuda::kendall_swhs(matrix_of(scores), R.const_data_ptr(), order.const_data_ptr<int64_t>(),
                                         n_valid.const_data_ptr<int64_t>(), window, stride, steps, gap,
                                         upper.mutable_data_ptr<int64_t>(), lower.mutable_data_ptr<int64_t>(),
                                         keep.mutable_data_ptr<bool>(), current_stream()));
  return {upper, lower, keep};
}

}  // namespace

TORCH_LIBRARY_IMPL(ITR_OPS_NAMESPACE, ITR_OPS_DISPATCH_KEY, m) {
  m.impl("smooth_rank", &smooth_rank_cuda);
  m.impl("smooth_rank_backward", &smooth_rank_backward_cuda);
  m.impl("smooth_ndcg", &smooth_ndcg_cuda);
  m.impl("triplet_sn", &triplet_sn_cuda);
  m.impl("triplet_sn_backward", &triplet_sn_backward_cuda);
  m.impl("infonce", &infonce_cuda);
  m.impl("infonce_backward", &infonce_backward_cuda);
  m.impl("vse_triplet", &vse_triplet_cuda);
  m.impl("vse_triplet_backward", &vse_triplet_backward_cuda);
  m.impl("kendall_full", &kendall_full_cuda);
  m.impl("kendall_swhs", &kendall_swhs_cuda);
}

}  // namespace cuda
}  // namespace itr
