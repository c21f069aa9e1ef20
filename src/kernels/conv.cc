// Convolution forward, backward-data and backward-weights on oneDNN's blocked layouts, as MindSpore AOT custom
// kernels (ops.Custom(func_type="aot"); src/kernels/conv.py wraps them, build.py builds them).
//
// Why: MindSpore 2.10's CPU Conv2D hands oneDNN plain NCHW tensors, so oneDNN runs a GEMM-based kernel (or, on
// AVX-512 CPUs, a reference one: src/runtime/env.py). Asked for "any" layout, the same library picks its
// direct JIT kernels on blocked layouts (jit:avx512_core, jit_1x1, brgconv), as PyTorch gets. Each call here
// reorders the plain inputs into the layouts the kernel chose, runs it and reorders the result back.
//
// oneDNN is MindSpore's own libdnnl.so.3, loaded from a private copy (path in METRIC_LEARN_KERNELS_LIB) so that
// its CPU dispatch is its own: METRIC_LEARN_KERNELS_UNCAP=1 lifts the AVX2 cap that MindSpore's copy runs under.
// Threads: METRIC_LEARN_KERNELS_THREADS (read once, at the first call). build.py sets all three before the first
// call. METRIC_LEARN_KERNELS_VERBOSE (or its earlier name METRIC_LEARN_ONEDNN_VERBOSE), set by a user: each new
// convolution prints the oneDNN implementation it runs.
//
// Kernel signature (MindSpore's AOT convention): params = inputs then the output, shapes / ndims alike.
//   conv_forward(x, w, cfg) -> y             cfg: int64[6] = stride h, stride w, pad top, bottom, left, right
//                                            (pads -1: pad_mode "same", computed from x's shape)
//   conv_backward_data(dy, w, cfg, x) -> dx  (x: for its shape only)
//   conv_backward_weights(dy, x, cfg, w) -> dw  (w: for its shape only)
// A failure prints its reason to stderr and returns non-zero, which MindSpore raises as an error.
#include <dlfcn.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "onednn_api.h"
#include "thread_pool.h"

