// BatchNorm in training mode, optionally followed by ReLU, forward and backward, as MindSpore AOT custom kernels
// (src/models/batchnorm.py wraps them). NCHW float32; statistics per channel over N x H x W.
//
// Why: MindSpore 2.10's CPU BatchNorm runs oneDNN's generic `ncsp_bnorm:any` on NCHW, and its BatchNormGrad took
// twice PyTorch's time (bench/train_results.md); the ReLU after it is one more pass over the tensor each way.
// Here, per channel (a job of the pool), two passes compute the mean and the variance and one writes
// y = relu(gamma * (x - mean) * invstd + beta); the backward writes the masked dy into dx, sums it and its product
// with x - mean, and turns dx into the input gradient in place. A channel's planes stay in L2 between the passes.
// The time against MindSpore's BatchNorm, BatchNormGrad, ReLU and ReluGrad: bench/train_results.md.
//
// Kernel signatures (MindSpore's AOT convention: params = inputs then outputs):
//   bn_forward(x, gamma, beta, moving_mean, moving_variance, cfg)
//       -> y, mean, invstd, new_moving_mean, new_moving_variance
//   bn_backward(dy, x, y, gamma, mean, invstd, cfg) -> dx, dgamma, dbeta
// cfg: float32[3] = eps, momentum (MindSpore's: moving = momentum * moving + (1 - momentum) * batch), relu (0/1).
// The moving variance takes the unbiased batch variance (M / (M - 1) times the one normalising), as MindSpore's.
// A failure prints its reason to stderr and returns non-zero, which MindSpore raises as an error.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>

#include "thread_pool.h"

namespace {

using metric_learn::Pool;

struct Shape {
  int64_t n, c, hw;
};

Shape nchw(int ndim, const int64_t *shape) {
  if (ndim != 4) throw std::runtime_error("x must be NCHW");
  return {shape[0], shape[1], shape[2] * shape[3]};
}

// Channels [first, last) of job `i` of `jobs`.
template <class Fn>
void for_channels(int64_t channels, Fn fn) {
  Pool *pool = &metric_learn::own_kernels_pool();
  int jobs = (int)std::min<int64_t>(channels, 4 * pool->get_num_threads());
  pool->parallel_for(jobs, [&](int i, int n) {
    int64_t first = channels * i / n, last = channels * (i + 1) / n;
    for (int64_t c = first; c < last; ++c) fn(c);
  });
}

// Sum of a plane in 8 float lanes (vectorisable without reassociation flags), returned in double.
inline double plane_sum(const float *p, int64_t len) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= len; i += 8)
    for (int k = 0; k < 8; ++k) acc[k] += p[i + k];
  double s = 0;
  for (int k = 0; k < 8; ++k) s += acc[k];
  for (; i < len; ++i) s += p[i];
  return s;
}

inline double plane_sq_dev(const float *p, int64_t len, float mean) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= len; i += 8)
    for (int k = 0; k < 8; ++k) {
      float d = p[i + k] - mean;
      acc[k] += d * d;
    }
  double s = 0;
  for (int k = 0; k < 8; ++k) s += acc[k];
  for (; i < len; ++i) s += double(p[i] - mean) * (p[i] - mean);
  return s;
}

void forward(void **params, int *ndims, int64_t **shapes) {
  Shape s = nchw(ndims[0], shapes[0]);
  const float *x = static_cast<const float *>(params[0]), *gamma = static_cast<const float *>(params[1]),
              *beta = static_cast<const float *>(params[2]), *moving_mean = static_cast<const float *>(params[3]),
              *moving_var = static_cast<const float *>(params[4]), *cfg = static_cast<const float *>(params[5]);
  float *y = static_cast<float *>(params[6]), *mean_out = static_cast<float *>(params[7]),
        *invstd_out = static_cast<float *>(params[8]), *new_mean = static_cast<float *>(params[9]),
        *new_var = static_cast<float *>(params[10]);
  const float eps = cfg[0], momentum = cfg[1];
  const bool relu = cfg[2] != 0;
  const double m = double(s.n) * s.hw;
  for_channels(s.c, [&](int64_t c) {
    double sum = 0;
    for (int64_t n = 0; n < s.n; ++n) sum += plane_sum(x + (n * s.c + c) * s.hw, s.hw);
    const float mean = float(sum / m);
    double sq = 0;
    for (int64_t n = 0; n < s.n; ++n) sq += plane_sq_dev(x + (n * s.c + c) * s.hw, s.hw, mean);
    const double var = sq / m;
    const float invstd = float(1.0 / std::sqrt(var + eps));
    const float scale = gamma[c] * invstd, shift = beta[c] - mean * scale;
    for (int64_t n = 0; n < s.n; ++n) {
      const float *xp = x + (n * s.c + c) * s.hw;
      float *yp = y + (n * s.c + c) * s.hw;
      if (relu)
        for (int64_t i = 0; i < s.hw; ++i) yp[i] = std::max(xp[i] * scale + shift, 0.0f);
      else
        for (int64_t i = 0; i < s.hw; ++i) yp[i] = xp[i] * scale + shift;
    }
    mean_out[c] = mean;
    invstd_out[c] = invstd;
    const double unbiased = m > 1 ? sq / (m - 1) : var;
    new_mean[c] = float(momentum * moving_mean[c] + (1.0 - momentum) * mean);
    new_var[c] = float(momentum * moving_var[c] + (1.0 - momentum) * unbiased);
  });
}

