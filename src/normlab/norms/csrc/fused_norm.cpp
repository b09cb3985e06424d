// One training step of normlab's moving_average and renorm layers on CPU, as one op each.
//
// On small inputs the Python versions spend most of their time dispatching a dozen tiny
// per-channel ops (statistics, r and d, clipping, running updates, diagnostics), each a few
// microseconds; here those are one loop over the channels. The full-size work is one pass for
// the statistics and one for the output; backward, renorm uses ATen's training-mode batch-norm
// backward and moving_average (statistics constant) one pass of its own.
// The equations are those of normlab/norm.py (MovingAverageNorm, BatchRenorm), which the tests
// check against float64 references with and without these kernels.

#include <torch/extension.h>
#include <torch/csrc/autograd/functions/utils.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <vector>

namespace {

using torch::Tensor;
using torch::autograd::variable_list;

constexpr int64_t kGrain = 32768;  // elements per parallel task
constexpr int64_t kBlock = 512;    // values summed in the input type before going to double

// x viewed as (n, c, l): batch, channels, spatial values per (sample, channel) row
struct Layout {
  int64_t n, c, l;
  explicit Layout(const Tensor& x)
      : n(x.size(0)), c(x.size(1)), l(x.numel() / (x.size(0) * x.size(1))) {}
  int64_t count() const { return n * l; }
};

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

// Per-channel mean and biased variance of x.
template <typename T>
void channel_moments(const T* x, const Layout& s, std::vector<double>& mean,
                     std::vector<double>& var) {
  const double count = static_cast<double>(s.count());
  if (s.l == 1) {  // (N, C): rows of channels; each task owns a block of channels
    at::parallel_for(0, s.c, std::max<int64_t>(1, kGrain / s.n), [&](int64_t b, int64_t e) {
      std::vector<double> sum(e - b, 0.0), squares(e - b, 0.0);
      for (int64_t n = 0; n < s.n; ++n) {
        const T* row = x + n * s.c + b;
        for (int64_t c = 0; c < e - b; ++c) {
          const double v = static_cast<double>(row[c]) - x[b + c];
          sum[c] += v;
          squares[c] += v * v;
        }
      }
      for (int64_t c = b; c < e; ++c) {
        shifted_moments(x[c], sum[c - b], squares[c - b], count, mean[c], var[c]);
      }
    });
    return;
  }
  at::parallel_for(0, s.c, std::max<int64_t>(1, kGrain / s.count()), [&](int64_t b, int64_t e) {
    using V = typename Simd<T>::type;
    for (int64_t c = b; c < e; ++c) {
      const T shift = x[c * s.l];
      PairSums<T> sums;  // of x - shift and its square
      for (int64_t n = 0; n < s.n; ++n) {
        const T* p = x + (n * s.c + c) * s.l;
        sums.add(
            s.l,
            [&](int64_t i, V& u, V& v) {
              u = load<V>(p + i) - shift;
              v = u * u;
            },
            [&](int64_t i, double& u, double& v) {
              u = static_cast<double>(p[i]) - shift;
              v = u * u;
            });
      }
      sums.flush();
      shifted_moments(shift, sums.a, sums.b, count, mean[c], var[c]);
    }
  });
}

// y = (x - center[c]) * scale[c] + shift[c]: centering first keeps what the batch mean cancels
// exact (one value per channel gives exactly shift) instead of the difference of two large terms
template <typename T>
void apply_affine(const T* x, T* y, const Layout& s, const T* center, const T* scale,
                  const T* shift) {
  if (s.l == 1) {
    at::parallel_for(0, s.n, std::max<int64_t>(1, kGrain / s.c), [&](int64_t b, int64_t e) {
      for (int64_t n = b; n < e; ++n) {
        const T* in = x + n * s.c;
        T* out = y + n * s.c;
        for (int64_t c = 0; c < s.c; ++c) out[c] = (in[c] - center[c]) * scale[c] + shift[c];
      }
    });
    return;
  }
  at::parallel_for(0, s.n * s.c, std::max<int64_t>(1, kGrain / s.l), [&](int64_t b, int64_t e) {
    for (int64_t row = b; row < e; ++row) {
      const T m = center[row % s.c], a = scale[row % s.c], z = shift[row % s.c];
      const T* in = x + row * s.l;
      T* out = y + row * s.l;
      for (int64_t i = 0; i < s.l; ++i) out[i] = (in[i] - m) * a + z;
    }
  });
}

template <typename T>
T* data_or_null(const c10::optional<Tensor>& t) {
  return t.has_value() && t->defined() ? t->data_ptr<T>() : nullptr;
}

// The running buffers are written through raw pointers: tell autograd, so that a graph which
// saved one of them sees the change. The step counter too is counted up here, not by an op.
void mark_updated(std::initializer_list<Tensor> buffers, Tensor& num_batches) {
  for (const Tensor& t : buffers) torch::autograd::impl::bump_version(t);
  num_batches.data_ptr<int64_t>()[0] += 1;
  torch::autograd::impl::bump_version(num_batches);
}

// The forward both steps share: the batch moments, then rule(c, mean, var) for each channel,
// which returns the output's affine for that channel as {center, scale, shift} (and does the
// step's own bookkeeping: running updates, saved rows, diagnostics), then the output in one pass.
template <typename T, typename Rule>
void normalize_per_channel(const Tensor& x, Tensor& y, Rule rule) {
  const Layout s(x);
  std::vector<double> mean(s.c, 0.0), var(s.c, 0.0);
  channel_moments(x.data_ptr<T>(), s, mean, var);
  std::vector<T> center(s.c), scale(s.c), shift(s.c);
  for (int64_t c = 0; c < s.c; ++c) {
    const std::array<double, 3> affine = rule(c, mean[c], var[c]);
    center[c] = static_cast<T>(affine[0]);
    scale[c] = static_cast<T>(affine[1]);
    shift[c] = static_cast<T>(affine[2]);
  }
  apply_affine(x.data_ptr<T>(), y.data_ptr<T>(), s, center.data(), scale.data(), shift.data());
}

// A backward node of type N as y's grad_fn, with x, weight and bias as its inputs; null when
// no gradient is wanted (grad mode off, or nothing requires grad).
template <typename N>
c10::intrusive_ptr<N> attach_backward(Tensor& y, const Tensor& x, const Tensor& weight,
                                      const Tensor& bias) {
  if (!torch::autograd::compute_requires_grad(x, weight, bias)) return {};
  auto node = c10::make_intrusive<N>();
  node->set_next_edges(torch::autograd::collect_next_edges(x, weight, bias));
  node->input = torch::autograd::SavedVariable(x, false);
  torch::autograd::set_history(y, node);
  return node;
}

// The backward nodes keep the step's input and its per-channel rows.
struct StepBackward : public torch::autograd::Node {
  torch::autograd::SavedVariable input;
  torch::autograd::SavedVariable per_channel;

