// Launchers of the CUDA kernels: raw pointers, sizes and a stream, no torch types, so that the
// kernel files compile with nvcc alone. Each returns the launch's cudaError_t.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace itr {
namespace cuda {

enum class Dtype { kFloat64, kFloat32, kFloat16, kBFloat16 };

// A (rows, cols) matrix of `dtype` with arbitrary strides (scores.T needs no copy).
struct Matrix {
  const void* data;
  Dtype dtype;
  int64_t rows, cols, row_stride, col_stride;
};

// Rhat (or 0 at masked entries) into `out`, contiguous, of the scores' dtype.
cudaError_t smooth_rank(Matrix scores, const bool* valid, double tau, void* out, cudaStream_t stream);

// dL/dS from dL/dRhat: `coef` is contiguous (rows, cols), of `coef_dtype`; out as smooth_rank.
cudaError_t smooth_rank_backward(Matrix scores, const bool* valid, const void* coef, Dtype coef_dtype, double tau,
                                 void* out, cudaStream_t stream);

// Smooth-NDCG. `order` is each row's candidates by relevance, descending, ties to the lower column
// (a stable sort, masked last); the first set_size[q] carry gain. `work` holds 3 * rows * cols
// accumulator elements (double for float64 scores, float otherwise). Writes the per-row loss (the
// scores' dtype), IDCG (accumulator type) and, if grad != nullptr, d loss[q] / d S[q, :].
cudaError_t smooth_ndcg(Matrix scores, const bool* valid, const void* relevance_acc, const int64_t* order,
                        const int64_t* set_size, double tau, bool linear_gain, void* work, void* loss, void* idcg,
                        void* grad, cudaStream_t stream);

// Triplet-SN on a square (B, B) matrix: loss (2, B) of the scores' dtype and stats (2, 3, B) of the
// accumulator type (shift, 1 / total, negatives' share); relevance_acc may be null (every
// off-diagonal candidate is a negative, whatever rho).
cudaError_t triplet_sn(Matrix scores, const void* relevance_acc, double margin, double temperature, double rho,
                       void* loss, void* stats, cudaStream_t stream);
cudaError_t triplet_sn_backward(Matrix scores, const void* relevance_acc, const void* grad_acc, const void* stats_acc,
                                double temperature, double rho, void* out, cudaStream_t stream);

// InfoNCE: square scores (positives null: both directions, the diagonal positive) or rows against
// positives[q]; loss (D, Q) of the scores' dtype, stats (D, 3, Q) of the accumulator type (shift,
// 1 / total, negatives' share). `work` holds infonce_work_bytes(scores, square) bytes of partials.
int64_t infonce_work_bytes(Matrix scores, bool square);
cudaError_t infonce(Matrix scores, const int64_t* positives, double temperature, void* work, void* loss, void* stats,
                    cudaStream_t stream);
cudaError_t infonce_backward(Matrix scores, const int64_t* positives, const void* grad_acc, const void* stats_acc,
                             double temperature, void* out, cudaStream_t stream);

// VSE++ triplet, shaped as infonce; aux (D, Q): the hardest negative while active, else -1 (max
// violation), or the active hinge count (sum of hinges). The backward of a square matrix's sum of
// hinges reads the diagonal from diag_acc (B, accumulator type); null otherwise.
int64_t vse_triplet_work_bytes(Matrix scores, bool square, bool max_violation);
cudaError_t vse_triplet(Matrix scores, const int64_t* positives, double margin, bool max_violation, void* work,
                        void* loss, int64_t* aux, cudaStream_t stream);
cudaError_t vse_triplet_backward(Matrix scores, const int64_t* positives, const void* grad_acc, const int64_t* aux,
                                 const void* diag_acc, double margin, bool max_violation, void* out,
                                 cudaStream_t stream);

// Kendall full form: per-row sums (accumulator type: float, double for double scores), pair
// counts (int64) and, if grad != nullptr, d sum[q] / d S[q, :] (scores' dtype). `work` holds 16
// bytes per (row, tile): partial sums, then int64 counts, where tiles = kendall_tiles(cols).
int64_t kendall_tiles(int64_t cols);
cudaError_t kendall_full(Matrix scores, const void* relevance_acc, const bool* valid, double gap, int phi,
                         double margin, double temperature, void* work, void* sums, int64_t* counts, void* grad,
                         cudaStream_t stream);

// SW-HS selection from each row's relevance order (see smooth_ndcg) and its valid count n[q]:
// upper / lower / keep of shape (rows, steps).
cudaError_t kendall_swhs(Matrix scores, const void* relevance_acc, const int64_t* order, const int64_t* n_valid,
                         int64_t window, int64_t stride, int64_t steps, double gap, int64_t* upper, int64_t* lower,
                         bool* keep, cudaStream_t stream);

}  // namespace cuda
}  // namespace itr
