// The op schemas, defined once: ops.cpp defines them in the itr_kernels namespace, the test-only
// CPU emulation of the CUDA kernels (csrc/cuda_emu/module.cpp) in itr_kernels_emu. Backends
// register kernels with TORCH_LIBRARY_IMPL.
#pragma once

#include <torch/library.h>

namespace itr {

inline void define_ops(torch::Library& m) {
  // Rhat[q, j] = 1 + sum_{k != j, valid} sigmoid((S[q,k] - S[q,j]) / tau); 0 at masked entries.
  m.def("smooth_rank(Tensor scores, Tensor? valid, float tau) -> Tensor");
  // dL/dS from dL/dRhat.
  m.def("smooth_rank_backward(Tensor grad, Tensor scores, Tensor? valid, float tau) -> Tensor");
  // Per-row Smooth-NDCG loss, IDCG, and (if compute_grad) d loss[q] / d S[q, :]; k <= 0 means all.
  m.def(
      "smooth_ndcg(Tensor scores, Tensor relevance, Tensor? valid, float tau, int k, bool linear_gain, "
      "bool compute_grad) -> (Tensor, Tensor, Tensor)");

  // Triplet-SN on a square in-batch matrix: per-query losses (2, B) [image-to-text, text-to-image]
  // and per query (shift score, 1 / sum of the shifted exponentials, the negatives' share of that
  // sum) (2, 3, B), as InfoNCE's, which the backward reuses.
  m.def("triplet_sn(Tensor scores, Tensor? relevance, float margin, float temperature, float rho) -> (Tensor, Tensor)");
  m.def(
      "triplet_sn_backward(Tensor grad, Tensor scores, Tensor? relevance, Tensor stats, float margin, "
      "float temperature, float rho) -> Tensor");
  // InfoNCE: per-query losses, (2, B) [image-to-text, text-to-image] of a square in-batch matrix or
  // (1, Q) of the rows of (Q, N) scores against `positives`, and per query (shift score, 1 / sum of
  // the shifted exponentials, the negatives' share of that sum) (D, 3, Q), which the backward reuses.
  m.def("infonce(Tensor scores, Tensor? positives, float temperature) -> (Tensor, Tensor)");
  m.def(
      "infonce_backward(Tensor grad, Tensor scores, Tensor? positives, Tensor stats, float temperature) -> Tensor");
  // VSE++ triplet: per-query losses as infonce, and per query (D, Q) int64: with max_violation the
  // hardest negative's index while its hinge is active (else -1), otherwise the active hinge count.
  m.def("vse_triplet(Tensor scores, Tensor? positives, float margin, bool max_violation) -> (Tensor, Tensor)");
  m.def(
      "vse_triplet_backward(Tensor grad, Tensor scores, Tensor? positives, Tensor aux, float margin, "
      "bool max_violation) -> Tensor");
  // Kendall ranking loss, full pair form: per-row sums in the accumulator dtype (float32 for
  // float16 / bfloat16 / float32 scores, float64 for float64: a sum grows with N^2), per-row pair
  // counts (int64) and (if compute_grad) d sum[q] / d S[q, :] in the scores' dtype. phi: 0 hinge,
  // 1 logistic, 2 tanh. A NaN score in a pair gives a NaN sum for every phi.
  m.def(
      "kendall_full(Tensor scores, Tensor relevance, Tensor? valid, float gap, int phi, float margin, "
      "float temperature, bool compute_grad) -> (Tensor, Tensor, Tensor)");
  // SW-HS selection: per row and window step, the hard upper column (lowest score), the hard lower
  // column (highest score), and whether the windows' relevance gap exceeds `gap`. Shapes (Q, steps).
  // A NaN score is the hardest of its window; ties (NaN with NaN too) go to the lower column.
  m.def(
      "kendall_swhs(Tensor scores, Tensor relevance, Tensor? valid, int window, int stride, float gap) "
      "-> (Tensor, Tensor, Tensor)");
}

}  // namespace itr
