// One training step of normlab's batch, moving_average, renorm and online layers on CPU, as
// custom operators registered with PyTorch's dispatcher.
//
// On small inputs the Python versions spend most of their time dispatching a dozen tiny
// per-channel ops (statistics, r and d, clipping, running updates, diagnostics), each a few
// microseconds; here those are one loop over the channels. The full-size work is one pass for
// the statistics and one for the output; backward, batch and renorm use ATen's training-mode
// batch-norm backward (batch calls it directly from its autograd Function), moving_average
// (statistics constant) and online (the control process) passes of their own. The equations
// are those of normlab/norms/{batch,moving_average,renorm,online}.py, which the tests check
// against float64 references with and without these ops.
//
// Two operators per mode (schemas in TORCH_LIBRARY at the end):
//   normlab::<mode>_step      one training step: returns the output and what its backward
//                             needs (as native_batch_norm returns save_mean/save_invstd), and
//                             updates the running buffers, the step counter and the diagnostics
//                             record in place (mutable in the schema). CPU kernel; Autograd
//                             kernel: a torch::autograd::Function that runs the CPU kernel below
//                             autograd and marks the buffers dirty, so that autograd bumps their
//                             version counters (a graph that saved one sees it change). A mutable
//                             schema alone does not: ADInplaceOrView falls through for custom
//                             ops (measured with torch 2.13).
//   normlab::<mode>_backward  input, weight and bias gradients (online: and the control state);
//                             none for batch, whose backward is ATen's.
// One more, normlab::fold_diagnostics, folds the diagnostics records (norms/diagnostics.py).
// Fake kernels for all are registered from Python (kernels.py). The extension's Python module
// (module.cpp) has one eager entry point per step op (add_norm_entries, end of file).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/TensorSubclassLikeUtils.h>
#include <torch/autograd.h>
#include <torch/extension.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <optional>
#include <tuple>
#include <type_traits>
#include <vector>

namespace {

using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// the output, and the rows its backward needs
using StepOut = std::tuple<Tensor, Tensor>;
// batch's: the output, the batch mean and 1 / sqrt(batch variance + eps), as native_batch_norm's
using BatchStepOut = std::tuple<Tensor, Tensor, Tensor>;
using Grads = std::tuple<Tensor, Tensor, Tensor>;
using Mask = std::array<bool, 3>;

constexpr int64_t kGrain = 32768;  // elements per parallel task
constexpr int64_t kBlock = 512;    // values summed in the input type before going to double

// x viewed as (n, c, l): batch, channels, spatial values per (sample, channel) row
struct Layout {
  int64_t n, c, l;
  explicit Layout(const Tensor& x)
      : n(x.size(0)), c(x.size(1)), l(x.numel() / (x.size(0) * x.size(1))) {}
  int64_t count() const { return n * l; }
};

// ---------------------------------------------------------------- input checks

void check_input(const Tensor& x, const char* op) {
  TORCH_CHECK(x.dim() >= 2 && x.numel() > 0, op, ": expected a non-empty (N, C, *) input, got ",
              x.sizes());
  TORCH_CHECK(x.device().is_cpu() && x.is_contiguous(), op, ": expected a contiguous CPU input");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op,
              ": expected float32 or float64, got ", x.scalar_type());
}

void check_per_channel(const Tensor& x, std::initializer_list<Tensor> tensors, const char* op) {
  for (const Tensor& t : tensors) {
    TORCH_CHECK(t.dim() == 1 && t.size(0) == x.size(1) && t.is_contiguous() &&
                    t.scalar_type() == x.scalar_type() && t.device().is_cpu(),
                op, ": expected contiguous per-channel CPU tensors of shape (", x.size(1),
                ",) and dtype ", x.scalar_type());
  }
}

void check_like(const Tensor& x, const Tensor& t, const char* what, const char* op) {
  TORCH_CHECK(t.sizes() == x.sizes() && t.scalar_type() == x.scalar_type() && t.device().is_cpu(),
              op, ": ", what, " must match the input's shape and dtype");
}

// The record slot, if given: (rows, C) of the input's dtype.
template <typename T>
T* record_rows(const std::optional<Tensor>& record, const Tensor& x, int64_t rows,
               const char* op) {
  if (!record.has_value()) return nullptr;
  TORCH_CHECK(record->dim() == 2 && record->size(0) == rows && record->size(1) == x.size(1) &&
                  record->is_contiguous() && record->scalar_type() == x.scalar_type(),
              op, ": expected a contiguous (", rows, ", ", x.size(1), ") record");
  return record->data_ptr<T>();
}

void count_step(Tensor& num_batches, const char* op) {
  TORCH_CHECK(num_batches.numel() == 1 && num_batches.scalar_type() == at::kLong &&
                  num_batches.is_contiguous(),
              op, ": expected a one-element int64 step counter");
  num_batches.data_ptr<int64_t>()[0] += 1;
}

// This thread's work array number kSlot, of at least n uninitialized values, kept across calls:
// a step's per-channel arrays then cost no allocation (glibc consolidates its fast bins on every
// request of a kilobyte or more) and no zero fill, a few percent of a step at batch size 1.
template <typename T, int kSlot>
T* scratch(int64_t n) {
  thread_local std::vector<T> values;
  if (static_cast<int64_t>(values.size()) < n) values.resize(n);
  return values.data();
}

// ---------------------------------------------------------------- vectorized sums

// 32-byte SIMD vectors of T (GCC/Clang vector extension: AVX where compiled for it, pairs of
// SSE/NEON registers otherwise); plain loops with several accumulators do not vectorize well
template <typename T>
struct Simd {
  typedef T type __attribute__((vector_size(32)));
  static constexpr int64_t width = 32 / sizeof(T);
};

// Two sums over the rows of one channel: vector partial sums in the input type (two vectors per
// sum, so the loop vectorizes and pipelines), added into double every kBlock values rather than
// every row, so that short rows (a 16x16 feature map) do not each pay a horizontal reduction.
// add(len, vec, scalar): vec(i, u, v) gives the terms of elements [i, i + width), scalar(i, u, v)
// those of element i.
template <typename T>
struct PairSums {
  using V = typename Simd<T>::type;
  static constexpr int64_t w = Simd<T>::width;
  V lanes_a[2] = {}, lanes_b[2] = {};
  int64_t pending = 0;
  double a = 0.0, b = 0.0;

  template <class Vec, class Scalar>
  void add(int64_t len, Vec vec, Scalar scalar) {
    for (int64_t start = 0; start < len; start += kBlock) {
      const int64_t end = std::min(len, start + kBlock);
      // locals: stores through the caller's pointers cannot be taken to alias them
      V a0 = lanes_a[0], a1 = lanes_a[1], b0 = lanes_b[0], b1 = lanes_b[1];
      int64_t i = start;
      for (; i + 2 * w <= end; i += 2 * w) {
        V u, v;
        vec(i, u, v);
        a0 += u;
        b0 += v;
        vec(i + w, u, v);
        a1 += u;
        b1 += v;
      }
      lanes_a[0] = a0, lanes_a[1] = a1, lanes_b[0] = b0, lanes_b[1] = b1;
      for (; i < end; ++i) {
        double u, v;
        scalar(i, u, v);
        a += u;
        b += v;
      }
      if ((pending += end - start) >= kBlock) flush();
    }
  }

  void flush() {
    const V sum_a = lanes_a[0] + lanes_a[1], sum_b = lanes_b[0] + lanes_b[1];
    for (int64_t j = 0; j < w; ++j) {
      a += sum_a[j];
      b += sum_b[j];
    }
    lanes_a[0] = lanes_a[1] = lanes_b[0] = lanes_b[1] = V{};
    pending = 0;
  }
};

template <typename V, typename T>
V load(const T* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}

// mean and biased variance from sums of x - shift: one pass over the data, and the shift (one
// of the channel's own values) keeps E[d^2] - E[d]^2 from cancelling when |mean| >> std
void shifted_moments(double shift, double sum, double squares, double count, double& mean,
                     double& var) {
  const double d = sum / count;
  mean = shift + d;
  var = std::max(squares / count - d * d, 0.0);
}

// Sums of p[i] - shift and of its square over one row of len values.
template <typename T>
void shifted_row_sums(const T* p, int64_t len, T shift, PairSums<T>& sums) {
  using V = typename Simd<T>::type;
  sums.add(
      len,
      [&](int64_t i, V& u, V& v) {
        u = load<V>(p + i) - shift;
        v = u * u;
      },
      [&](int64_t i, double& u, double& v) {
        u = static_cast<double>(p[i]) - shift;
        v = u * u;
      });
}

