// Input checks shared by the CPU and CUDA bindings. The Python API validates first with friendlier
// messages; these keep direct torch.ops calls memory-safe.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>

#include <cmath>

namespace itr {

inline void check_scores(const at::Tensor& scores) {
  TORCH_CHECK_VALUE(scores.dim() == 2, "scores must be 2-D (queries, candidates), got ", scores.dim(), "-D");
  TORCH_CHECK_TYPE(at::isFloatingType(scores.scalar_type()),
                   "scores must be float64, float32, float16 or bfloat16, got ", scores.scalar_type());
}

inline void check_like_scores(const at::Tensor& t, const at::Tensor& scores, const char* name) {
  TORCH_CHECK_VALUE(t.sizes() == scores.sizes(), name, " must have the shape of scores ", scores.sizes(),
                    ", got ", t.sizes());
  TORCH_CHECK_VALUE(t.device() == scores.device(), name, " must be on the device of scores (", scores.device(),
                    "), got ", t.device());
}

inline void check_valid(const c10::optional<at::Tensor>& valid, const at::Tensor& scores) {
  if (!valid.has_value()) return;
  check_like_scores(*valid, scores, "valid");
  TORCH_CHECK_TYPE(valid->scalar_type() == at::kBool, "valid must be a bool tensor, got ", valid->scalar_type());
}

inline void check_tau(double tau) {
  TORCH_CHECK_VALUE(std::isfinite(tau) && tau > 0, "tau must be a finite number > 0, got ", tau);
}

inline void check_temperature(double temperature) {
  TORCH_CHECK_VALUE(std::isfinite(temperature) && temperature > 0, "temperature must be a finite number > 0, got ",
                    temperature);
}

inline void check_relevance(const at::Tensor& relevance, const at::Tensor& scores) {
  check_like_scores(relevance, scores, "relevance");
  TORCH_CHECK_TYPE(at::isFloatingType(relevance.scalar_type()), "relevance must be a floating tensor, got ",
                   relevance.scalar_type());
}

// ---- the arguments of each op, for its CPU kernel and its CUDA binding alike ----

inline void check_smooth_rank_args(const at::Tensor& scores, const c10::optional<at::Tensor>& valid, double tau) {
  check_scores(scores);
  check_valid(valid, scores);
  check_tau(tau);
}

inline void check_smooth_ndcg_args(const at::Tensor& scores, const at::Tensor& relevance,
                                   const c10::optional<at::Tensor>& valid, double tau) {
  check_smooth_rank_args(scores, valid, tau);
  check_relevance(relevance, scores);
}

inline void check_triplet_sn_args(const at::Tensor& scores, const c10::optional<at::Tensor>& relevance,
                                  double margin, double temperature, double rho) {
  check_scores(scores);
  TORCH_CHECK_VALUE(scores.size(0) == scores.size(1), "scores must be a square in-batch matrix, got ",
                    scores.sizes());
  if (relevance.has_value()) check_relevance(*relevance, scores);
  TORCH_CHECK_VALUE(std::isfinite(margin), "margin must be a finite number, got ", margin);
  check_temperature(temperature);
  TORCH_CHECK_VALUE(!std::isnan(rho), "rho must be a number (not NaN; +inf keeps every candidate but the positive), got ",
                    rho);
}

inline void check_triplet_sn_backward_args(const at::Tensor& grad, const at::Tensor& scores,
                                           const c10::optional<at::Tensor>& relevance, const at::Tensor& stats,
                                           double margin, double temperature, double rho) {
  check_triplet_sn_args(scores, relevance, margin, temperature, rho);
  const int64_t b = scores.size(0);
  TORCH_CHECK_VALUE(grad.sizes() == at::IntArrayRef({2, b}), "grad must have shape (2, ", b, "), got ", grad.sizes());
  TORCH_CHECK_VALUE(stats.sizes() == at::IntArrayRef({2, 3, b}), "stats must have shape (2, 3, ", b, "), got ",
                    stats.sizes());
}

inline void check_kendall_args(const at::Tensor& scores, const at::Tensor& relevance,
                               const c10::optional<at::Tensor>& valid, double gap) {
  check_scores(scores);
  check_relevance(relevance, scores);
  check_valid(valid, scores);
  TORCH_CHECK_VALUE(std::isfinite(gap) && gap >= 0, "gap must be a finite number >= 0, got ", gap);
}

inline void check_kendall_full_args(const at::Tensor& scores, const at::Tensor& relevance,
                                    const c10::optional<at::Tensor>& valid, double gap, int64_t phi,
                                    double temperature) {
  check_kendall_args(scores, relevance, valid, gap);
  TORCH_CHECK_VALUE(phi >= 0 && phi <= 2, "phi must be 0 (hinge), 1 (logistic) or 2 (tanh), got ", phi);
  check_temperature(temperature);
}

inline void check_swhs_args(const at::Tensor& scores, const at::Tensor& relevance,
                            const c10::optional<at::Tensor>& valid, int64_t window, int64_t stride, double gap) {
  check_kendall_args(scores, relevance, valid, gap);
  TORCH_CHECK_VALUE(window >= 1, "window must be >= 1, got ", window);
  TORCH_CHECK_VALUE(stride >= 1, "stride must be >= 1, got ", stride);
}

// The column of each row's positive (rectangular scores); the CPU kernels also check the range.
inline void check_positives(const c10::optional<at::Tensor>& positives, const at::Tensor& scores) {
  if (!positives.has_value()) {
    TORCH_CHECK_VALUE(scores.size(0) == scores.size(1),
                      "scores must be a square in-batch matrix (or pass positives), got ", scores.sizes());
    return;
  }
  const at::Tensor& p = *positives;
  TORCH_CHECK_VALUE(p.dim() == 1 && p.size(0) == scores.size(0), "positives must be 1-D with one column per row (",
                    scores.size(0), ",), got ", p.sizes());
  TORCH_CHECK_TYPE(p.scalar_type() == at::kLong || p.scalar_type() == at::kInt,
                   "positives must be an integer tensor of column indices, got ", p.scalar_type());
  TORCH_CHECK_VALUE(p.device() == scores.device(), "positives must be on the device of scores (", scores.device(),
                    "), got ", p.device());
}

// Queries of a contrastive loss: both directions of a square matrix, or the rows with positives.
inline int64_t query_directions(const c10::optional<at::Tensor>& positives) { return positives.has_value() ? 1 : 2; }

inline void check_contrastive_grad(const at::Tensor& grad, const at::Tensor& scores,
                                   const c10::optional<at::Tensor>& positives) {
  const int64_t d = query_directions(positives), q = scores.size(0);
  TORCH_CHECK_VALUE(grad.sizes() == at::IntArrayRef({d, q}), "grad must have shape (", d, ", ", q, "), got ",
                    grad.sizes());
}

inline void check_infonce_args(const at::Tensor& scores, const c10::optional<at::Tensor>& positives,
                               double temperature) {
  check_scores(scores);
  check_positives(positives, scores);
  check_temperature(temperature);
}

inline void check_infonce_backward_args(const at::Tensor& grad, const at::Tensor& scores,
                                        const c10::optional<at::Tensor>& positives, const at::Tensor& stats,
                                        double temperature) {
  check_infonce_args(scores, positives, temperature);
  check_contrastive_grad(grad, scores, positives);
  const int64_t d = query_directions(positives), q = scores.size(0);
  TORCH_CHECK_VALUE(stats.sizes() == at::IntArrayRef({d, 3, q}), "stats must have shape (", d, ", 3, ", q,
                    "), got ", stats.sizes());
}

inline void check_vse_triplet_args(const at::Tensor& scores, const c10::optional<at::Tensor>& positives,
                                   double margin) {
  check_scores(scores);
  check_positives(positives, scores);
  TORCH_CHECK_VALUE(std::isfinite(margin), "margin must be a finite number, got ", margin);
}

inline void check_vse_triplet_backward_args(const at::Tensor& grad, const at::Tensor& scores,
                                            const c10::optional<at::Tensor>& positives, const at::Tensor& aux,
                                            double margin) {
  check_vse_triplet_args(scores, positives, margin);
  check_contrastive_grad(grad, scores, positives);
  const int64_t d = query_directions(positives), q = scores.size(0);
  TORCH_CHECK_VALUE(aux.sizes() == at::IntArrayRef({d, q}) && aux.scalar_type() == at::kLong,
                    "aux must be an int64 tensor of shape (", d, ", ", q, "), got ", aux.scalar_type(), " ",
                    aux.sizes());
}

// SW-HS window steps on n candidates: while the lower window is non-empty.
inline int64_t swhs_steps(int64_t n, int64_t window, int64_t stride) {
  return n > window ? (n - window + stride - 1) / stride : 0;
}

}  // namespace itr
