// A packed model's linear layer (normlab/packing.py, PackedLinear) as a custom operator: S seeds'
// x_s @ W_s.T + b_s as batched matmuls, its backward a torch::autograd::Function.
//
// The products and their operand layouts are those of packing.py's _PackedLinearFunction, which
// stays the path where this extension is not built; here the dozen view and transpose calls of
// a layer's forward and backward and autograd's call into a Python backward are C++ calls
// (17-20 us a layer at batch 1-16, five 128 x 128 seeds, on a 2-core EPYC VM).
//
//   normlab::packed_linear(input (B, S * in), weight (S * out, in), bias? (S * out), seeds)
//                          -> (B, S * out)
// Forward kernel: CompositeExplicitAutograd (ATen ops only, so it runs on every backend and on
// meta tensors, which torch.compile's fake tensors use); Autograd kernel: the Function below.

#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/extension.h>
#include <torch/library.h>

#include <optional>

namespace {

using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using PackedLinearSig = Tensor(const Tensor&, const Tensor&, const std::optional<Tensor>&, int64_t);

// (B, S * n) -> (S, B, n): each seed's rows, a view
Tensor per_seed(const Tensor& rows, int64_t seeds) {
  return rows.view({rows.size(0), seeds, -1}).transpose(0, 1);
}

// (S * out, in) -> (S, out, in), a view
Tensor seed_weights(const Tensor& weight, int64_t seeds) {
  return weight.view({seeds, -1, weight.size(1)});
}

Tensor packed_linear(const Tensor& input, const Tensor& weight, const std::optional<Tensor>& bias,
                     int64_t seeds) {
  TORCH_CHECK(input.dim() == 2 && weight.dim() == 2 && input.size(1) % seeds == 0 &&
                  weight.size(0) % seeds == 0 && input.size(1) / seeds == weight.size(1),
              "packed_linear: input (B, S * in) and weight (S * out, in) for S = ", seeds,
              ", got ", input.sizes(), " and ", weight.sizes());
  Tensor inputs = per_seed(input, seeds);
  Tensor weights = seed_weights(weight, seeds).transpose(1, 2);
  Tensor out = bias.has_value() && bias->defined()
                   ? at::baddbmm(bias->view({seeds, 1, -1}), inputs, weights)
                   : at::bmm(inputs, weights);
  // (B, S * out) rows: the compiled norm steps take whole rows
  return out.transpose(0, 1).reshape({input.size(0), -1});
}

const c10::TypedOperatorHandle<PackedLinearSig>& packed_linear_op() {
  static const auto handle = c10::Dispatcher::singleton()
                                 .findSchemaOrThrow("normlab::packed_linear", "")
                                 .typed<PackedLinearSig>();
  return handle;
}

struct PackedLinearFunction : public torch::autograd::Function<PackedLinearFunction> {
  static Tensor forward(AutogradContext* ctx, const Tensor& input, const Tensor& weight,
                        const std::optional<Tensor>& bias, int64_t seeds) {
    ctx->save_for_backward({input, weight});
    ctx->saved_data["seeds"] = seeds;
    ctx->saved_data["has_bias"] = bias.has_value() && bias->defined();
    at::AutoDispatchBelowADInplaceOrView guard;
    return packed_linear_op().call(input, weight, bias, seeds);
  }

  // Each product in the operand layout ATen's CPU bmm runs fast at small batches; the weight's
  // gradient in the parameter's own (S * out, in) layout.
  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    TORCH_CHECK(!torch::autograd::GradMode::is_enabled(),
                "normlab::packed_linear: backward pass, not double backward");
    const auto saved = ctx->get_saved_variables();
    const Tensor& input = saved[0];
    const Tensor& weight = saved[1];
    const int64_t seeds = ctx->saved_data["seeds"].toInt();
    const int64_t batch = input.size(0);
    const Tensor grads = per_seed(grad_outputs[0].reshape({batch, -1}), seeds);
    Tensor grad_input, grad_weight, grad_bias;
    if (ctx->needs_input_grad(0)) {
      grad_input = at::bmm(grads, seed_weights(weight, seeds)).transpose(0, 1).reshape(
          input.sizes());
    }
    if (ctx->needs_input_grad(1)) {
      const Tensor columns = grads.transpose(1, 2);
      const Tensor inputs = per_seed(input, seeds);
      // at batch 1 an outer product: the same single products, without bmm's call cost
      grad_weight = (batch == 1 ? columns * inputs : at::bmm(columns, inputs)).view(weight.sizes());
    }
    if (ctx->saved_data["has_bias"].toBool() && ctx->needs_input_grad(2)) {
      grad_bias = grads.sum(1).reshape({-1});
    }
    return {grad_input, grad_weight, grad_bias, Tensor()};
  }
};

Tensor packed_linear_autograd(const Tensor& input, const Tensor& weight,
                              const std::optional<Tensor>& bias, int64_t seeds) {
  return PackedLinearFunction::apply(input, weight, bias, seeds);
}

// the eager entry point: pybind11's argument conversion instead of torch.ops' boxed call
Tensor packed_linear_entry(const Tensor& input, const Tensor& weight,
                           const std::optional<Tensor>& bias, int64_t seeds) {
  return packed_linear_op().call(input, weight, bias, seeds);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(normlab, m) {
  m.def("packed_linear(Tensor input, Tensor weight, Tensor? bias, int seeds) -> Tensor");
}

TORCH_LIBRARY_IMPL(normlab, CompositeExplicitAutograd, m) {
  m.impl("packed_linear", &packed_linear);
}

TORCH_LIBRARY_IMPL(normlab, Autograd, m) {
  m.impl("packed_linear", &packed_linear_autograd);
}

void add_packed_linear_entries(pybind11::module_& m) {
  m.def("packed_linear", &packed_linear_entry);
}