// Per-channel mean and biased variance of x, into mean[0, C) and var[0, C).
template <typename T>
void channel_moments(const T* x, const Layout& s, double* mean, double* var) {
  const double count = static_cast<double>(s.count());
  if (s.l == 1) {  // (N, C): rows of channels; each task owns a block of channels
    at::parallel_for(0, s.c, std::max<int64_t>(1, kGrain / s.n), [&](int64_t b, int64_t e) {
      {  // the sums of x - x[0] and of its square, kept in mean and var until the last row
        double* __restrict__ sum = mean + b;
        double* __restrict__ squares = var + b;
        std::fill(sum, sum + (e - b), 0.0);
        std::fill(squares, squares + (e - b), 0.0);
        for (int64_t n = 0; n < s.n; ++n) {
          const T* row = x + n * s.c + b;
          for (int64_t c = 0; c < e - b; ++c) {
            const double v = static_cast<double>(row[c]) - x[b + c];
            sum[c] += v;
            squares[c] += v * v;
          }
        }
      }
      for (int64_t c = b; c < e; ++c) {
        shifted_moments(x[c], mean[c], var[c], count, mean[c], var[c]);
      }
    });
    return;
  }
  at::parallel_for(0, s.c, std::max<int64_t>(1, kGrain / s.count()), [&](int64_t b, int64_t e) {
    for (int64_t c = b; c < e; ++c) {
      const T shift = x[c * s.l];
      PairSums<T> sums;  // of x - shift and its square
      for (int64_t n = 0; n < s.n; ++n) shifted_row_sums(x + (n * s.c + c) * s.l, s.l, shift, sums);
      sums.flush();
      shifted_moments(shift, sums.a, sums.b, count, mean[c], var[c]);
    }
  });
}

// y = (x - center[k]) * scale[k] + shift[k] on each (sample, channel) row, k = row % period:
// period C for per-channel coefficients, N * C for per-row ones (online). Centering first keeps
// what the batch mean cancels exact (one value per channel gives exactly shift) instead of the
// difference of two large terms.
template <typename T>
void apply_affine(const T* x, T* y, const Layout& s, const T* center, const T* scale,
                  const T* shift, int64_t period) {
  if (s.l == 1) {
    at::parallel_for(0, s.n, std::max<int64_t>(1, kGrain / s.c), [&](int64_t b, int64_t e) {
      for (int64_t n = b; n < e; ++n) {
        const T* in = x + n * s.c;
        T* out = y + n * s.c;
        const int64_t k = (n * s.c) % period;
        for (int64_t c = 0; c < s.c; ++c) {
          out[c] = (in[c] - center[k + c]) * scale[k + c] + shift[k + c];
        }
      }
    });
    return;
  }
  at::parallel_for(0, s.n * s.c, std::max<int64_t>(1, kGrain / s.l), [&](int64_t b, int64_t e) {
    for (int64_t row = b; row < e; ++row) {
      const int64_t k = row % period;
      const T m = center[k], a = scale[k], z = shift[k];
      const T* in = x + row * s.l;
      T* out = y + row * s.l;
      for (int64_t i = 0; i < s.l; ++i) out[i] = (in[i] - m) * a + z;
    }
  });
}

// The forward batch, moving_average and renorm share: the batch moments, then algebra(mean,
// var, center, scale, shift), one loop over the channels that gives the output's affine
// y = (x - center) * scale + shift per channel and does the step's bookkeeping (running updates,
// saved rows, record), then the output in one pass. Each mode's algebra takes restrict pointers
// to arrays that never overlap, so that its loop vectorizes.
template <typename T, typename Algebra>
void normalize_per_channel(const Tensor& x, Tensor& y, Algebra algebra) {
  const Layout s(x);
  double* mean = scratch<double, 0>(2 * s.c);  // mean, var
  T* center = scratch<T, 1>(3 * s.c);          // center, scale, shift
  channel_moments(x.const_data_ptr<T>(), s, mean, mean + s.c);
  algebra(mean, mean + s.c, center, center + s.c, center + 2 * s.c);
  apply_affine(x.const_data_ptr<T>(), y.data_ptr<T>(), s, center, center + s.c, center + 2 * s.c,
               s.c);
}

// The record of batch and moving_average: batch mean, batch variance, running mean,
// sqrt(running variance + eps), the last two before the update.
template <typename T>
void record_moments(int64_t channels, const double* __restrict__ mean,
                    const double* __restrict__ var, const T* __restrict__ mu,
                    const T* __restrict__ nu, double eps, T* __restrict__ rec) {
  for (int64_t c = 0; c < channels; ++c) {
    rec[c] = static_cast<T>(mean[c]);
    rec[channels + c] = static_cast<T>(var[c]);
    rec[2 * channels + c] = mu[c];
    rec[3 * channels + c] = static_cast<T>(std::sqrt(nu[c] + eps));
  }
}

// One value per channel: x - mu_B is 0, so the output is the per-channel shift and the
// training-mode batch-norm backward reduces to grad_x = 0 (exactly, as the general formula
// gives), grad_w = g * slope (renorm: d, row slope_row of saved; batch: none, 0), grad_b = g.
Grads single_value_backward(const Tensor& grad_out, const Tensor& x, const Tensor& saved,
                            int64_t slope_row, Mask mask) {
  const int64_t channels = x.size(1);
  Tensor grad_x, grad_weight, grad_bias;
  if (mask[0]) grad_x = at::empty_like(x);
  if (mask[1]) grad_weight = at::empty({channels}, x.options());
  if (mask[2]) grad_bias = at::empty({channels}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "single_value_backward", [&] {
    const scalar_t* g = grad_out.const_data_ptr<scalar_t>();
    if (grad_x.defined()) {
      std::fill_n(grad_x.data_ptr<scalar_t>(), channels, scalar_t(0));
    }
    if (grad_weight.defined()) {
      scalar_t* out = grad_weight.data_ptr<scalar_t>();
      if (slope_row < 0) {
        std::fill_n(out, channels, scalar_t(0));
      } else {
        const scalar_t* d = saved.const_data_ptr<scalar_t>() + slope_row * channels;
        for (int64_t c = 0; c < channels; ++c) out[c] = g[c] * d[c];
      }
    }
    if (grad_bias.defined()) std::copy(g, g + channels, grad_bias.data_ptr<scalar_t>());
  });
  return {grad_x, grad_weight, grad_bias};
}

// ---------------------------------------------------------------- batch (Ioffe & Szegedy 2015)

// saved: batch mean, 1 / sqrt(batch variance + eps). unbias: n / (n - 1), 0 with one value per
// channel (no within-batch variance: the running variance stays).
template <typename T>
void batch_algebra(int64_t channels, const double* __restrict__ mean,
                   const double* __restrict__ var, T* __restrict__ center, T* __restrict__ scale,
                   T* __restrict__ shift, const T* __restrict__ w, const T* __restrict__ b,
                   T* __restrict__ mu, T* __restrict__ nu, T* __restrict__ save_mean,
                   T* __restrict__ save_invstd, double momentum, double eps, double unbias) {
  for (int64_t c = 0; c < channels; ++c) {
    const double invstd = 1.0 / std::sqrt(var[c] + eps);
    save_mean[c] = static_cast<T>(mean[c]);
    save_invstd[c] = static_cast<T>(invstd);
    mu[c] = static_cast<T>(mu[c] + momentum * (mean[c] - mu[c]));
    if (unbias > 0.0) nu[c] = static_cast<T>(nu[c] + momentum * (var[c] * unbias - nu[c]));
    center[c] = static_cast<T>(mean[c]);
    scale[c] = static_cast<T>(w[c] * invstd);
    shift[c] = b[c];
  }
}

BatchStepOut batch_step(const Tensor& x, const Tensor& weight, const Tensor& bias,
                        Tensor& running_mean, Tensor& running_var, Tensor& num_batches,
                        double momentum, double eps, const std::optional<Tensor>& record) {
  const char* op = "normlab::batch_step";
  check_input(x, op);
  check_per_channel(x, {weight, bias, running_mean, running_var}, op);
  const int64_t channels = x.size(1), count = Layout(x).count();
  const double unbias = count > 1 ? static_cast<double>(count) / (count - 1) : 0.0;
  Tensor y = at::empty_like(x);
  Tensor save_mean = at::empty({channels}, x.options());
  Tensor save_invstd = at::empty({channels}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "batch_step", [&] {
    scalar_t* rec = record_rows<scalar_t>(record, x, 4, op);
    scalar_t* mu = running_mean.data_ptr<scalar_t>();
    scalar_t* nu = running_var.data_ptr<scalar_t>();
    auto algebra = [&](const double* mean, const double* var, scalar_t* center,
                       scalar_t* scale, scalar_t* shift) {
      if (rec != nullptr) record_moments(channels, mean, var, mu, nu, eps, rec);
      batch_algebra(channels, mean, var, center, scale, shift,
                    weight.const_data_ptr<scalar_t>(), bias.const_data_ptr<scalar_t>(), mu, nu,
                    save_mean.data_ptr<scalar_t>(), save_invstd.data_ptr<scalar_t>(), momentum,
                    eps, unbias);
    };
    normalize_per_channel<scalar_t>(x, y, algebra);
  });
  count_step(num_batches, op);
  return {y, save_mean, save_invstd};
}

// ---------------------------------------------------------------- renorm (arXiv 1702.03275)

