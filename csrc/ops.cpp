// The extension module `vpog._C` and the `vpog` operator library.
//
// Every op of the extension registers its schema with TORCH_LIBRARY_FRAGMENT(vpog, m) and its
// kernels with TORCH_LIBRARY_IMPL(vpog, CPU | CUDA, m) in its own source file; this file only
// creates the library and the Python module, so that `import vpog._C` loads the registrations
// (the ops are then reachable as torch.ops.vpog.<name>).
#include <Python.h>

#include <torch/library.h>

TORCH_LIBRARY(vpog, m) {}

static struct PyModuleDef vpog_c_module = {
    PyModuleDef_HEAD_INIT, "_C", "vpog C++/CUDA ops, registered as torch.ops.vpog.*", -1, nullptr,
};

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&vpog_c_module); }
