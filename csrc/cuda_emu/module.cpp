// The test-only extension itr_kernels_emu (built by python_tests/cuda_emu.py, never part of the
// wheel): the itr_kernels op schemas in the itr_kernels_emu namespace, whose CPU kernels are the
// CUDA bindings and kernels (csrc/cuda/) running on the CPU emulation of CUDA; and the emulation's
// controls for Python.
#include <Python.h>
#include <torch/library.h>

#include "cuda_emu/runtime.h"
#include "op_schemas.h"

TORCH_LIBRARY(itr_kernels_emu, m) { itr::define_ops(m); }

namespace {

PyObject* set_seed(PyObject*, PyObject* arg) {
  const unsigned long long seed = PyLong_AsUnsignedLongLongMask(arg);
  if (PyErr_Occurred()) return nullptr;
  itr::emu::set_seed(seed);
  Py_RETURN_NONE;
}

PyObject* get_seed(PyObject*, PyObject*) { return PyLong_FromUnsignedLongLong(itr::emu::seed()); }

PyObject* stats(PyObject*, PyObject*) {
  const itr::emu::Stats s = itr::emu::stats();
  return Py_BuildValue("{s:K,s:K,s:K,s:K}", "launches", (unsigned long long)s.launches, "blocks",
                       (unsigned long long)s.blocks, "threads", (unsigned long long)s.threads, "releases",
                       (unsigned long long)s.releases);
}

PyMethodDef methods[] = {
    {"set_seed", set_seed, METH_O, "Seed of the thread order at barrier releases."},
    {"seed", get_seed, METH_NOARGS, "The current seed."},
    {"stats", stats, METH_NOARGS, "Launches, blocks, threads and barrier releases emulated so far."},
    {nullptr, nullptr, 0, nullptr}};

#define ITR_STR2(x) #x
#define ITR_STR(x) ITR_STR2(x)
PyModuleDef module = {PyModuleDef_HEAD_INIT, ITR_STR(TORCH_EXTENSION_NAME), nullptr, -1, methods};

}  // namespace

#define ITR_CAT2(a, b) a##b
#define ITR_CAT(a, b) ITR_CAT2(a, b)
PyMODINIT_FUNC ITR_CAT(PyInit_, TORCH_EXTENSION_NAME)(void) { return PyModule_Create(&module); }