// Algorithm 1: r = clip(sigma_B / sigma, 1/rmax, rmax), d = clip((mu_B - mu) / sigma, -dmax,
// dmax), the output w (x - mu_B) / sigma_B r + w d + b. r and d are constants; the gradient
// flows through mu_B and sigma_B exactly as in training-mode batch norm with weight w r and bias
// w d + b. kRecord: also the record's rows.
template <bool kRecord, typename T>
void renorm_algebra(int64_t channels, const double* __restrict__ mean,
                    const double* __restrict__ var, T* __restrict__ center, T* __restrict__ scale,
                    T* __restrict__ shift, const T* __restrict__ w, const T* __restrict__ b,
                    T* __restrict__ mu, T* __restrict__ sigma, T* __restrict__ saved,
                    T* __restrict__ rec, double momentum, double eps, double rmax, double dmax) {
  for (int64_t c = 0; c < channels; ++c) {
    const double batch_std = std::sqrt(var[c] + eps), invstd = 1.0 / batch_std;
    const double inv_sigma = 1.0 / sigma[c];
    const double r_raw = batch_std * inv_sigma;
    const double d_raw = (mean[c] - mu[c]) * inv_sigma;
    const double r = std::clamp(r_raw, 1.0 / rmax, rmax);
    const double d = std::clamp(d_raw, -dmax, dmax);
    saved[c] = static_cast<T>(w[c] * r);
    saved[channels + c] = static_cast<T>(mean[c]);
    saved[2 * channels + c] = static_cast<T>(invstd);
    saved[3 * channels + c] = static_cast<T>(r);
    saved[4 * channels + c] = static_cast<T>(d);
    if constexpr (kRecord) {
      rec[c] = static_cast<T>(mean[c]);
      rec[channels + c] = static_cast<T>(var[c]);
      rec[2 * channels + c] = mu[c];
      rec[3 * channels + c] = sigma[c];
      rec[4 * channels + c] = r != r_raw ? T(1) : T(0);
      rec[5 * channels + c] = d != d_raw ? T(1) : T(0);
    }
    mu[c] = static_cast<T>(mu[c] + momentum * (mean[c] - mu[c]));
    sigma[c] = static_cast<T>(sigma[c] + momentum * (batch_std - sigma[c]));
    center[c] = static_cast<T>(mean[c]);
    scale[c] = static_cast<T>(w[c] * r * invstd);
    shift[c] = static_cast<T>(w[c] * d + b[c]);
  }
}

// saved rows: w r, mu_B, 1 / sigma_B, r, d; record: batch mean, batch variance, mu, sigma
// (before the update), r clipped, d clipped (0 or 1)
StepOut renorm_step(const Tensor& x, const Tensor& weight, const Tensor& bias,
                    Tensor& running_mean, Tensor& running_std, Tensor& num_batches,
                    double momentum, double eps, double rmax, double dmax,
                    const std::optional<Tensor>& record) {
  const char* op = "normlab::renorm_step";
  check_input(x, op);
  check_per_channel(x, {weight, bias, running_mean, running_std}, op);
  const int64_t channels = x.size(1);
  Tensor y = at::empty_like(x);
  Tensor saved = at::empty({5, channels}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "renorm_step", [&] {
    scalar_t* rec = record_rows<scalar_t>(record, x, 6, op);
    auto algebra = [&](const double* mean, const double* var, scalar_t* center,
                       scalar_t* scale, scalar_t* shift) {
      auto rule = rec != nullptr ? renorm_algebra<true, scalar_t> : renorm_algebra<false, scalar_t>;
      rule(channels, mean, var, center, scale, shift, weight.const_data_ptr<scalar_t>(),
           bias.const_data_ptr<scalar_t>(), running_mean.data_ptr<scalar_t>(),
           running_std.data_ptr<scalar_t>(), saved.data_ptr<scalar_t>(), rec, momentum, eps, rmax,
           dmax);
    };
    normalize_per_channel<scalar_t>(x, y, algebra);
  });
  count_step(num_batches, op);
  return {y, saved};
}

Grads renorm_backward(const Tensor& grad_out, const Tensor& x, const Tensor& saved, double eps,
                      Mask mask) {
  const char* op = "normlab::renorm_backward";
  check_input(x, op);
  check_like(x, grad_out, "grad_output", op);
  const Tensor g = grad_out.contiguous();
  const int64_t channels = x.size(1);
  if (x.numel() == channels) return single_value_backward(g, x, saved, 4, mask);
  const bool affine = mask[1] || mask[2];
  auto [grad_x, grad_folded, grad_bias] =
      at::native_batch_norm_backward(g, x, saved.select(0, 0), {}, {}, saved.select(0, 1),
                                     saved.select(0, 2), true, eps, {mask[0], affine, affine});
  Tensor grad_weight;
  if (mask[1]) {  // d(w r)/dw = r, d(w d + b)/dw = d
    grad_weight = grad_folded;
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "renorm_backward", [&] {
      scalar_t* gw = grad_weight.data_ptr<scalar_t>();
      const scalar_t* gb = grad_bias.const_data_ptr<scalar_t>();
      const scalar_t* r = saved.const_data_ptr<scalar_t>() + 3 * channels;
      const scalar_t* d = r + channels;
      for (int64_t c = 0; c < channels; ++c) gw[c] = gw[c] * r[c] + gb[c] * d[c];
    });
  }
  return {grad_x, grad_weight, mask[2] ? grad_bias : Tensor()};
}

// ---------------------------------------------------------------- moving_average

// The statistics are constants to autograd: normalize with the running ones, updated with this
// batch before or after. unbias as batch's: n / (n - 1), 0 when the running variance stays.
template <typename T>
void moving_average_algebra(int64_t channels, const double* __restrict__ mean,
                            const double* __restrict__ var, T* __restrict__ center,
                            T* __restrict__ scale, T* __restrict__ shift,
                            const T* __restrict__ w, const T* __restrict__ b,
                            T* __restrict__ mu, T* __restrict__ nu, T* __restrict__ saved,
                            double momentum, double eps, double unbias, bool update_before) {
  for (int64_t c = 0; c < channels; ++c) {
    const T new_mu = static_cast<T>(mu[c] + momentum * (mean[c] - mu[c]));
    const T new_nu =
        unbias > 0.0 ? static_cast<T>(nu[c] + momentum * (var[c] * unbias - nu[c])) : nu[c];
    const T used_mu = update_before ? new_mu : mu[c];
    const double invstd = 1.0 / std::sqrt((update_before ? new_nu : nu[c]) + eps);
    saved[c] = used_mu;
    saved[channels + c] = static_cast<T>(invstd);
    mu[c] = new_mu;
    nu[c] = new_nu;
    center[c] = used_mu;
    scale[c] = static_cast<T>(w[c] * invstd);
    shift[c] = b[c];
  }
}

// saved rows: mean used, 1 / sqrt(variance used + eps); record as batch's
StepOut moving_average_step(const Tensor& x, const Tensor& weight, const Tensor& bias,
                            Tensor& running_mean, Tensor& running_var, Tensor& num_batches,
                            double momentum, double eps, bool update_before,
                            const std::optional<Tensor>& record) {
  const char* op = "normlab::moving_average_step";
  check_input(x, op);
  check_per_channel(x, {weight, bias, running_mean, running_var}, op);
  const int64_t channels = x.size(1), count = Layout(x).count();
  const double unbias = count > 1 ? static_cast<double>(count) / (count - 1) : 0.0;
  Tensor y = at::empty_like(x);
  Tensor saved = at::empty({2, channels}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "moving_average_step", [&] {
    scalar_t* rec = record_rows<scalar_t>(record, x, 4, op);
    scalar_t* mu = running_mean.data_ptr<scalar_t>();
    scalar_t* nu = running_var.data_ptr<scalar_t>();
    auto algebra = [&](const double* mean, const double* var, scalar_t* center,
                       scalar_t* scale, scalar_t* shift) {
      if (rec != nullptr) record_moments(channels, mean, var, mu, nu, eps, rec);
      moving_average_algebra(channels, mean, var, center, scale, shift,
                             weight.const_data_ptr<scalar_t>(), bias.const_data_ptr<scalar_t>(),
                             mu, nu, saved.data_ptr<scalar_t>(), momentum, eps, unbias,
                             update_before);
    };
    normalize_per_channel<scalar_t>(x, y, algebra);
  });
  count_step(num_batches, op);
  return {y, saved};
}