  void release_variables() override {
    input.reset_data();
    per_channel.reset_data();
  }
};

// --------------------------------------------------------- renorm (arXiv 1702.03275, Alg. 1)

// r and d are constants; the gradient flows through mu_B and sigma_B exactly as in training-mode
// batch norm with weight w * r and bias w * d + b. A plain autograd Node, as ATen's own are,
// rather than torch::autograd::Function: that one demangles its type name on every backward
// call, measured at about a tenth of the whole step at batch size 1.
struct RenormBackward : public StepBackward {  // per_channel rows: w r, mu_B, 1 / sigma_B, r, d
  double eps = 0.0;

  std::string name() const override { return "RenormBackward"; }

  variable_list apply(variable_list&& grads) override {
    if (!grads[0].defined()) return {Tensor(), Tensor(), Tensor()};  // output unused
    const Tensor x = input.unpack();
    const Tensor rows = per_channel.unpack();
    const Tensor grad_out = grads[0].contiguous();
    if (x.numel() == x.size(1)) return single_value(x, rows, grad_out);
    const bool affine = should_compute_output(1) || should_compute_output(2);
    auto [grad_x, grad_folded, grad_bias] = at::native_batch_norm_backward(
        grad_out, x, rows[0], {}, {}, rows[1], rows[2], true, eps,
        {should_compute_output(0), affine, affine});
    Tensor grad_weight;
    if (should_compute_output(1)) {  // d(w r)/dw = r, d(w d + b)/dw = d
      grad_weight = grad_folded;
      AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "renorm_backward", [&] {
        scalar_t* g = grad_weight.data_ptr<scalar_t>();
        const scalar_t* gb = grad_bias.data_ptr<scalar_t>();
        const scalar_t* r = rows.data_ptr<scalar_t>() + 3 * x.size(1);
        const scalar_t* d = r + x.size(1);
        for (int64_t c = 0; c < x.size(1); ++c) g[c] = g[c] * r[c] + gb[c] * d[c];
      });
    }
    return {grad_x, grad_weight, should_compute_output(2) ? grad_bias : Tensor()};
  }

