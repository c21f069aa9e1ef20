// BatchNorm in training mode, optionally followed by ReLU, forward and backward, as MindSpore AOT custom kernels
// (src/kernels/batchnorm.py wraps them). NCHW float32; statistics per channel over N x H x W.
//
// Why: MindSpore 2.10's CPU BatchNorm runs oneDNN's generic `ncsp_bnorm:any` on NCHW, and its BatchNormGrad took
// twice PyTorch's time (bench/results/train_results.md); the ReLU after it is one more pass over the tensor each way.
// Here, per channel (a job of the pool), two passes compute the mean and the variance and one writes
// y = relu(gamma * (x - mean) * invstd + beta); the backward, on blocks of channels that fit L2 and image by image
// (a block's planes of one image are contiguous, where one channel's small planes are scattered), writes the
// masked dy into dx, sums it and its product with x - mean, and turns dx into the input gradient in place.
// Sums run in float lanes added into double (Lanes). The time against MindSpore's BatchNorm, BatchNormGrad, ReLU
// and ReluGrad: bench/results/train_results.md; against PyTorch's, layer by layer: bench/bench_batchnorm.py.
//
// Kernel signatures (MindSpore's AOT convention: params = inputs then outputs):
//   bn_forward(x, gamma, beta, moving_mean, moving_variance, cfg)
//       -> y, mean, invstd, new_moving_mean, new_moving_variance
//   The new moving statistics are also written into moving_mean and moving_variance themselves (the Parameters'
//   own memory, as momentum.cc writes the weights): CpuBatchNorm2d keeps them so, without an Assign per
//   statistic in the graph (106 of them in ResNet-50 took graph compilation 4-5 s, about half its time on CPU).
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
#include <vector>

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

// Blocks [c0, c1) of at most `block` channels within each job's channels (jobs of the pool: a few per thread).
// The backward walks a block's planes image by image: with small planes (8 x 8 and below) one channel's planes
// are scattered 256-byte pieces, while a block's planes of one image are one contiguous run.
template <class Fn>
void for_channel_blocks(int64_t channels, int64_t block, Fn fn) {
  Pool *pool = &metric_learn::own_kernels_pool();
  int jobs = (int)std::min<int64_t>(channels, 4 * pool->get_num_threads());
  pool->parallel_for(jobs, [&](int i, int n) {
    int64_t first = channels * i / n, last = channels * (i + 1) / n;
    for (int64_t c0 = first; c0 < last; c0 += block) fn(c0, std::min(last, c0 + block));
  });
}

// Each channel on its own (blocks of 1).
template <class Fn>
void for_channels(int64_t channels, Fn fn) {
  for_channel_blocks(channels, 1, [&](int64_t c, int64_t) { fn(c); });
}

// Channels per block: a block's dy, x, y and dx stay in L2 (its 384 KB) between the backward's two passes.
inline int64_t l2_block(const Shape &s) {
  return std::max<int64_t>(1, (384 << 10) / std::max<int64_t>(1, s.n * s.hw * 4 * int64_t(sizeof(float))));
}

// Per-channel sums in 8 float lanes (the loops vectorise without reassociation flags), added into a double
// total once a lane holds kFlush terms: the float rounding stays that of kFlush additions whatever N x H x W,
// and a channel of small planes (4 x 4 at 64 px) pays one reduction, not one per plane.
constexpr int64_t kFlush = 128;