// Per channel, over its rows: sum of g and of g * (x - center), and grad_x = g * gain, in one
// pass (the backward of normalizing with constant statistics).
template <typename T>
void constant_stats_backward(const T* g, const T* x, T* grad_x, const Layout& s, const T* center,
                             const T* gain, std::vector<double>& sum_g,
                             std::vector<double>& sum_gx) {
  if (s.l == 1) {
    at::parallel_for(0, s.c, std::max<int64_t>(1, kGrain / s.n), [&](int64_t b, int64_t e) {
      for (int64_t n = 0; n < s.n; ++n) {
        const int64_t row = n * s.c;
        for (int64_t c = b; c < e; ++c) {
          sum_g[c] += g[row + c];
          sum_gx[c] += static_cast<double>(g[row + c]) * (x[row + c] - center[c]);
          if (grad_x != nullptr) grad_x[row + c] = g[row + c] * gain[c];
        }
      }
    });
    return;
  }
  using V = typename Simd<T>::type;
  at::parallel_for(0, s.c, std::max<int64_t>(1, kGrain / s.count()), [&](int64_t b, int64_t e) {
    for (int64_t c = b; c < e; ++c) {
      const T m = center[c], a = gain[c];
      PairSums<T> sums;  // of g and g * (x - m)
      for (int64_t n = 0; n < s.n; ++n) {
        const int64_t offset = (n * s.c + c) * s.l;
        const T* gp = g + offset;
        const T* xp = x + offset;
        T* out = grad_x == nullptr ? nullptr : grad_x + offset;
        sums.add(
            s.l,
            [&](int64_t i, V& u, V& v) {
              u = load<V>(gp + i);
              v = u * (load<V>(xp + i) - m);
              if (out != nullptr) {
                const V o = u * a;
                std::memcpy(out + i, &o, sizeof(V));
              }
            },
            [&](int64_t i, double& u, double& v) {
              u = gp[i];
              v = u * (static_cast<double>(xp[i]) - m);
              if (out != nullptr) out[i] = gp[i] * a;
            });
      }
      sums.flush();
      sum_g[c] = sums.a;
      sum_gx[c] = sums.b;
    }
  });
}

// y = w (x - m) / sqrt(v + eps) + b with (m, v) constants: grad_x = g w / sqrt(v + eps),
// grad_w = sum g (x - m) / sqrt(v + eps), grad_b = sum g.
Grads moving_average_backward(const Tensor& grad_out, const Tensor& x, const Tensor& weight,
                              const Tensor& saved, Mask mask) {
  const char* op = "normlab::moving_average_backward";
  check_input(x, op);
  check_like(x, grad_out, "grad_output", op);
  check_per_channel(x, {weight}, op);
  const Tensor g = grad_out.contiguous();
  const Layout s(x);
  Tensor grad_x = mask[0] ? at::empty_like(x) : Tensor();
  Tensor grad_weight, grad_bias;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "moving_average_backward", [&] {
    const scalar_t* center = saved.const_data_ptr<scalar_t>();
    const scalar_t* invstd = center + s.c;
    const scalar_t* w = weight.const_data_ptr<scalar_t>();
    std::vector<scalar_t> gain(s.c);
    for (int64_t c = 0; c < s.c; ++c) gain[c] = w[c] * invstd[c];
    std::vector<double> sum_g(s.c, 0.0), sum_gx(s.c, 0.0);
    constant_stats_backward(g.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(),
                            grad_x.defined() ? grad_x.data_ptr<scalar_t>() : nullptr, s, center,
                            gain.data(), sum_g, sum_gx);
    if (mask[1]) {
      grad_weight = at::empty({s.c}, x.options());
      scalar_t* out = grad_weight.data_ptr<scalar_t>();
      for (int64_t c = 0; c < s.c; ++c) out[c] = static_cast<scalar_t>(sum_gx[c] * invstd[c]);
    }
    if (mask[2]) {
      grad_bias = at::empty({s.c}, x.options());
      scalar_t* out = grad_bias.data_ptr<scalar_t>();
      for (int64_t c = 0; c < s.c; ++c) out[c] = static_cast<scalar_t>(sum_g[c]);
    }
  });
  return {grad_x, grad_weight, grad_bias};
}

// ---------------------------------------------------------------- online (arXiv 1905.05894)

// Samples one after another; per channel, with a = alpha_fwd, mu(x_t), var(x_t) sample t's mean
// and biased variance over its spatial values and s = sqrt(var_{t-1} + eps):
//   y_t = (x_t - mu_{t-1}) / s,  out_t = w y_t + b
//   var_t = a var_{t-1} + (1 - a) var(x_t) + a (1 - a) (mu(x_t) - mu_{t-1})^2
//   mu_t = a mu_{t-1} + (1 - a) mu(x_t)
// The recurrences run sample by sample, as the paper writes them, in the input's precision (the
// running statistics are stored in it between batches anyway, and the PyTorch path's scans run
// in it): in float32 every loop over the channels of one sample vectorizes twice as wide as it
// would in double (restrict pointers: the arrays never overlap).
// saved (per sample and channel): mu_{t-1}, 1 / s and, with spatial values, <y_t> and <y_t^2>
// (with one value per sample the backward recomputes y_t from x instead: two full-size rows
// fewer to write). record: the batch's mean and variance, mu and sqrt(var + eps) before it.

// One sample with one value per channel: the recurrences (mu, var: the running statistics, in
// place) and the output in one loop.
template <typename T>
void online_values_step(const T* __restrict__ x, T* __restrict__ y, T* __restrict__ m_used,
                        T* __restrict__ inv_used, const T* __restrict__ w,
                        const T* __restrict__ b, T* __restrict__ mu, T* __restrict__ var,
                        int64_t c0, int64_t c1, T a, T eps) {
  for (int64_t c = c0; c < c1; ++c) {
    const T m = mu[c], v = var[c], value = x[c];
    const T inv = T(1) / std::sqrt(v + eps);
    const T dev = value - m;
    y[c] = dev * (w[c] * inv) + b[c];
    m_used[c] = m;
    inv_used[c] = inv;
    var[c] = a * v + a * (T(1) - a) * dev * dev;
    mu[c] = a * m + (T(1) - a) * value;
  }
}

// One sample with spatial values: the recurrences from its moments, the saved rows, and the
// coefficients of its output y = (x - center) * scale + bias.
template <typename T>
void online_rows_step(const double* __restrict__ mean_x, const double* __restrict__ var_x,
                      T* __restrict__ m_used, T* __restrict__ inv_used, T* __restrict__ y_mean,
                      T* __restrict__ y_sq_mean, T* __restrict__ scale, T* __restrict__ bias,
                      const T* __restrict__ w, const T* __restrict__ b, T* __restrict__ mu,
                      T* __restrict__ var, int64_t c0, int64_t c1, T a, T eps) {
  for (int64_t c = c0; c < c1; ++c) {
    const T m = mu[c], v = var[c];
    const T mx = static_cast<T>(mean_x[c]), vx = static_cast<T>(var_x[c]);
    const T inv = T(1) / std::sqrt(v + eps);
    const T dev = mx - m;
    m_used[c] = m;
    inv_used[c] = inv;
    y_mean[c] = dev * inv;
    y_sq_mean[c] = (vx + dev * dev) * inv * inv;
    scale[c] = w[c] * inv;
    bias[c] = b[c];
    var[c] = a * v + (T(1) - a) * vx + a * (T(1) - a) * dev * dev;
    mu[c] = a * m + (T(1) - a) * mx;
  }
}

// The batch's per-channel mean and biased variance from its samples' means and variances
// (mean of the variances plus variance of the means), shifted by the first sample's mean.
template <typename T>
void online_record(const T* x, const std::vector<double>& mean_x,
                   const std::vector<double>& var_x, const Layout& s, T* rec) {
  std::vector<double> shift(s.c), sum(s.c, 0.0), squares(s.c, 0.0);
  const bool values = s.l == 1;
  for (int64_t c = 0; c < s.c; ++c) shift[c] = values ? x[c] : mean_x[c];
  for (int64_t n = 0; n < s.n; ++n) {
    const int64_t base = n * s.c;
    for (int64_t c = 0; c < s.c; ++c) {
      const double d = (values ? static_cast<double>(x[base + c]) : mean_x[base + c]) - shift[c];
      sum[c] += d;
      squares[c] += d * d + (values ? 0.0 : var_x[base + c]);
    }
  }
  for (int64_t c = 0; c < s.c; ++c) {
    double mean, var;
    shifted_moments(shift[c], sum[c], squares[c], static_cast<double>(s.n), mean, var);
    rec[c] = static_cast<T>(mean);
    rec[s.c + c] = static_cast<T>(var);
  }
}