// dy masked by the ReLU (branch-free: the mask is data, a branch on it mispredicts every other element).
// dy where y > 0, else 0, as a bit mask: the compiler vectorises it (a select on y made it branch).
inline float relu_mask(float dy, float y) {
  uint32_t bits;
  std::memcpy(&bits, &dy, sizeof bits);
  bits &= 0u - uint32_t(y > 0);
  float out;
  std::memcpy(&out, &bits, sizeof out);
  return out;
}

// Sums of dz and of dz * (x - mean) over a plane, in 8 float lanes, returned in double.
inline void plane_grad_sums(const float *dz, const float *x, float mean, int64_t len, double *sum_dz,
                            double *sum_dz_xc) {
  float a[8] = {0, 0, 0, 0, 0, 0, 0, 0}, b[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= len; i += 8)
    for (int k = 0; k < 8; ++k) {
      a[k] += dz[i + k];
      b[k] += dz[i + k] * (x[i + k] - mean);
    }
  for (int k = 0; k < 8; ++k) {
    *sum_dz += a[k];
    *sum_dz_xc += b[k];
  }
  for (; i < len; ++i) {
    *sum_dz += dz[i];
    *sum_dz_xc += double(dz[i]) * (x[i] - mean);
  }
}

void backward(void **params, int *ndims, int64_t **shapes) {
  Shape s = nchw(ndims[0], shapes[0]);
  const float *dy = static_cast<const float *>(params[0]), *x = static_cast<const float *>(params[1]),
              *y = static_cast<const float *>(params[2]), *gamma = static_cast<const float *>(params[3]),
              *mean = static_cast<const float *>(params[4]), *invstd = static_cast<const float *>(params[5]),
              *cfg = static_cast<const float *>(params[6]);
  float *dx = static_cast<float *>(params[7]), *dgamma = static_cast<float *>(params[8]),
        *dbeta = static_cast<float *>(params[9]);
  const bool relu = cfg[2] != 0;
  const double m = double(s.n) * s.hw;
  for_channels(s.c, [&](int64_t c) {
    const float mu = mean[c], is = invstd[c];
    // dz: dy, or with the ReLU dy masked by y > 0, written into dx first.
    double sum_dz = 0, sum_dz_xc = 0;
    for (int64_t n = 0; n < s.n; ++n) {
      const int64_t off = (n * s.c + c) * s.hw;
      const float *dz = dy + off;
      if (relu) {
        for (int64_t i = 0; i < s.hw; ++i) dx[off + i] = relu_mask(dy[off + i], y[off + i]);
        dz = dx + off;
      }
      plane_grad_sums(dz, x + off, mu, s.hw, &sum_dz, &sum_dz_xc);
    }
    dbeta[c] = float(sum_dz);
    dgamma[c] = float(sum_dz_xc * is);
    // dx = gamma * invstd * (dz - mean(dz) - (x - mean) * invstd^2 * mean(dz * (x - mean)))
    const float k_dz = gamma[c] * is, mean_dz = float(sum_dz / m), k_xc = float(sum_dz_xc / m) * is * is;
    for (int64_t n = 0; n < s.n; ++n) {
      const int64_t off = (n * s.c + c) * s.hw;
      float *out = dx + off;
      const float *xp = x + off;
      if (relu)  // dz is in dx: in place
        for (int64_t i = 0; i < s.hw; ++i) out[i] = k_dz * (out[i] - mean_dz - (xp[i] - mu) * k_xc);
      else
        for (int64_t i = 0; i < s.hw; ++i) out[i] = k_dz * (dy[off + i] - mean_dz - (xp[i] - mu) * k_xc);
    }
  });
}

int launch(bool is_forward, int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes) {
  try {
    if (nparam != (is_forward ? 11 : 10)) throw std::runtime_error("wrong number of arguments");
    for (int i = 0; i < nparam; ++i)
      if (std::string(dtypes[i]) != "float32")
        throw std::runtime_error(std::string("float32 only, got ") + dtypes[i]);
    const int cfg = is_forward ? 5 : 6;
    if (ndims[cfg] != 1 || shapes[cfg][0] != 3) throw std::runtime_error("cfg must hold eps, momentum, relu");
    const int64_t channels = nchw(ndims[0], shapes[0]).c;
    for (int i = 1; i < nparam; ++i) {
      const bool full = is_forward ? i == 6 : i <= 2 || i == 7;
      if (i == cfg || full) continue;
      if (ndims[i] != 1 || shapes[i][0] != channels) throw std::runtime_error("per-channel tensors must be (C,)");
    }
    std::lock_guard<std::mutex> lock(metric_learn::own_kernels_mutex());  // one pool: one kernel at a time
    if (is_forward)
      forward(params, ndims, shapes);
    else
      backward(params, ndims, shapes);
    return 0;
  } catch (const std::exception &e) {
    std::string args = metric_learn::shapes_text(nparam, ndims, shapes);
    fprintf(stderr, "batchnorm: %s: %s on shapes %s\n", is_forward ? "bn_forward" : "bn_backward", e.what(),
            args.c_str());
    return 1;
  }
}

}  // namespace

extern "C" {
int bn_forward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *, void *) {
  return launch(true, nparam, params, ndims, shapes, dtypes);
}
int bn_backward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *, void *) {
  return launch(false, nparam, params, ndims, shapes, dtypes);
}
}