  // One value per channel: x - mu_B is 0, so y = w d + b and the batch-norm backward reduces to
  // grad_x = 0 (exactly, as the general formula gives), grad_w = g d, grad_b = g.
  variable_list single_value(const Tensor& x, const Tensor& rows, const Tensor& grad_out) {
    const int64_t channels = x.size(1);
    Tensor grad_x, grad_weight, grad_bias;
    if (should_compute_output(0)) grad_x = at::zeros_like(x);
    if (should_compute_output(1)) grad_weight = at::empty({channels}, x.options());
    if (should_compute_output(2)) grad_bias = at::empty({channels}, x.options());
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "renorm_backward_single_value", [&] {
      const scalar_t* g = grad_out.data_ptr<scalar_t>();
      const scalar_t* d = rows.data_ptr<scalar_t>() + 4 * channels;
      if (grad_weight.defined()) {
        scalar_t* out = grad_weight.data_ptr<scalar_t>();
        for (int64_t c = 0; c < channels; ++c) out[c] = g[c] * d[c];
      }
      if (grad_bias.defined()) std::copy(g, g + channels, grad_bias.data_ptr<scalar_t>());
    });
    return {grad_x, grad_weight, grad_bias};
  }
};

// record, if given: (6, C) rows batch mean, batch variance, mu, sigma (before the update),
// r clipped, d clipped (0 or 1)
Tensor renorm_step(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor running_mean,
                   Tensor running_std, Tensor num_batches, double momentum, double eps,
                   double rmax, double dmax, const c10::optional<Tensor>& record) {
  const int64_t channels = x.size(1);
  Tensor y = at::empty_like(x);
  Tensor saved = at::empty({5, channels}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "renorm_step", [&] {
    scalar_t* out = saved.data_ptr<scalar_t>();
    scalar_t* rec = data_or_null<scalar_t>(record);
    scalar_t* mu = running_mean.data_ptr<scalar_t>();
    scalar_t* sigma = running_std.data_ptr<scalar_t>();
    const scalar_t* w = weight.data_ptr<scalar_t>();
    const scalar_t* b = bias.data_ptr<scalar_t>();
    normalize_per_channel<scalar_t>(x, y, [&](int64_t c, double mean, double var) {
      const double batch_std = std::sqrt(var + eps);
      const double r_raw = batch_std / sigma[c];
      const double d_raw = (mean - mu[c]) / sigma[c];
      const double r = std::clamp(r_raw, 1.0 / rmax, rmax);
      const double d = std::clamp(d_raw, -dmax, dmax);
      const double rows[5] = {w[c] * r, mean, 1.0 / batch_std, r, d};
      for (int k = 0; k < 5; ++k) out[k * channels + c] = static_cast<scalar_t>(rows[k]);
      if (rec != nullptr) {
        const double recorded[6] = {mean,     var, mu[c], sigma[c], double(r != r_raw),
                                    double(d != d_raw)};
        for (int k = 0; k < 6; ++k) rec[k * channels + c] = static_cast<scalar_t>(recorded[k]);
      }
      mu[c] = static_cast<scalar_t>(mu[c] + momentum * (mean - mu[c]));
      sigma[c] = static_cast<scalar_t>(sigma[c] + momentum * (batch_std - sigma[c]));
      return std::array<double, 3>{mean, w[c] * r / batch_std, w[c] * d + b[c]};
    });
  });
  mark_updated({running_mean, running_std}, num_batches);
  if (auto node = attach_backward<RenormBackward>(y, x, weight, bias)) {
    node->per_channel = torch::autograd::SavedVariable(saved, false);
    node->eps = eps;
  }
  return y;
}

// ---------------------------------------------------------------- moving_average

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
struct ConstantStatsBackward : public StepBackward {  // rows: mean used, 1 / sqrt(var used + eps)
  torch::autograd::SavedVariable weight;

  std::string name() const override { return "MovingAverageNormBackward"; }

  void release_variables() override {
    StepBackward::release_variables();
    weight.reset_data();
  }