// mu, var: the running statistics, updated in place
template <typename T>
void online_forward_kernel(const Tensor& x, const T* w, const T* b, T* mu, T* var, T a, T eps,
                           T* y, T* saved, T* rec) {
  const Layout s(x);
  const T* xp = x.const_data_ptr<T>();
  const int64_t rows = s.n * s.c;
  if (rec != nullptr) {
    for (int64_t c = 0; c < s.c; ++c) {
      rec[2 * s.c + c] = mu[c];
      rec[3 * s.c + c] = std::sqrt(var[c] + eps);
    }
  }
  std::vector<double> mean_x, var_x;  // per sample and channel, with spatial values
  if (s.l > 1) {
    mean_x.resize(rows);
    var_x.resize(rows);
    at::parallel_for(0, rows, std::max<int64_t>(1, kGrain / s.l), [&](int64_t b0, int64_t e) {
      for (int64_t row = b0; row < e; ++row) {
        const T* p = xp + row * s.l;
        PairSums<T> sums;
        shifted_row_sums(p, s.l, p[0], sums);
        sums.flush();
        shifted_moments(p[0], sums.a, sums.b, static_cast<double>(s.l), mean_x[row], var_x[row]);
      }
    });
  }
  std::vector<T> scale, bias;
  if (s.l > 1) scale.resize(rows), bias.resize(rows);
  T* m_used = saved;
  T* inv_used = saved + rows;
  // each task owns a block of channels through all samples
  at::parallel_for(0, s.c, std::max<int64_t>(1, kGrain / s.n), [&](int64_t c0, int64_t c1) {
    for (int64_t n = 0; n < s.n; ++n) {
      const int64_t base = n * s.c;
      if (s.l == 1) {
        online_values_step(xp + base, y + base, m_used + base, inv_used + base, w, b, mu, var,
                           c0, c1, a, eps);
      } else {
        online_rows_step(mean_x.data() + base, var_x.data() + base, m_used + base,
                         inv_used + base, saved + 2 * rows + base, saved + 3 * rows + base,
                         scale.data() + base, bias.data() + base, w, b, mu, var, c0, c1, a,
                         eps);
      }
    }
  });
  if (s.l > 1) apply_affine(xp, y, s, m_used, scale.data(), bias.data(), rows);
  if (rec != nullptr) online_record(xp, mean_x, var_x, s, rec);
}

// ctrl_mean, ctrl_proj and alpha_bkw are the backward's: this kernel only checks the first two
StepOut online_step(const Tensor& x, const Tensor& weight, const Tensor& bias,
                    Tensor& running_mean, Tensor& running_var, const Tensor& ctrl_mean,
                    const Tensor& ctrl_proj, Tensor& num_batches, double alpha_fwd,
                    double /*alpha_bkw*/, double eps, const std::optional<Tensor>& record) {
  const char* op = "normlab::online_step";
  check_input(x, op);
  check_per_channel(x, {weight, bias, running_mean, running_var, ctrl_mean, ctrl_proj}, op);
  const Layout s(x);
  Tensor y = at::empty_like(x);
  Tensor saved = at::empty({s.l == 1 ? 2 : 4, s.n, s.c}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "online_step", [&] {
    online_forward_kernel<scalar_t>(
        x, weight.const_data_ptr<scalar_t>(), bias.const_data_ptr<scalar_t>(),
        running_mean.data_ptr<scalar_t>(), running_var.data_ptr<scalar_t>(),
        static_cast<scalar_t>(alpha_fwd), static_cast<scalar_t>(eps), y.data_ptr<scalar_t>(),
        saved.data_ptr<scalar_t>(), record_rows<scalar_t>(record, x, 4, op));
  });
  count_step(num_batches, op);
  return {y, saved};
}

// The control process (the paper's §2.2, reference norm_bwd), sample by sample, on g_t = w *
// grad_out_t (the gradient with respect to y_t), <.> the mean over a sample's values,
// k = 1 - alpha_bkw, v and u carried over between batches in ctrl_proj and ctrl_mean:
//   g~_t = g_t - k v y_t,   v += <g~_t y_t>
//   dx_t = g~_t / s - k u,  u += <dx_t>
// so dx_t = grad_out_t (w / s) + (x_t - mu_{t-1}) (-k v / s^2) - k u. With spatial values the
// per-sample sums <g y>, <g> are one pass, the recurrences a loop over (N, C), dx a second pass.

// One sample with one value per channel: y_t from x, the recurrences (u, v in place), dx and
// the affine's sums, all in the input's precision so that the loop vectorizes at its width.
template <typename T>
void online_values_backward(const T* __restrict__ g, const T* __restrict__ x,
                            const T* __restrict__ m_used, const T* __restrict__ inv_used,
                            const T* __restrict__ w, T* __restrict__ grad_x, T* __restrict__ u,
                            T* __restrict__ v, T* __restrict__ sum_gy, T* __restrict__ sum_g,
                            int64_t c0, int64_t c1, T k) {
  for (int64_t c = c0; c < c1; ++c) {
    const T inv = inv_used[c], grad = g[c];
    const T y = (x[c] - m_used[c]) * inv;
    const T g_tilde = w[c] * grad - k * v[c] * y;
    const T dx = g_tilde * inv - k * u[c];
    grad_x[c] = dx;
    v[c] += g_tilde * y;
    u[c] += dx;
    sum_gy[c] += grad * y;
    sum_g[c] += grad;
  }
}

// One sample with spatial values, from its sums of g and g (x - mu_{t-1}): the recurrences, the
// affine's sums and the coefficients of dx = g * gain + (x - mu_{t-1}) * slope + offset.
template <typename T>
void online_rows_backward(const double* __restrict__ row_g, const double* __restrict__ row_gx,
                          const T* __restrict__ inv_used, const T* __restrict__ y_mean,
                          const T* __restrict__ y_sq_mean, const T* __restrict__ w,
                          T* __restrict__ gain, T* __restrict__ slope, T* __restrict__ offset,
                          T* __restrict__ u, T* __restrict__ v, double* __restrict__ sum_gy,
                          double* __restrict__ sum_g, int64_t c0, int64_t c1, double k,
                          double length) {
  for (int64_t c = c0; c < c1; ++c) {
    const double inv = inv_used[c], vp = v[c], up = u[c];
    const double gy = row_gx[c] * inv;  // sum of grad_out y_t
    gain[c] = static_cast<T>(w[c] * inv);
    slope[c] = static_cast<T>(-k * vp * inv * inv);
    offset[c] = static_cast<T>(-k * up);
    v[c] = static_cast<T>(vp + w[c] * gy / length - k * vp * y_sq_mean[c]);
    u[c] = static_cast<T>(up + (w[c] * row_g[c] / length - k * vp * y_mean[c]) * inv - k * up);
    sum_gy[c] += gy;
    sum_g[c] += row_g[c];
  }
}

constexpr int64_t kFlushSamples = 64;  // samples summed in the input type before going to double

// u, v: the control state, updated in place; sum_gy, sum_g: the affine's gradients
template <typename T>
void online_backward_kernel(const T* g, const T* xp, const T* w, const T* saved, const Layout& s,
                            double k, T* u, T* v, T* grad_x, std::vector<double>& sum_gy,
                            std::vector<double>& sum_g) {
  const int64_t rows = s.n * s.c;
  const T* m_used = saved;
  const T* inv_used = saved + rows;
  if (s.l == 1) {
    // without an input gradient wanted, dx still feeds u: computed into a scratch row
    std::vector<T> scratch(grad_x == nullptr ? s.c : 0);
    at::parallel_for(0, s.c, std::max<int64_t>(1, kGrain / s.n), [&](int64_t c0, int64_t c1) {
      std::vector<T> block_gy(s.c), block_g(s.c);  // this task's channels [c0, c1)
      for (int64_t n0 = 0; n0 < s.n; n0 += kFlushSamples) {
        std::fill(block_gy.begin() + c0, block_gy.begin() + c1, T(0));
        std::fill(block_g.begin() + c0, block_g.begin() + c1, T(0));
        for (int64_t n = n0; n < std::min(s.n, n0 + kFlushSamples); ++n) {
          const int64_t base = n * s.c;
          online_values_backward(g + base, xp + base, m_used + base, inv_used + base, w,
                                 grad_x == nullptr ? scratch.data() : grad_x + base, u, v,
                                 block_gy.data(), block_g.data(), c0, c1, static_cast<T>(k));
        }
        for (int64_t c = c0; c < c1; ++c) {
          sum_gy[c] += block_gy[c];
          sum_g[c] += block_g[c];
        }
      }
    });
    return;
  }
  using V = typename Simd<T>::type;
  std::vector<double> row_g(rows), row_gx(rows);  // sums of g and g (x - mu_{t-1})
  at::parallel_for(0, rows, std::max<int64_t>(1, kGrain / s.l), [&](int64_t b, int64_t e) {
    for (int64_t row = b; row < e; ++row) {
      const T* gp = g + row * s.l;
      const T* x = xp + row * s.l;
      const T m = m_used[row];
      PairSums<T> sums;
      sums.add(
          s.l,
          [&](int64_t i, V& a, V& c) {
            a = load<V>(gp + i);
            c = a * (load<V>(x + i) - m);
          },
          [&](int64_t i, double& a, double& c) {
            a = gp[i];
            c = a * (static_cast<double>(x[i]) - m);
          });
      sums.flush();
      row_g[row] = sums.a;
      row_gx[row] = sums.b;
    }
  });
  std::vector<T> gain(rows), slope(rows), offset(rows);
  at::parallel_for(0, s.c, std::max<int64_t>(1, kGrain / s.n), [&](int64_t c0, int64_t c1) {
    for (int64_t n = 0; n < s.n; ++n) {
      const int64_t base = n * s.c;
      online_rows_backward(row_g.data() + base, row_gx.data() + base, inv_used + base,
                           saved + 2 * rows + base, saved + 3 * rows + base, w,
                           gain.data() + base, slope.data() + base, offset.data() + base, u, v,
                           sum_gy.data(), sum_g.data(), c0, c1, k, static_cast<double>(s.l));
    }
  });
  if (grad_x == nullptr) return;
  at::parallel_for(0, rows, std::max<int64_t>(1, kGrain / s.l), [&](int64_t b, int64_t e) {
    for (int64_t row = b; row < e; ++row) {
      const T* gp = g + row * s.l;
      const T* x = xp + row * s.l;
      T* out = grad_x + row * s.l;
      const T a = gain[row], sl = slope[row], z = offset[row], m = m_used[row];
      for (int64_t i = 0; i < s.l; ++i) out[i] = gp[i] * a + (x[i] - m) * sl + z;
    }
  });
}

