// The extension's Python module: the eager entry points of every file's operators (each calls its
// op through the dispatcher, with pybind11's argument conversion, faster than torch.ops' boxed
// call). The operators themselves register with the dispatcher as torch.ops.normlab.

#include <torch/extension.h>

void add_norm_entries(pybind11::module_& m);
void add_packed_linear_entries(pybind11::module_& m);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  add_norm_entries(m);
  add_packed_linear_entries(m);
}