  variable_list apply(variable_list&& grads) override {
    if (!grads[0].defined()) return {Tensor(), Tensor(), Tensor()};  // output unused
    const Tensor x = input.unpack();
    const Tensor w = weight.unpack();
    const Tensor rows = per_channel.unpack();
    const Tensor grad_out = grads[0].contiguous();
    const Layout s(x);
    Tensor grad_x = should_compute_output(0) ? at::empty_like(x) : Tensor();
    Tensor grad_weight, grad_bias;
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "moving_average_backward", [&] {
      const scalar_t* center = rows.data_ptr<scalar_t>();
      const scalar_t* invstd = center + s.c;
      const scalar_t* wp = w.data_ptr<scalar_t>();
      std::vector<scalar_t> gain(s.c);
      for (int64_t c = 0; c < s.c; ++c) gain[c] = wp[c] * invstd[c];
      std::vector<double> sum_g(s.c, 0.0), sum_gx(s.c, 0.0);
      constant_stats_backward(grad_out.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(),
                              grad_x.defined() ? grad_x.data_ptr<scalar_t>() : nullptr, s,
                              center, gain.data(), sum_g, sum_gx);
      if (should_compute_output(1)) {
        grad_weight = at::empty({s.c}, x.options());
        scalar_t* out = grad_weight.data_ptr<scalar_t>();
        for (int64_t c = 0; c < s.c; ++c) out[c] = static_cast<scalar_t>(sum_gx[c] * invstd[c]);
      }
      if (should_compute_output(2)) {
        grad_bias = at::empty({s.c}, x.options());
        scalar_t* out = grad_bias.data_ptr<scalar_t>();
        for (int64_t c = 0; c < s.c; ++c) out[c] = static_cast<scalar_t>(sum_g[c]);
      }
    });
    return {grad_x, grad_weight, grad_bias};
  }
};

// The statistics are constants to autograd: normalize with the running ones, updated with this
// batch before or after. One pass for the batch moments, one loop over the channels for the
// diagnostics record and the running updates, one pass for the output.
// record, if given: (4, C) rows batch mean, batch variance, running mean, sqrt(running var +
// eps), the last two before the update.
Tensor moving_average_step(const Tensor& x, const Tensor& weight, const Tensor& bias,
                           Tensor running_mean, Tensor running_var, Tensor num_batches,
                           double momentum, double eps, bool update_before,
                           const c10::optional<Tensor>& record) {
  const int64_t channels = x.size(1), count = Layout(x).count();
  Tensor y = at::empty_like(x);
  Tensor saved = at::empty({2, channels}, x.options());  // mean used, 1 / sqrt(var used + eps)
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "moving_average_step", [&] {
    scalar_t* out = saved.data_ptr<scalar_t>();
    scalar_t* rec = data_or_null<scalar_t>(record);
    scalar_t* mu = running_mean.data_ptr<scalar_t>();
    scalar_t* nu = running_var.data_ptr<scalar_t>();
    const scalar_t* w = weight.data_ptr<scalar_t>();
    const scalar_t* b = bias.data_ptr<scalar_t>();
    normalize_per_channel<scalar_t>(x, y, [&](int64_t c, double mean, double var) {
      if (rec != nullptr) {
        const double recorded[4] = {mean, var, mu[c], std::sqrt(nu[c] + eps)};
        for (int k = 0; k < 4; ++k) rec[k * channels + c] = static_cast<scalar_t>(recorded[k]);
      }
      const scalar_t new_mu = static_cast<scalar_t>(mu[c] + momentum * (mean - mu[c]));
      // one value per channel: no within-batch variance, the running variance stays
      const double unbiased = count > 1 ? var * count / (count - 1) : nu[c];
      const scalar_t new_nu = static_cast<scalar_t>(nu[c] + momentum * (unbiased - nu[c]));
      const scalar_t used_mu = update_before ? new_mu : mu[c];
      const double invstd = 1.0 / std::sqrt((update_before ? new_nu : nu[c]) + eps);
      out[c] = used_mu;
      out[channels + c] = static_cast<scalar_t>(invstd);
      mu[c] = new_mu;
      nu[c] = new_nu;
      return std::array<double, 3>{used_mu, w[c] * invstd, b[c]};
    });
  });
  mark_updated({running_mean, running_var}, num_batches);
  if (auto node = attach_backward<ConstantStatsBackward>(y, x, weight, bias)) {
    node->weight = torch::autograd::SavedVariable(weight, false);
    node->per_channel = torch::autograd::SavedVariable(saved, false);
  }
  return y;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("renorm_step", &renorm_step);
  m.def("moving_average_step", &moving_average_step);
}