// returns grad_x, grad_w, grad_b and the control state after the batch (ctrl_mean, ctrl_proj)
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> online_backward(
    const Tensor& grad_out, const Tensor& x, const Tensor& weight, const Tensor& saved,
    const Tensor& ctrl_mean, const Tensor& ctrl_proj, double alpha_bkw, Mask mask) {
  const char* op = "normlab::online_backward";
  check_input(x, op);
  check_like(x, grad_out, "grad_output", op);
  check_per_channel(x, {weight, ctrl_mean, ctrl_proj}, op);
  const Tensor g = grad_out.contiguous();
  const Layout s(x);
  Tensor grad_x = mask[0] ? at::empty_like(x) : Tensor();
  Tensor grad_weight = mask[1] ? at::empty({s.c}, x.options()) : Tensor();
  Tensor grad_bias = mask[2] ? at::empty({s.c}, x.options()) : Tensor();
  Tensor new_mean = ctrl_mean.clone(), new_proj = ctrl_proj.clone();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "online_backward", [&] {
    std::vector<double> sum_gy(s.c, 0.0), sum_g(s.c, 0.0);
    online_backward_kernel<scalar_t>(
        g.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(),
        weight.const_data_ptr<scalar_t>(), saved.const_data_ptr<scalar_t>(), s, 1.0 - alpha_bkw,
        new_mean.data_ptr<scalar_t>(), new_proj.data_ptr<scalar_t>(),
        mask[0] ? grad_x.data_ptr<scalar_t>() : nullptr, sum_gy, sum_g);
    if (mask[1]) std::copy(sum_gy.begin(), sum_gy.end(), grad_weight.data_ptr<scalar_t>());
    if (mask[2]) std::copy(sum_g.begin(), sum_g.end(), grad_bias.data_ptr<scalar_t>());
  });
  return {grad_x, grad_weight, grad_bias, new_mean, new_proj};
}

// ---------------------------------------------------------------- diagnostics (diagnostics.py)

// Sums over one row of len values of a[i] and b[i] (vectorized; see PairSums).
template <typename T>
void row_sums(const T* a, const T* b, int64_t len, PairSums<T>& sums) {
  using V = typename Simd<T>::type;
  sums.add(
      len,
      [&](int64_t i, V& u, V& v) {
        u = load<V>(a + i);
        v = load<V>(b + i);
      },
      [&](int64_t i, double& u, double& v) {
        u = a[i];
        v = b[i];
      });
  sums.flush();
}

// Folds k raw records (k, rows, C) of NormDiagnostics: rows batch mean mu_B, biased batch
// variance var_B, mu and sigma before the step's update, then a layer's clip indicators. Per
// step and channel, mean_shift = |mu_B - mu| / sigma and std_ratio = sqrt(var_B + eps) / sigma,
// in the records' dtype as the PyTorch fold computes them, are summed over the steps into
// channel_sums (2, C); per step, the channel means of mu_B, sqrt of that of var_B + mu_B^2 (the
// input's RMS), sqrt of that of mu_B^2 and the mean of each clip row go into scalar_sums
// (rows - 1,). Sums in double, added to the sums' dtype once per fold: the Python fold's dozen
// ops cost about a microsecond per step at 256 channels, this one pass a tenth of that.
template <typename T>
void fold_records(const T* raw, int64_t steps, int64_t rows, int64_t channels, T eps,
                  T* __restrict__ channel_sums, T* __restrict__ scalar_sums) {
  using V = typename Simd<T>::type;
  std::vector<double> channel_acc(2 * channels, 0.0), scalar_acc(rows - 1, 0.0);
  double* __restrict__ shift_acc = channel_acc.data();
  double* __restrict__ ratio_acc = shift_acc + channels;
  const double n = static_cast<double>(channels);
  for (int64_t s = 0; s < steps; ++s) {
    const T* __restrict__ bm = raw + s * rows * channels;
    const T* __restrict__ bv = bm + channels;
    const T* __restrict__ mu = bv + channels;
    const T* __restrict__ sigma = mu + channels;
    for (int64_t c = 0; c < channels; ++c) {
      shift_acc[c] += std::abs(bm[c] - mu[c]) / sigma[c];
      ratio_acc[c] += std::sqrt(bv[c] + eps) / sigma[c];
    }
    PairSums<T> means, variances;  // (mu_B, mu_B^2), (var_B, -)
    means.add(
        channels,
        [&](int64_t i, V& u, V& v) {
          u = load<V>(bm + i);
          v = u * u;
        },
        [&](int64_t i, double& u, double& v) {
          u = bm[i];
          v = static_cast<double>(bm[i] * bm[i]);
        });
    means.flush();
    row_sums(bv, bv, channels, variances);
    scalar_acc[0] += means.a / n;
    scalar_acc[1] += std::sqrt((variances.a + means.b) / n);
    scalar_acc[2] += std::sqrt(means.b / n);
    if (rows > 4) {
      PairSums<T> clipped;  // r and d clip indicators
      row_sums(bm + 4 * channels, bm + 5 * channels, channels, clipped);
      scalar_acc[3] += clipped.a / n;
      scalar_acc[4] += clipped.b / n;
    }
  }
  for (int64_t i = 0; i < 2 * channels; ++i) channel_sums[i] += static_cast<T>(channel_acc[i]);
  for (int64_t i = 0; i < rows - 1; ++i) scalar_sums[i] += static_cast<T>(scalar_acc[i]);
}

void fold_diagnostics(const Tensor& raw, double eps, Tensor& channel_sums, Tensor& scalar_sums) {
  const char* op = "normlab::fold_diagnostics";
  TORCH_CHECK(raw.dim() == 3 && (raw.size(1) == 4 || raw.size(1) == 6) && raw.is_contiguous() &&
                  raw.device().is_cpu(),
              op, ": expected contiguous CPU records (steps, 4 or 6, C), got ", raw.sizes());
  TORCH_CHECK(raw.scalar_type() == at::kFloat || raw.scalar_type() == at::kDouble, op,
              ": expected float32 or float64, got ", raw.scalar_type());
  const int64_t rows = raw.size(1), channels = raw.size(2);
  TORCH_CHECK(channel_sums.sizes() == at::IntArrayRef({2, channels}) &&
                  scalar_sums.sizes() == at::IntArrayRef({rows - 1}) &&
                  channel_sums.is_contiguous() && scalar_sums.is_contiguous() &&
                  channel_sums.scalar_type() == raw.scalar_type() &&
                  scalar_sums.scalar_type() == raw.scalar_type(),
              op, ": expected sums of shapes (2, ", channels, ") and (", rows - 1,
              ",) and the records' dtype");
  AT_DISPATCH_FLOATING_TYPES(raw.scalar_type(), "fold_diagnostics", [&] {
    fold_records<scalar_t>(raw.const_data_ptr<scalar_t>(), raw.size(0), rows, channels,
                           static_cast<scalar_t>(eps), channel_sums.data_ptr<scalar_t>(),
                           scalar_sums.data_ptr<scalar_t>());
  });
}

// ---------------------------------------------------------------- autograd

template <typename Signature>
c10::TypedOperatorHandle<Signature> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

using Record = std::optional<Tensor>;
using BatchStepSig = BatchStepOut(const Tensor&, const Tensor&, const Tensor&, Tensor&, Tensor&,
                                  Tensor&, double, double, const Record&);
using RenormStepSig = StepOut(const Tensor&, const Tensor&, const Tensor&, Tensor&, Tensor&,
                              Tensor&, double, double, double, double, const Record&);
using RenormBackwardSig = Grads(const Tensor&, const Tensor&, const Tensor&, double, Mask);
using MovingAverageStepSig = StepOut(const Tensor&, const Tensor&, const Tensor&, Tensor&, Tensor&,
                                     Tensor&, double, double, bool, const Record&);
using MovingAverageBackwardSig = Grads(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                       Mask);
using OnlineStepSig = StepOut(const Tensor&, const Tensor&, const Tensor&, Tensor&, Tensor&,
                              const Tensor&, const Tensor&, Tensor&, double, double, double,
                              const Record&);
using OnlineBackwardSig = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>(
    const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
    double, Mask);

