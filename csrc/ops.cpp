// The itr_kernels op library (schemas: op_schemas.h) and the _C module's build information.
#include <Python.h>
#include <torch/library.h>

#include <string>

#include "cpu/isa.h"
#include "itr_build_config.h"
#include "op_schemas.h"

TORCH_LIBRARY(itr_kernels, m) { itr::define_ops(m); }

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
  s += ", " + itr_cpu_isa::info_json() + "}";
  return PyUnicode_FromString(s.c_str());
}

PyMethodDef methods[] = {
    {"build_info", build_info, METH_NOARGS, "JSON describing how itr_kernels._C was compiled."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods};

}  // namespace

// Importing itr_kernels._C runs the static registrations above (the extension-cpp pattern), then
// registers the CPU kernels of the instruction-set level this CPU supports (cpu/isa.h).
PyMODINIT_FUNC PyInit__C(void) {
  const std::string error = itr_cpu_isa::register_kernels();
  if (!error.empty()) {
    PyErr_SetString(PyExc_ImportError, error.c_str());
    return nullptr;
  }
  return PyModule_Create(&module);
}
