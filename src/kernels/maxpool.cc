// Max pooling, forward and backward, as MindSpore AOT custom kernels (src/kernels/maxpool.py wraps them).
// NCHW float32, square window and stride, padding by -infinity.
//
// Why: MindSpore 2.10's CPU MaxPool and MaxPoolGrad took 3x PyTorch's time in a training step
// (bench/results/train_results.md). The forward keeps the flat index of each output's maximum within its input plane,
// so the backward is one scatter of dy per plane (PyTorch's way), where MaxPoolGrad recomputes the windows.
//
// Kernel signatures (MindSpore's AOT convention: params = inputs then outputs):
//   pool_forward(x, cfg) -> y, argmax (int32)
//   pool_backward(dy, argmax, x, cfg) -> dx        (x for its shape only)
// cfg: int64[6] = kernel, stride, pad top, bottom, left, right; pads of -1: "same" (TensorFlow's: output
// ceil(size / stride), the odd pixel of padding at the end). Ties go to the first maximum in scan order.
// A failure prints its reason to stderr and returns non-zero, which MindSpore raises as an error.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>

#include "thread_pool.h"

namespace {

using metric_learn::Pool;

struct Geometry {
  int64_t planes, ih, iw, oh, ow, kernel, stride, top, left;
};

void same_pads(int64_t size, int64_t kernel, int64_t stride, int64_t *before, int64_t *out) {
  *out = (size + stride - 1) / stride;
  const int64_t total = std::max<int64_t>((*out - 1) * stride + kernel - size, 0);
  *before = total / 2;
}

Geometry geometry(int ndim, const int64_t *shape, const int64_t *cfg) {
  if (ndim != 4) throw std::runtime_error("x must be NCHW");
  Geometry g{shape[0] * shape[1], shape[2], shape[3], 0, 0, cfg[0], cfg[1], cfg[2], cfg[4]};
  if (g.kernel < 1 || g.stride < 1) throw std::runtime_error("kernel and stride must be positive");
  if (cfg[2] < 0) {
    same_pads(g.ih, g.kernel, g.stride, &g.top, &g.oh);
    same_pads(g.iw, g.kernel, g.stride, &g.left, &g.ow);
  } else {
    g.oh = (g.ih + cfg[2] + cfg[3] - g.kernel) / g.stride + 1;
    g.ow = (g.iw + cfg[4] + cfg[5] - g.kernel) / g.stride + 1;
    if (cfg[2] >= g.kernel || cfg[3] >= g.kernel || cfg[4] >= g.kernel || cfg[5] >= g.kernel)
      throw std::runtime_error("padding must be smaller than the window");
  }
  if (g.oh < 1 || g.ow < 1) throw std::runtime_error("the window is larger than the padded input");
  return g;
}

template <class Fn>
void for_planes(int64_t planes, Fn fn) {
  Pool &pool = metric_learn::own_kernels_pool();
  pool.parallel_for((int)std::min<int64_t>(planes, 4 * pool.get_num_threads()), [&](int i, int n) {
    for (int64_t p = planes * i / n, last = planes * (i + 1) / n; p < last; ++p) fn(p);
  });
}

void forward(const Geometry &g, const float *x, float *y, int32_t *argmax) {
  for_planes(g.planes, [&](int64_t p) {
    const float *xp = x + p * g.ih * g.iw;
    float *yp = y + p * g.oh * g.ow;
    int32_t *ap = argmax + p * g.oh * g.ow;
    for (int64_t oy = 0; oy < g.oh; ++oy) {
      const int64_t y0 = std::max<int64_t>(oy * g.stride - g.top, 0);
      const int64_t y1 = std::min<int64_t>(oy * g.stride - g.top + g.kernel, g.ih);
      for (int64_t ox = 0; ox < g.ow; ++ox) {
        const int64_t x0 = std::max<int64_t>(ox * g.stride - g.left, 0);
        const int64_t x1 = std::min<int64_t>(ox * g.stride - g.left + g.kernel, g.iw);
        float best = -std::numeric_limits<float>::infinity();
        int64_t at = y0 * g.iw + x0;
        for (int64_t iy = y0; iy < y1; ++iy)
          for (int64_t ix = x0; ix < x1; ++ix)
            if (xp[iy * g.iw + ix] > best) {
              best = xp[iy * g.iw + ix];
              at = iy * g.iw + ix;
            }
        yp[oy * g.ow + ox] = best;
        ap[oy * g.ow + ox] = (int32_t)at;
      }
    }
  });
}

void backward(const Geometry &g, const float *dy, const int32_t *argmax, float *dx) {
  for_planes(g.planes, [&](int64_t p) {
    float *dxp = dx + p * g.ih * g.iw;
    const float *dyp = dy + p * g.oh * g.ow;
    const int32_t *ap = argmax + p * g.oh * g.ow;
    std::memset(dxp, 0, sizeof(float) * g.ih * g.iw);
    for (int64_t i = 0; i < g.oh * g.ow; ++i) dxp[ap[i]] += dyp[i];
  });
}

int launch(bool is_forward, int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes) {
  try {
    if (nparam != (is_forward ? 4 : 5)) throw std::runtime_error("wrong number of arguments");
    const int x_index = is_forward ? 0 : 2, cfg_index = is_forward ? 1 : 3;
    if (ndims[cfg_index] != 1 || shapes[cfg_index][0] != 6 || std::string(dtypes[cfg_index]) != "int64")
      throw std::runtime_error("cfg must be int64[6]: kernel, stride, pads");
    for (int i = 0; i < nparam; ++i) {
      if (i == cfg_index) continue;
      const bool index = is_forward ? i == 3 : i == 1;
      const std::string want = index ? "int32" : "float32";
      if (std::string(dtypes[i]) != want)
        throw std::runtime_error("argument " + std::to_string(i) + " must be " + want + ", got " + dtypes[i]);
    }
    const Geometry g = geometry(ndims[x_index], shapes[x_index], static_cast<const int64_t *>(params[cfg_index]));
    if (g.ih * g.iw > std::numeric_limits<int32_t>::max()) throw std::runtime_error("plane too large");
    std::lock_guard<std::mutex> lock(metric_learn::own_kernels_mutex());  // one pool: one kernel at a time
    if (is_forward)
      forward(g, static_cast<const float *>(params[0]), static_cast<float *>(params[2]),
              static_cast<int32_t *>(params[3]));
    else
      backward(g, static_cast<const float *>(params[0]), static_cast<const int32_t *>(params[1]),
               static_cast<float *>(params[4]));
    return 0;
  } catch (const std::exception &e) {
    std::string args = metric_learn::shapes_text(nparam, ndims, shapes);
    fprintf(stderr, "maxpool: %s: %s on shapes %s\n", is_forward ? "pool_forward" : "pool_backward", e.what(),
            args.c_str());
    return 1;
  }
}

}  // namespace

extern "C" {
int pool_forward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *, void *) {
  return launch(true, nparam, params, ndims, shapes, dtypes);
}
int pool_backward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *, void *) {
  return launch(false, nparam, params, ndims, shapes, dtypes);
}
}