const c10::TypedOperatorHandle<BatchStepSig>& batch_step_op() {
  static const auto op = find_op<BatchStepSig>("normlab::batch_step");
  return op;
}
const c10::TypedOperatorHandle<RenormStepSig>& renorm_step_op() {
  static const auto op = find_op<RenormStepSig>("normlab::renorm_step");
  return op;
}
const c10::TypedOperatorHandle<RenormBackwardSig>& renorm_backward_op() {
  static const auto op = find_op<RenormBackwardSig>("normlab::renorm_backward");
  return op;
}
const c10::TypedOperatorHandle<MovingAverageStepSig>& moving_average_step_op() {
  static const auto op = find_op<MovingAverageStepSig>("normlab::moving_average_step");
  return op;
}
const c10::TypedOperatorHandle<MovingAverageBackwardSig>& moving_average_backward_op() {
  static const auto op = find_op<MovingAverageBackwardSig>("normlab::moving_average_backward");
  return op;
}
const c10::TypedOperatorHandle<OnlineStepSig>& online_step_op() {
  static const auto op = find_op<OnlineStepSig>("normlab::online_step");
  return op;
}
const c10::TypedOperatorHandle<OnlineBackwardSig>& online_backward_op() {
  static const auto op = find_op<OnlineBackwardSig>("normlab::online_backward");
  return op;
}

// Runs a step op's kernel below autograd: the CPU kernel, or a fake one under tracing.
template <typename Signature, typename... Args>
auto below_autograd(const c10::TypedOperatorHandle<Signature>& op, Args&&... args) {
  at::AutoDispatchBelowADInplaceOrView guard;
  return op.call(std::forward<Args>(args)...);
}

// The Function's outputs: the normalized output, the buffers the kernel wrote in place (marked
// dirty: autograd bumps their version counters, as for an ATen in-place op) and the saved rows,
// all but the output non-differentiable. Their gradients stay undefined (no zeros made for
// them in backward). The step counter and the diagnostics record are written in place too but
// left out: no graph ever saves them, and each output costs the Function's bookkeeping.
variable_list step_outputs(AutogradContext* ctx, const Tensor& y, variable_list written,
                           std::initializer_list<Tensor> saved) {
  ctx->mark_dirty(written);
  written.insert(written.end(), saved);
  ctx->mark_non_differentiable(written);
  ctx->set_materialize_grads(false);
  variable_list outputs = {y};
  outputs.insert(outputs.end(), written.begin(), written.end());
  return outputs;
}

StepOut step_result(const variable_list& outputs) { return {outputs.front(), outputs.back()}; }

BatchStepOut batch_step_result(const variable_list& outputs) {
  const size_t n = outputs.size();
  return {outputs.front(), outputs[n - 2], outputs[n - 1]};
}

Mask input_mask(const AutogradContext* ctx) {
  return {ctx->needs_input_grad(0), ctx->needs_input_grad(1), ctx->needs_input_grad(2)};
}

// Gradients for a step of `arguments` arguments: input, weight, bias, then none.
variable_list input_grads(size_t arguments, const Tensor& grad_x = {},
                          const Tensor& grad_weight = {}, const Tensor& grad_bias = {}) {
  variable_list grads(arguments);
  grads[0] = grad_x, grads[1] = grad_weight, grads[2] = grad_bias;
  return grads;
}

struct BatchFunction : public torch::autograd::Function<BatchFunction> {
  static constexpr size_t kArguments = 9;

  static variable_list forward(AutogradContext* ctx, const Tensor& x, const Tensor& weight,
                               const Tensor& bias, Tensor& running_mean, Tensor& running_var,
                               Tensor& num_batches, double momentum, double eps,
                               const Record& record) {
    const auto [y, save_mean, save_invstd] =
        below_autograd(batch_step_op(), x, weight, bias, running_mean, running_var, num_batches,
                       momentum, eps, record);
    ctx->save_for_backward({x, weight, save_mean, save_invstd});
    ctx->saved_data["eps"] = eps;
    return step_outputs(ctx, y, {running_mean, running_var}, {save_mean, save_invstd});
  }

  // ATen's training-mode batch-norm backward, called directly: it is this step's exact
  // derivative, and differentiable, so double backward works as for torch.nn.BatchNorm. With
  // one value per channel (x - mu_B = 0: grad_x = grad_w = 0, grad_b = g, as ATen's gives too)
  // a loop over the channels does it in a fraction of the time, on plain tensors (not the fake
  // or functional ones of a trace) and with no graph to record.
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    if (!grads[0].defined()) return input_grads(kArguments);
    const variable_list saved = ctx->get_saved_variables();
    const Tensor& x = saved[0];
    const bool plain = !at::GradMode::is_enabled() && !at::areAnyTensorSubclassLike({x, grads[0]});
    if (plain && x.numel() == x.size(1)) {
      auto [grad_x, grad_weight, grad_bias] =
          single_value_backward(grads[0].contiguous(), x, Tensor(), -1, input_mask(ctx));
      return input_grads(kArguments, grad_x, grad_weight, grad_bias);
    }
    std::optional<at::AutoDispatchBelowADInplaceOrView> below;  // no graph to record
    if (plain) below.emplace();
    auto [grad_x, grad_weight, grad_bias] = at::native_batch_norm_backward(
        grads[0], x, saved[1], {}, {}, saved[2], saved[3], true, ctx->saved_data["eps"].toDouble(),
        input_mask(ctx));
    return input_grads(kArguments, grad_x, grad_weight, grad_bias);
  }
};

struct RenormFunction : public torch::autograd::Function<RenormFunction> {
  static constexpr size_t kArguments = 11;

  static variable_list forward(AutogradContext* ctx, const Tensor& x, const Tensor& weight,
                               const Tensor& bias, Tensor& running_mean, Tensor& running_std,
                               Tensor& num_batches, double momentum, double eps, double rmax,
                               double dmax, const Record& record) {
    const StepOut out = below_autograd(renorm_step_op(), x, weight, bias, running_mean,
                                       running_std, num_batches, momentum, eps, rmax, dmax, record);
    ctx->save_for_backward({x, std::get<1>(out)});
    ctx->saved_data["eps"] = eps;
    return step_outputs(ctx, std::get<0>(out), {running_mean, running_std},
                        {std::get<1>(out)});
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    if (!grads[0].defined()) return input_grads(kArguments);
    const variable_list saved = ctx->get_saved_variables();
    auto [grad_x, grad_weight, grad_bias] = renorm_backward_op().call(
        grads[0], saved[0], saved[1], ctx->saved_data["eps"].toDouble(), input_mask(ctx));
    return input_grads(kArguments, grad_x, grad_weight, grad_bias);
  }
};

struct MovingAverageFunction : public torch::autograd::Function<MovingAverageFunction> {
  static constexpr size_t kArguments = 10;

  static variable_list forward(AutogradContext* ctx, const Tensor& x, const Tensor& weight,
                               const Tensor& bias, Tensor& running_mean, Tensor& running_var,
                               Tensor& num_batches, double momentum, double eps,
                               bool update_before, const Record& record) {
    const StepOut out =
        below_autograd(moving_average_step_op(), x, weight, bias, running_mean, running_var,
                       num_batches, momentum, eps, update_before, record);
    ctx->save_for_backward({x, weight, std::get<1>(out)});
    return step_outputs(ctx, std::get<0>(out), {running_mean, running_var},
                        {std::get<1>(out)});
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    if (!grads[0].defined()) return input_grads(kArguments);
    const variable_list saved = ctx->get_saved_variables();
    auto [grad_x, grad_weight, grad_bias] = moving_average_backward_op().call(
        grads[0], saved[0], saved[1], saved[2], input_mask(ctx));
    return input_grads(kArguments, grad_x, grad_weight, grad_bias);
  }
};

// The control buffers are kept as plain references, not saved variables: the backward reads
// and updates them (with an ATen in-place copy, which bumps their versions), and the state it
// reads is the one at backward time (a layer used twice in a graph runs the control process
// through both uses, in backward order). An undefined output gradient is taken as zeros, as the
// PyTorch path's Function does: the control state still decays.
struct OnlineFunction : public torch::autograd::Function<OnlineFunction> {
  static constexpr size_t kArguments = 12;

