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

}  // namespace itr