namespace {

using metric_learn::Pool;

struct Api {
#define DECLARE(name, ret, params) ret(*name) params = nullptr;
  ONEDNN_FUNCTIONS(DECLARE)
#undef DECLARE
};


struct Buffer {
  void *ptr = nullptr;
  size_t size = 0;
  void *ensure(size_t n) {
    if (n > size) {
      free(ptr);
      size = (n + 63) / 64 * 64;
      ptr = aligned_alloc(64, size);
      if (!ptr) throw std::runtime_error("out of memory for a " + std::to_string(size) + "-byte reorder buffer");
    }
    return ptr;
  }
  ~Buffer() { free(ptr); }
};

struct Runtime {
  Api api;
  Buffer scratch[3];  // the blocked copies of a kernel's three tensors; kernels run one at a time, so shared
  dnnl_engine_t engine = nullptr;
  dnnl_stream_t stream = nullptr;
  std::unique_ptr<Pool> pool;
  std::mutex mutex;
  std::string error;
};

Runtime *runtime() {
  static Runtime *rt = [] {
    auto *r = new Runtime();
    const char *path = getenv("METRIC_LEARN_KERNELS_LIB");
    void *h = path ? dlopen(path, RTLD_NOW | RTLD_LOCAL) : nullptr;
    if (!h) {
      r->error = std::string("cannot load oneDNN: ") + (path ? dlerror() : "METRIC_LEARN_KERNELS_LIB unset");
      return r;
    }
#define LOAD(name, ret, params)                                        \
  r->api.name = reinterpret_cast<ret(*) params>(dlsym(h, #name));      \
  if (!r->api.name) {                                                  \
    r->error = std::string(path) + " has no " #name;                   \
    return r;                                                          \
  }
    ONEDNN_FUNCTIONS(LOAD)
#undef LOAD
    const char *uncap = getenv("METRIC_LEARN_KERNELS_UNCAP");
    if (uncap && uncap[0] == '1') r->api.dnnl_set_max_cpu_isa(dnnl_cpu_isa_default);
    if (r->api.dnnl_engine_create(&r->engine, dnnl_cpu, 0) != dnnl_success) {
      r->error = "cannot create a oneDNN CPU engine";
      return r;
    }
    const char *t = getenv("METRIC_LEARN_KERNELS_THREADS");
    int n = t ? atoi(t) : (int)std::thread::hardware_concurrency();
    r->pool.reset(new Pool(n > 0 ? n : 1));
    if (r->api.dnnl_threadpool_interop_stream_create(&r->stream, r->engine, r->pool.get()) != dnnl_success)
      r->error = "cannot create a oneDNN stream on a thread pool (is this oneDNN a threadpool build?)";
    return r;
  }();
  return rt;
}

// One tensor argument of a primitive: the user's plain layout and the primitive's; a reorder where they differ.
struct Arg {
  dnnl_memory_desc_t user = nullptr, prim = nullptr;
  dnnl_primitive_t reorder = nullptr;  // user->prim for inputs, prim->user for outputs
  dnnl_memory_t user_mem = nullptr, prim_mem = nullptr;
  size_t bytes = 0;  // of the primitive's layout, where it differs from the user's
};

struct Kernel {
  dnnl_primitive_t prim = nullptr;
  Arg args[3];
  int arg_ids[3];
  std::string impl;
};

void check(dnnl_status_t s, const char *what) {
  if (s != dnnl_success)
    throw std::runtime_error(std::string(what) + " failed (oneDNN status " + std::to_string(s) + ")");
}

void plain_md(Api &a, dnnl_memory_desc_t *md, const int64_t *shape) {
  dnnl_dims_t d = {shape[0], shape[1], shape[2], shape[3]};
  check(a.dnnl_memory_desc_create_with_tag(md, 4, d, dnnl_f32, dnnl_abcd), "memory_desc");
}

void any_md(Api &a, dnnl_memory_desc_t *md, const int64_t *shape) {
  dnnl_dims_t d = {shape[0], shape[1], shape[2], shape[3]};
  check(a.dnnl_memory_desc_create_with_tag(md, 4, d, dnnl_f32, dnnl_format_tag_any), "memory_desc");
}

void bind(Runtime *rt, Arg &arg, dnnl_primitive_desc_t pd, int q, bool output) {
  Api &a = rt->api;
  const_dnnl_memory_desc_t pmd = a.dnnl_primitive_desc_query_md(pd, q, 0);
  check(a.dnnl_memory_desc_clone(&arg.prim, pmd), "clone");
  check(a.dnnl_memory_create(&arg.user_mem, arg.user, rt->engine, nullptr), "memory");
  if (!a.dnnl_memory_desc_equal(arg.user, arg.prim)) {
    arg.bytes = a.dnnl_memory_desc_get_size(arg.prim);
    check(a.dnnl_memory_create(&arg.prim_mem, arg.prim, rt->engine, nullptr), "memory");
    dnnl_primitive_desc_t rpd;
    if (output)
      check(a.dnnl_reorder_primitive_desc_create(&rpd, arg.prim, rt->engine, arg.user, rt->engine, nullptr), "reorder");
    else
      check(a.dnnl_reorder_primitive_desc_create(&rpd, arg.user, rt->engine, arg.prim, rt->engine, nullptr), "reorder");
    check(a.dnnl_primitive_create(&arg.reorder, rpd), "reorder primitive");
    a.dnnl_primitive_desc_destroy(rpd);
  } else {
    check(a.dnnl_memory_create(&arg.prim_mem, arg.prim, rt->engine, nullptr), "memory");
  }
}

// pad_mode "same" (cfg's pads -1): output ceil(in / stride), the total padding split with the extra pixel at
// the end (bottom / right), as MindSpore's Conv2D and TensorFlow's SAME.
void same_padding(const int64_t *xs, const int64_t *ws, const int64_t *cfg, int64_t *pl, int64_t *pr) {
  for (int d = 0; d < 2; ++d) {
    int64_t in = xs[2 + d], k = ws[2 + d], s = cfg[d];
    int64_t total = std::max<int64_t>(((in + s - 1) / s - 1) * s + k - in, 0);
    pl[d] = total / 2;
    pr[d] = total - total / 2;
  }
}

enum Kind { FWD = 0, BWD_DATA = 1, BWD_WEIGHTS = 2 };

// shapes: x (src), w (weights), y (dst); cfg: stride h, w, pad top, bottom, left, right
Kernel *kernel(Runtime *rt, Kind kind, const int64_t *xs, const int64_t *ws, const int64_t *ys, const int64_t *cfg) {
  static std::map<std::vector<int64_t>, Kernel *> cache;
  std::vector<int64_t> key = {kind};
  for (int i = 0; i < 4; ++i) key.push_back(xs[i]);
  for (int i = 0; i < 4; ++i) key.push_back(ws[i]);
  for (int i = 0; i < 6; ++i) key.push_back(cfg[i]);
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  Api &a = rt->api;
  dnnl_memory_desc_t xa, wa, ya;
  any_md(a, &xa, xs);
  any_md(a, &wa, ws);
  any_md(a, &ya, ys);
  dnnl_dims_t strides = {cfg[0], cfg[1]}, dil = {0, 0}, pl = {cfg[2], cfg[4]}, pr = {cfg[3], cfg[5]};
  if (cfg[2] < 0) same_padding(xs, ws, cfg, pl, pr);
  dnnl_primitive_desc_t fwd;
  check(a.dnnl_convolution_forward_primitive_desc_create(&fwd, rt->engine, dnnl_forward_training,
                                                         dnnl_convolution_direct, xa, wa, nullptr, ya, strides, dil,
                                                         pl, pr, nullptr), "conv fwd pd");
  auto *k = new Kernel();
  dnnl_primitive_desc_t pd = fwd;
  if (kind == BWD_DATA)
    check(a.dnnl_convolution_backward_data_primitive_desc_create(&pd, rt->engine, dnnl_convolution_direct, xa, wa,
                                                                 ya, strides, dil, pl, pr, fwd, nullptr), "bwd data pd");
  if (kind == BWD_WEIGHTS)
    check(a.dnnl_convolution_backward_weights_primitive_desc_create(&pd, rt->engine, dnnl_convolution_direct, xa,
                                                                    wa, nullptr, ya, strides, dil, pl, pr, fwd,
                                                                    nullptr), "bwd weights pd");
  const char *impl = nullptr;
  a.dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl);
  k->impl = impl ? impl : "?";
  const int64_t *shapes[3];
  int queries[3];
  if (kind == FWD) {
    shapes[0] = xs; shapes[1] = ws; shapes[2] = ys;
    queries[0] = dnnl_query_src_md; queries[1] = dnnl_query_weights_md; queries[2] = dnnl_query_dst_md;
    k->arg_ids[0] = DNNL_ARG_SRC; k->arg_ids[1] = DNNL_ARG_WEIGHTS; k->arg_ids[2] = DNNL_ARG_DST;
  } else if (kind == BWD_DATA) {
    shapes[0] = ys; shapes[1] = ws; shapes[2] = xs;
    queries[0] = dnnl_query_diff_dst_md; queries[1] = dnnl_query_weights_md; queries[2] = dnnl_query_diff_src_md;
    k->arg_ids[0] = DNNL_ARG_DIFF_DST; k->arg_ids[1] = DNNL_ARG_WEIGHTS; k->arg_ids[2] = DNNL_ARG_DIFF_SRC;
  } else {
    shapes[0] = ys; shapes[1] = xs; shapes[2] = ws;
    queries[0] = dnnl_query_diff_dst_md; queries[1] = dnnl_query_src_md; queries[2] = dnnl_query_diff_weights_md;
    k->arg_ids[0] = DNNL_ARG_DIFF_DST; k->arg_ids[1] = DNNL_ARG_SRC; k->arg_ids[2] = DNNL_ARG_DIFF_WEIGHTS;
  }
  for (int i = 0; i < 3; ++i) {
    plain_md(a, &k->args[i].user, shapes[i]);
    bind(rt, k->args[i], pd, queries[i], i == 2);
  }
  check(a.dnnl_primitive_create(&k->prim, pd), "primitive");
  if (pd != fwd) a.dnnl_primitive_desc_destroy(pd);
  a.dnnl_primitive_desc_destroy(fwd);
  a.dnnl_memory_desc_destroy(xa);
  a.dnnl_memory_desc_destroy(wa);
  a.dnnl_memory_desc_destroy(ya);
  if (getenv("METRIC_LEARN_KERNELS_VERBOSE") || getenv("METRIC_LEARN_ONEDNN_VERBOSE"))
    fprintf(stderr, "conv kind %d x %ldx%ldx%ldx%ld w %ldx%ldx%ldx%ld: %s\n", kind, xs[0], xs[1], xs[2], xs[3],
            ws[0], ws[1], ws[2], ws[3], k->impl.c_str());
  cache[key] = k;
  return k;
}

void run(Runtime *rt, Kernel *k, void *in0, void *in1, void *out) {
  Api &a = rt->api;
  void *ptrs[3] = {in0, in1, out};
  dnnl_exec_arg_t args[3];
  for (int i = 0; i < 3; ++i) {
    Arg &g = k->args[i];
    a.dnnl_memory_set_data_handle(g.user_mem, ptrs[i]);
    a.dnnl_memory_set_data_handle(g.prim_mem, g.reorder ? rt->scratch[i].ensure(g.bytes) : ptrs[i]);
    if (g.reorder && i != 2) {  // inputs: reorder in; the output (2): reorder back below
      dnnl_exec_arg_t r[2] = {{DNNL_ARG_FROM, g.user_mem}, {DNNL_ARG_TO, g.prim_mem}};
      check(a.dnnl_primitive_execute(g.reorder, rt->stream, 2, r), "reorder in");
    }
    args[i] = {k->arg_ids[i], g.prim_mem};
  }
  check(a.dnnl_primitive_execute(k->prim, rt->stream, 3, args), "execute");
  Arg &o = k->args[2];
  if (o.reorder) {
    dnnl_exec_arg_t r[2] = {{DNNL_ARG_FROM, o.prim_mem}, {DNNL_ARG_TO, o.user_mem}};
    check(a.dnnl_primitive_execute(o.reorder, rt->stream, 2, r), "reorder out");
  }
  a.dnnl_stream_wait(rt->stream);
}

int launch(Kind kind, int nparam, void **params, int64_t **shapes, int *ndims) {
  const int out = nparam - 1;
  try {
    if (nparam != (kind == FWD ? 4 : 5)) throw std::runtime_error("wrong number of arguments");
    for (int i = 0; i < nparam; ++i)
      if (ndims[i] != (i == 2 ? 1 : 4) || (i == 2 && shapes[i][0] != 6)) throw std::runtime_error("wrong ranks");
    Runtime *rt = runtime();
    if (!rt->error.empty()) throw std::runtime_error(rt->error);
    std::lock_guard<std::mutex> lock(rt->mutex);  // one pool and one stream: kernels run one at a time
    const int64_t *cfg = static_cast<const int64_t *>(params[2]);
    Kernel *k;
    if (kind == FWD)  // x, w, cfg -> y
      k = kernel(rt, kind, shapes[0], shapes[1], shapes[out], cfg);
    else if (kind == BWD_DATA)  // dy, w, cfg, x -> dx
      k = kernel(rt, kind, shapes[out], shapes[1], shapes[0], cfg);
    else  // dy, x, cfg, w -> dw
      k = kernel(rt, kind, shapes[1], shapes[out], shapes[0], cfg);
    run(rt, k, params[0], params[1], params[out]);
    return 0;
  } catch (const std::exception &e) {
    std::string args = metric_learn::shapes_text(nparam, ndims, shapes);
    if (nparam > 2 && ndims[2] == 1 && shapes[2][0] == 6) {
      const int64_t *cfg = static_cast<const int64_t *>(params[2]);
      args += "; stride " + std::to_string(cfg[0]) + "x" + std::to_string(cfg[1]) + ", pads " +
              std::to_string(cfg[2]) + " " + std::to_string(cfg[3]) + " " + std::to_string(cfg[4]) + " " +
              std::to_string(cfg[5]);
    }
    fprintf(stderr, "conv: %s: %s on shapes %s\n", kind == FWD ? "conv_forward" :
            kind == BWD_DATA ? "conv_backward_data" : "conv_backward_weights", e.what(), args.c_str());
    return 1;
  }
}

}  // namespace

extern "C" {
int conv_forward(int nparam, void **params, int *ndims, int64_t **shapes, const char **, void *, void *) {
  return launch(FWD, nparam, params, shapes, ndims);
}
int conv_backward_data(int nparam, void **params, int *ndims, int64_t **shapes, const char **, void *, void *) {
  return launch(BWD_DATA, nparam, params, shapes, ndims);
}
int conv_backward_weights(int nparam, void **params, int *ndims, int64_t **shapes, const char **, void *, void *) {
  return launch(BWD_WEIGHTS, nparam, params, shapes, ndims);
}
}
