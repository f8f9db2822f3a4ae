// The one place where the op schemas are defined; backends register kernels with TORCH_LIBRARY_IMPL.
#include <Python.h>
#include <torch/library.h>

#include <string>

#include "itr_build_config.h"

TORCH_LIBRARY(itr_kernels, m) {
  // Rhat[q, j] = 1 + sum_{k != j, valid} sigmoid((S[q,k] - S[q,j]) / tau); 0 at masked entries.
  m.def("smooth_rank(Tensor scores, Tensor? valid, float tau) -> Tensor");
  // dL/dS from dL/dRhat.
  m.def("smooth_rank_backward(Tensor grad, Tensor scores, Tensor? valid, float tau) -> Tensor");
  // Per-row Smooth-NDCG loss, IDCG, and (if compute_grad) d loss[q] / d S[q, :]; k <= 0 means all.
  m.def(
      "smooth_ndcg(Tensor scores, Tensor relevance, Tensor? valid, float tau, int k, bool linear_gain, "
      "bool compute_grad) -> (Tensor, Tensor, Tensor)");

  // Triplet-SN on a square in-batch matrix: per-query losses (2, B) [image-to-text, text-to-image]
  // and their log(1 + sum exp) (2, B), which the backward reuses.
  m.def("triplet_sn(Tensor scores, Tensor? relevance, float margin, float temperature, float rho) -> (Tensor, Tensor)");
  m.def(
      "triplet_sn_backward(Tensor grad, Tensor scores, Tensor? relevance, Tensor lse, float margin, "
      "float temperature, float rho) -> Tensor");
  // Kendall ranking loss, full pair form: per-row sums, per-row pair counts and (if compute_grad)
  // d sum[q] / d S[q, :]. phi: 0 hinge, 1 logistic, 2 tanh.
  m.def(
      "kendall_full(Tensor scores, Tensor relevance, Tensor? valid, float gap, int phi, float margin, "
      "float temperature, bool compute_grad) -> (Tensor, Tensor, Tensor)");
  // SW-HS selection: per row and window step, the hard upper column, the hard lower column, and
  // whether the windows' relevance gap exceeds `gap`. Shapes (Q, steps).
  m.def(
      "kendall_swhs(Tensor scores, Tensor relevance, Tensor? valid, int window, int stride, float gap) "
      "-> (Tensor, Tensor, Tensor)");
}

#define ITR_STR2(x) #x
#define ITR_STR(x) ITR_STR2(x)

namespace {

// JSON of what this binary was compiled with; itr_kernels.build_info() adds the runtime side.
PyObject* build_info(PyObject*, PyObject*) {
  std::string s = "{\"torch_version\": \"" ITR_TORCH_VERSION "\", \"cxx_flags\": \"" ITR_CXX_FLAGS "\"";
#ifdef _OPENMP
  s += ", \"openmp\": " ITR_STR(_OPENMP);
#else
  s += ", \"openmp\": null";
#endif
#ifdef ITR_WITH_CUDA
  s += ", \"cuda\": true, \"cuda_archs\": \"" ITR_CUDA_ARCHS "\", \"cuda_version\": \"" ITR_CUDA_VERSION "\"";
#else
  s += ", \"cuda\": false, \"cuda_archs\": \"\", \"cuda_version\": null";
#endif
  s += "}";
  return PyUnicode_FromString(s.c_str());
}

PyMethodDef methods[] = {
    {"build_info", build_info, METH_NOARGS, "JSON describing how itr_kernels._C was compiled."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods};

}  // namespace

// Importing itr_kernels._C runs the static registrations above (the extension-cpp pattern).
PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&module); }