  static variable_list forward(AutogradContext* ctx, const Tensor& x, const Tensor& weight,
                               const Tensor& bias, Tensor& running_mean, Tensor& running_var,
                               const Tensor& ctrl_mean, const Tensor& ctrl_proj,
                               Tensor& num_batches, double alpha_fwd, double alpha_bkw,
                               double eps, const Record& record) {
    const StepOut out =
        below_autograd(online_step_op(), x, weight, bias, running_mean, running_var, ctrl_mean,
                       ctrl_proj, num_batches, alpha_fwd, alpha_bkw, eps, record);
    ctx->save_for_backward({x, weight, std::get<1>(out)});
    ctx->saved_data["ctrl_mean"] = ctrl_mean;
    ctx->saved_data["ctrl_proj"] = ctrl_proj;
    ctx->saved_data["alpha_bkw"] = alpha_bkw;
    return step_outputs(ctx, std::get<0>(out), {running_mean, running_var},
                        {std::get<1>(out)});
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const Tensor grad_out = grads[0].defined() ? grads[0] : at::zeros_like(saved[0]);
    Tensor ctrl_mean = ctx->saved_data["ctrl_mean"].toTensor();
    Tensor ctrl_proj = ctx->saved_data["ctrl_proj"].toTensor();
    auto [grad_x, grad_weight, grad_bias, new_mean, new_proj] = online_backward_op().call(
        grad_out, saved[0], saved[1], saved[2], ctrl_mean, ctrl_proj,
        ctx->saved_data["alpha_bkw"].toDouble(), input_mask(ctx));
    at::_foreach_copy_({ctrl_mean, ctrl_proj}, {new_mean, new_proj});
    return input_grads(kArguments, grad_x, grad_weight, grad_bias);
  }
};

BatchStepOut batch_step_autograd(const Tensor& x, const Tensor& weight, const Tensor& bias,
                                 Tensor& running_mean, Tensor& running_var, Tensor& num_batches,
                                 double momentum, double eps, const Record& record) {
  return batch_step_result(BatchFunction::apply(x, weight, bias, running_mean, running_var,
                                                num_batches, momentum, eps, record));
}

StepOut renorm_step_autograd(const Tensor& x, const Tensor& weight, const Tensor& bias,
                             Tensor& running_mean, Tensor& running_std, Tensor& num_batches,
                             double momentum, double eps, double rmax, double dmax,
                             const Record& record) {
  return step_result(RenormFunction::apply(x, weight, bias, running_mean, running_std,
                                           num_batches, momentum, eps, rmax, dmax, record));
}

StepOut moving_average_step_autograd(const Tensor& x, const Tensor& weight, const Tensor& bias,
                                     Tensor& running_mean, Tensor& running_var,
                                     Tensor& num_batches, double momentum, double eps,
                                     bool update_before, const Record& record) {
  return step_result(MovingAverageFunction::apply(x, weight, bias, running_mean, running_var,
                                                  num_batches, momentum, eps, update_before,
                                                  record));
}

StepOut online_step_autograd(const Tensor& x, const Tensor& weight, const Tensor& bias,
                             Tensor& running_mean, Tensor& running_var, const Tensor& ctrl_mean,
                             const Tensor& ctrl_proj, Tensor& num_batches, double alpha_fwd,
                             double alpha_bkw, double eps, const Record& record) {
  return step_result(OnlineFunction::apply(x, weight, bias, running_mean, running_var, ctrl_mean,
                                           ctrl_proj, num_batches, alpha_fwd, alpha_bkw, eps,
                                           record));
}

// The backward ops have no derivative of their own. Under create_graph (double backward) an
// input of theirs requires grad: refuse then rather than return first-order results that
// silently lack the second-order terms; otherwise run the kernel below autograd.
template <typename Signature>
struct NoDoubleBackward;

template <typename Out, typename... Args>
struct NoDoubleBackward<Out(Args...)> {
  template <const char* kName, const c10::TypedOperatorHandle<Out(Args...)>& (*kOp)()>
  static Out call(Args... args) {
    if (at::GradMode::is_enabled()) {
      const bool any = (requires_grad(args) || ...);
      TORCH_CHECK(!any, kName,
                  " is not differentiable: normlab's compiled training steps support one "
                  "backward pass, not double backward");
    }
    at::AutoDispatchBelowADInplaceOrView guard;
    return kOp().call(args...);
  }
  template <typename T>
  static bool requires_grad(const T& value) {
    if constexpr (std::is_same_v<std::decay_t<T>, Tensor>) {
      return value.defined() && value.requires_grad();
    } else {
      return false;
    }
  }
};

constexpr char kRenormBackward[] = "normlab::renorm_backward";
constexpr char kMovingAverageBackward[] = "normlab::moving_average_backward";
constexpr char kOnlineBackward[] = "normlab::online_backward";

}  // namespace

// <mode>_step returns (output, saved): saved is what <mode>_backward takes, per channel
// ((rows, C)) or, for online, per sample and channel ((rows, N, C)); batch_step returns (output,
// batch mean, 1 / sqrt(batch variance + eps)), as native_batch_norm does. record, if given, is
// the diagnostics slot, (rows, C) (see NormDiagnostics.slot).
TORCH_LIBRARY(normlab, m) {
  m.def(
      "batch_step(Tensor input, Tensor weight, Tensor bias, Tensor(a!) running_mean, "
      "Tensor(b!) running_var, Tensor(c!) num_batches_tracked, float momentum, float eps, "
      "Tensor(d!)? record) -> (Tensor, Tensor, Tensor)");
  m.def(
      "renorm_step(Tensor input, Tensor weight, Tensor bias, Tensor(a!) running_mean, "
      "Tensor(b!) running_std, Tensor(c!) num_batches_tracked, float momentum, float eps, "
      "float rmax, float dmax, Tensor(d!)? record) -> (Tensor, Tensor)");
  m.def(
      "renorm_backward(Tensor grad_output, Tensor input, Tensor saved, float eps, "
      "bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
  m.def(
      "moving_average_step(Tensor input, Tensor weight, Tensor bias, Tensor(a!) running_mean, "
      "Tensor(b!) running_var, Tensor(c!) num_batches_tracked, float momentum, float eps, "
      "bool update_before, Tensor(d!)? record) -> (Tensor, Tensor)");
  m.def(
      "moving_average_backward(Tensor grad_output, Tensor input, Tensor weight, Tensor saved, "
      "bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
  // ctrl_mean and ctrl_proj: not written by the step itself; its backward updates them
  m.def(
      "online_step(Tensor input, Tensor weight, Tensor bias, Tensor(a!) running_mean, "
      "Tensor(b!) running_var, Tensor ctrl_mean, Tensor ctrl_proj, "
      "Tensor(c!) num_batches_tracked, float alpha_fwd, float alpha_bkw, float eps, "
      "Tensor(d!)? record) -> (Tensor, Tensor)");
  // returns the input, weight and bias gradients, then the control state after the batch
  m.def(
      "online_backward(Tensor grad_output, Tensor input, Tensor weight, Tensor saved, "
      "Tensor ctrl_mean, Tensor ctrl_proj, float alpha_bkw, bool[3] output_mask) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // adds k raw diagnostics records (k, rows, C) into the sums (NormDiagnostics' fold)
  m.def(
      "fold_diagnostics(Tensor records, float eps, Tensor(a!) channel_sums, "
      "Tensor(b!) scalar_sums) -> ()");
}

TORCH_LIBRARY_IMPL(normlab, CPU, m) {
  m.impl("batch_step", &batch_step);
  m.impl("renorm_step", &renorm_step);
  m.impl("renorm_backward", &renorm_backward);
  m.impl("moving_average_step", &moving_average_step);
  m.impl("moving_average_backward", &moving_average_backward);
  m.impl("online_step", &online_step);
  m.impl("online_backward", &online_backward);
  m.impl("fold_diagnostics", &fold_diagnostics);
}

TORCH_LIBRARY_IMPL(normlab, Autograd, m) {
  m.impl("batch_step", &batch_step_autograd);
  m.impl("renorm_step", &renorm_step_autograd);
  m.impl("moving_average_step", &moving_average_step_autograd);
  m.impl("online_step", &online_step_autograd);
  m.impl("renorm_backward",
         &NoDoubleBackward<RenormBackwardSig>::call<kRenormBackward, renorm_backward_op>);
  m.impl("moving_average_backward",
         &NoDoubleBackward<MovingAverageBackwardSig>::call<kMovingAverageBackward,
                                                           moving_average_backward_op>);
  m.impl("online_backward",
         &NoDoubleBackward<OnlineBackwardSig>::call<kOnlineBackward, online_backward_op>);
}

// Eager entry points, one per step op, returning its output: each calls the op through the
// dispatcher (its Autograd kernel and all), with pybind11's argument conversion instead of the
// boxed call of torch.ops.normlab.<op>, which costs about 1.5 us more per call (a twentieth of
// a whole step at batch size 1). kernels.py uses torch.ops where torch.compile traces.
template <typename Signature>
struct EagerEntry;

template <typename Out, typename... Args>
struct EagerEntry<Out(Args...)> {
  template <const c10::TypedOperatorHandle<Out(Args...)>& (*kOp)()>
  static Tensor call(Args... args) {
    return std::get<0>(kOp().call(args...));
  }
};

void add_norm_entries(pybind11::module_& m) {
  m.def("batch_step", &EagerEntry<BatchStepSig>::call<batch_step_op>);
  m.def("renorm_step", &EagerEntry<RenormStepSig>::call<renorm_step_op>);
  m.def("moving_average_step", &EagerEntry<MovingAverageStepSig>::call<moving_average_step_op>);
  m.def("online_step", &EagerEntry<OnlineStepSig>::call<online_step_op>);
}
