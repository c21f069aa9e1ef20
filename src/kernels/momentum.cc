// Momentum SGD for every parameter in one call, in place: a MindSpore AOT custom kernel
// (src/kernels/momentum.py wraps it).
//
// Why: nn.Momentum runs, per parameter, a Mul and an AddN for the weight decay, a Mul by 1 / loss scale where
// the scale is not 1, and ApplyMomentum: 2-4 kernels for each of ResNet-50's 161 tensors, 55 ms of a 64² training
// step against PyTorch's 15 (bench/results/train_results.md). Here one kernel reads and writes each element once,
// the tensors cut into chunks shared by the pool:
//   g' = (w * wd + g) * inv_scale     (wd: nn.Momentum's, i.e. weight_decay * loss scale; no product where
//                                      wd = 0 or inv_scale = 1, as nn.Momentum skips them)
//   v  = v * momentum + g'            (ApplyMomentum, use_nesterov=False)
//   w  = w - lr * v
// with MindSpore's operations in MindSpore's order, so the result equals nn.Momentum's bit for bit.
//
// Signature (MindSpore's AOT convention: params = inputs then outputs), for k parameters:
//   momentum_update(w_0..w_{k-1}, v_0..v_{k-1}, g_0..g_{k-1}, lr, hyper) -> done
// lr: float32 (k) or (1) for all; hyper: float32 (k, 3) = momentum, weight decay, 1 / loss scale per parameter;
// done: float32 (1), 0. w and v (the Parameters' own memory) are written in place; `done` is what the graph
// keeps and orders by. A failure prints its reason to stderr and returns non-zero, which MindSpore raises.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "thread_pool.h"

namespace {

constexpr int64_t kChunk = 1 << 16;  // elements per job: 256 KB of each of w, v, g

struct Job {
  int tensor;
  int64_t begin, end;
};

int64_t elements(int ndim, const int64_t *shape) {
  int64_t n = 1;
  for (int d = 0; d < ndim; ++d) n *= shape[d];
  return n;
}

void update(float *__restrict w, float *__restrict v, const float *__restrict g, int64_t begin, int64_t end,
            float lr, float momentum, float wd, float inv_scale) {
  if (wd != 0 && inv_scale != 1) {
    for (int64_t i = begin; i < end; ++i) {
      v[i] = v[i] * momentum + (w[i] * wd + g[i]) * inv_scale;
      w[i] = w[i] - lr * v[i];
    }
  } else if (wd != 0) {
    for (int64_t i = begin; i < end; ++i) {
      v[i] = v[i] * momentum + (w[i] * wd + g[i]);
      w[i] = w[i] - lr * v[i];
    }
  } else if (inv_scale != 1) {
    for (int64_t i = begin; i < end; ++i) {
      v[i] = v[i] * momentum + g[i] * inv_scale;
      w[i] = w[i] - lr * v[i];
    }
  } else {
    for (int64_t i = begin; i < end; ++i) {
      v[i] = v[i] * momentum + g[i];
      w[i] = w[i] - lr * v[i];
    }
  }
}

void run(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes) {
  if (nparam < 6 || (nparam - 3) % 3 != 0) throw std::runtime_error("wrong number of arguments");
  const int k = (nparam - 3) / 3;
  for (int i = 0; i < nparam; ++i)
    if (std::string(dtypes[i]) != "float32") throw std::runtime_error(std::string("float32 only, got ") + dtypes[i]);
  const int lr_at = 3 * k, hyper_at = 3 * k + 1;
  const int64_t lrs = elements(ndims[lr_at], shapes[lr_at]);
  if (lrs != 1 && lrs != k) throw std::runtime_error("lr must hold 1 or one value per parameter");
  if (ndims[hyper_at] != 2 || shapes[hyper_at][0] != k || shapes[hyper_at][1] != 3)
    throw std::runtime_error("hyper must be (parameters, 3)");
  std::vector<Job> jobs;
  for (int t = 0; t < k; ++t) {
    const int64_t n = elements(ndims[t], shapes[t]);
    for (int of : {k, 2 * k})
      if (elements(ndims[t + of], shapes[t + of]) != n)
        throw std::runtime_error("parameter " + std::to_string(t) + ": moment or gradient of another size");
    for (int64_t b = 0; b < n; b += kChunk) jobs.push_back({t, b, std::min(n, b + kChunk)});
  }
  const float *lr = static_cast<const float *>(params[lr_at]), *hyper = static_cast<const float *>(params[hyper_at]);
  metric_learn::Pool &pool = metric_learn::own_kernels_pool();
  pool.parallel_for((int)jobs.size(), [&](int j, int) {
    const Job &job = jobs[j];
    const float *h = hyper + 3 * job.tensor;
    update(static_cast<float *>(params[job.tensor]), static_cast<float *>(params[k + job.tensor]),
           static_cast<const float *>(params[2 * k + job.tensor]), job.begin, job.end, lr[lrs == 1 ? 0 : job.tensor],
           h[0], h[1], h[2]);
  });
  static_cast<float *>(params[nparam - 1])[0] = 0;
}

}  // namespace

extern "C" int momentum_update(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *,
                               void *) {
  try {
    std::lock_guard<std::mutex> lock(metric_learn::own_kernels_mutex());  // one pool: one kernel at a time
    run(nparam, params, ndims, shapes, dtypes);
    return 0;
  } catch (const std::exception &e) {
    std::string args = metric_learn::shapes_text(nparam, ndims, shapes);
    fprintf(stderr, "momentum: momentum_update: %s on shapes %s\n", e.what(), args.c_str());
    return 1;
  }
}