struct Lanes {
  float v[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  double total = 0;
  int64_t pending = 0;  // terms per lane since the last flush

  void after_plane(int64_t len) {
    pending += (len + 7) / 8;
    if (pending >= kFlush) flush();
  }
  double flush() {
    for (int k = 0; k < 8; ++k) {
      total += v[k];
      v[k] = 0;
    }
    pending = 0;
    return total;
  }
};

// The terms of one plane into the lanes: term i into lane i % 8, the tail (len % 8 terms) into the first lanes.
inline void add_plane(const float *__restrict p, int64_t len, float *__restrict acc) {
  int64_t i = 0;
  for (; i + 8 <= len; i += 8)
    for (int k = 0; k < 8; ++k) acc[k] += p[i + k];
  for (int k = 0; i < len; ++i, ++k) acc[k] += p[i];
}

inline void add_plane_sq_dev(const float *__restrict p, int64_t len, float mean, float *__restrict acc) {
  int64_t i = 0;
  for (; i + 8 <= len; i += 8)
    for (int k = 0; k < 8; ++k) {
      const float d = p[i + k] - mean;
      acc[k] += d * d;
    }
  for (int k = 0; i < len; ++i, ++k) {
    const float d = p[i] - mean;
    acc[k] += d * d;
  }
}

void forward(void **params, int *ndims, int64_t **shapes) {
  Shape s = nchw(ndims[0], shapes[0]);
  const float *x = static_cast<const float *>(params[0]), *gamma = static_cast<const float *>(params[1]),
              *beta = static_cast<const float *>(params[2]), *cfg = static_cast<const float *>(params[5]);
  float *moving_mean = static_cast<float *>(params[3]), *moving_var = static_cast<float *>(params[4]);
  float *y = static_cast<float *>(params[6]), *mean_out = static_cast<float *>(params[7]),
        *invstd_out = static_cast<float *>(params[8]), *new_mean = static_cast<float *>(params[9]),
        *new_var = static_cast<float *>(params[10]);
  const float eps = cfg[0], momentum = cfg[1];
  const bool relu = cfg[2] != 0;
  const double m = double(s.n) * s.hw;
  for_channels(s.c, [&](int64_t c) {
    Lanes sums, squares;
    for (int64_t n = 0; n < s.n; ++n) {
      add_plane(x + (n * s.c + c) * s.hw, s.hw, sums.v);
      sums.after_plane(s.hw);
    }
    const float mean = float(sums.flush() / m);
    for (int64_t n = 0; n < s.n; ++n) {
      add_plane_sq_dev(x + (n * s.c + c) * s.hw, s.hw, mean, squares.v);
      squares.after_plane(s.hw);
    }
    const double sq = squares.flush();
    const double var = sq / m;
    const float invstd = float(1.0 / std::sqrt(var + eps));
    const float scale = gamma[c] * invstd, shift = beta[c] - mean * scale;
    for (int64_t n = 0; n < s.n; ++n) {
      const float *__restrict xp = x + (n * s.c + c) * s.hw;
      float *__restrict yp = y + (n * s.c + c) * s.hw;
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
    moving_mean[c] = new_mean[c];  // in place: each channel reads its own statistic before it is written
    moving_var[c] = new_var[c];
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

// The terms dz and dz * (x - mean) of one plane into two sets of lanes (as add_plane).
inline void add_plane_grad(const float *__restrict dz, const float *__restrict x, float mean, int64_t len,
                           float *__restrict a, float *__restrict b) {
  int64_t i = 0;
  for (; i + 8 <= len; i += 8)
    for (int k = 0; k < 8; ++k) {
      a[k] += dz[i + k];
      b[k] += dz[i + k] * (x[i + k] - mean);
    }
  for (int k = 0; i < len; ++i, ++k) {
    a[k] += dz[i];
    b[k] += dz[i] * (x[i] - mean);
  }
}

// dx = k_dz * (dz - mean_dz - (x - mean) * k_xc) over one plane; `dz` may be `dx` (in place).
inline void plane_input_grad(const float *dz, const float *__restrict x, float mean, float k_dz, float mean_dz,
                             float k_xc, int64_t len, float *dx) {
  if (dz == dx) {
    float *__restrict out = dx;
    for (int64_t i = 0; i < len; ++i) out[i] = k_dz * (out[i] - mean_dz - (x[i] - mean) * k_xc);
  } else {
    const float *__restrict in = dz;
    float *__restrict out = dx;
    for (int64_t i = 0; i < len; ++i) out[i] = k_dz * (in[i] - mean_dz - (x[i] - mean) * k_xc);
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
  for_channel_blocks(s.c, l2_block(s), [&](int64_t c0, int64_t c1) {
    // Pass 1, image by image: dz (dy, or with the ReLU dy masked by y > 0, written into dx first), and the
    // per-channel sums of dz and dz * (x - mean).
    std::vector<Lanes> dz_sums(c1 - c0), dz_xc_sums(c1 - c0);
    for (int64_t n = 0; n < s.n; ++n)
      for (int64_t c = c0; c < c1; ++c) {
        const int64_t off = (n * s.c + c) * s.hw;
        const float *dz = dy + off;
        if (relu) {
          const float *__restrict dyp = dy + off, *__restrict yp = y + off;
          float *__restrict dzp = dx + off;
          for (int64_t i = 0; i < s.hw; ++i) dzp[i] = relu_mask(dyp[i], yp[i]);
          dz = dx + off;
        }
        add_plane_grad(dz, x + off, mean[c], s.hw, dz_sums[c - c0].v, dz_xc_sums[c - c0].v);
        dz_sums[c - c0].after_plane(s.hw);
        dz_xc_sums[c - c0].after_plane(s.hw);
      }
    // dx = gamma * invstd * (dz - mean(dz) - (x - mean) * invstd^2 * mean(dz * (x - mean))), per channel
    // k_dz * (dz - mean_dz - (x - mean) * k_xc).
    std::vector<float> k_dz(c1 - c0), mean_dz(c1 - c0), k_xc(c1 - c0);
    for (int64_t c = c0; c < c1; ++c) {
      const double sum_dz = dz_sums[c - c0].flush(), sum_dz_xc = dz_xc_sums[c - c0].flush();
      const float is = invstd[c];
      dbeta[c] = float(sum_dz);
      dgamma[c] = float(sum_dz_xc * is);
      k_dz[c - c0] = gamma[c] * is;
      mean_dz[c - c0] = float(sum_dz / m);
      k_xc[c - c0] = float(sum_dz_xc / m) * is * is;
    }
    // Pass 2, image by image; with the ReLU, dz is in dx already and is replaced in place.
    for (int64_t n = 0; n < s.n; ++n)
      for (int64_t c = c0; c < c1; ++c) {
        const int64_t off = (n * s.c + c) * s.hw;
        plane_input_grad(relu ? dx + off : dy + off, x + off, mean[c], k_dz[c - c0], mean_dz[c - c0],
                         k_xc[c - c0], s.hw, dx + off);
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
