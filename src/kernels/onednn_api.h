// The part of oneDNN 3.x's C API that conv.cc calls, declared here so that building it needs a C++
// compiler and nothing else (MindSpore ships libdnnl.so.3 but not its headers).
//
// The values are the library's ABI, which oneDNN keeps within a major version; they were compared with the
// official headers of oneDNN 3.9 and 3.11 (pip's onednn-devel 2025.3.0 and 2026.0.0), between which lies
// MindSpore 2.10's 3.10. Functions are looked up by name at run time (dlsym), so none is linked.
#ifndef METRIC_LEARN_ONEDNN_API_H_
#define METRIC_LEARN_ONEDNN_API_H_

#include <cstddef>
#include <cstdint>
#include <functional>

extern "C" {
typedef struct dnnl_engine *dnnl_engine_t;
typedef struct dnnl_stream *dnnl_stream_t;
typedef struct dnnl_memory_desc *dnnl_memory_desc_t;
typedef const struct dnnl_memory_desc *const_dnnl_memory_desc_t;
typedef struct dnnl_memory *dnnl_memory_t;
typedef struct dnnl_primitive_desc *dnnl_primitive_desc_t;
typedef const struct dnnl_primitive_desc *const_dnnl_primitive_desc_t;
typedef struct dnnl_primitive *dnnl_primitive_t;
typedef const struct dnnl_primitive *const_dnnl_primitive_t;
typedef const struct dnnl_primitive_attr *const_dnnl_primitive_attr_t;

typedef int64_t dnnl_dims_t[12];  // DNNL_MAX_NDIMS
typedef int dnnl_status_t;
typedef struct {
  int arg;
  dnnl_memory_t memory;
} dnnl_exec_arg_t;

enum : int {
  dnnl_success = 0,
  dnnl_format_tag_any = 1,
  dnnl_abcd = 5,
  dnnl_f32 = 3,
  dnnl_cpu = 1,  // engine kind
  dnnl_forward_training = 64,
  dnnl_backward_data = 160,
  dnnl_backward_weights = 192,
  dnnl_convolution_direct = 1,
  dnnl_cpu_isa_default = 0,  // no cap: the best ISA the CPU has
  dnnl_query_impl_info_str = 8,
  dnnl_query_src_md = 129,
  dnnl_query_diff_src_md = 130,
  dnnl_query_weights_md = 131,
  dnnl_query_diff_weights_md = 132,
  dnnl_query_dst_md = 133,
  dnnl_query_diff_dst_md = 134,
  DNNL_ARG_SRC = 1,
  DNNL_ARG_FROM = 1,
  DNNL_ARG_DST = 17,
  DNNL_ARG_TO = 17,
  DNNL_ARG_WEIGHTS = 33,
  DNNL_ARG_DIFF_SRC = 129,
  DNNL_ARG_DIFF_DST = 145,
  DNNL_ARG_DIFF_WEIGHTS = 161,
};

// The functions, as X(name, return type, parameters): conv.cc turns this list into function pointers.
#define ONEDNN_FUNCTIONS(X)                                                                                      \
  X(dnnl_engine_create, dnnl_status_t, (dnnl_engine_t *, int kind, size_t index))                                \
  X(dnnl_threadpool_interop_stream_create, dnnl_status_t, (dnnl_stream_t *, dnnl_engine_t, void *threadpool))    \
  X(dnnl_memory_desc_create_with_tag, dnnl_status_t,                                                             \
    (dnnl_memory_desc_t *, int ndims, const dnnl_dims_t dims, int data_type, int tag))                           \
  X(dnnl_memory_desc_clone, dnnl_status_t, (dnnl_memory_desc_t *, const_dnnl_memory_desc_t))                     \
  X(dnnl_memory_desc_destroy, dnnl_status_t, (dnnl_memory_desc_t))                                               \
  X(dnnl_memory_desc_equal, int, (const_dnnl_memory_desc_t, const_dnnl_memory_desc_t))                           \
  X(dnnl_memory_desc_get_size, size_t, (const_dnnl_memory_desc_t))                                               \
  X(dnnl_convolution_forward_primitive_desc_create, dnnl_status_t,                                               \
    (dnnl_primitive_desc_t *, dnnl_engine_t, int prop_kind, int alg_kind, const_dnnl_memory_desc_t src,          \
     const_dnnl_memory_desc_t weights, const_dnnl_memory_desc_t bias, const_dnnl_memory_desc_t dst,              \
     const dnnl_dims_t strides, const dnnl_dims_t dilates, const dnnl_dims_t padding_l,                          \
     const dnnl_dims_t padding_r, const_dnnl_primitive_attr_t))                                                  \
  X(dnnl_convolution_backward_data_primitive_desc_create, dnnl_status_t,                                         \
    (dnnl_primitive_desc_t *, dnnl_engine_t, int alg_kind, const_dnnl_memory_desc_t diff_src,                    \
     const_dnnl_memory_desc_t weights, const_dnnl_memory_desc_t diff_dst, const dnnl_dims_t strides,             \
     const dnnl_dims_t dilates, const dnnl_dims_t padding_l, const dnnl_dims_t padding_r,                        \
     const_dnnl_primitive_desc_t hint_fwd_pd, const_dnnl_primitive_attr_t))                                      \
  X(dnnl_convolution_backward_weights_primitive_desc_create, dnnl_status_t,                                      \
    (dnnl_primitive_desc_t *, dnnl_engine_t, int alg_kind, const_dnnl_memory_desc_t src,                         \
     const_dnnl_memory_desc_t diff_weights, const_dnnl_memory_desc_t diff_bias,                                  \
     const_dnnl_memory_desc_t diff_dst, const dnnl_dims_t strides, const dnnl_dims_t dilates,                    \
     const dnnl_dims_t padding_l, const dnnl_dims_t padding_r, const_dnnl_primitive_desc_t hint_fwd_pd,          \
     const_dnnl_primitive_attr_t))                                                                               \
  X(dnnl_primitive_desc_query_md, const_dnnl_memory_desc_t, (const_dnnl_primitive_desc_t, int what, int index))  \
  X(dnnl_primitive_desc_query, dnnl_status_t, (const_dnnl_primitive_desc_t, int what, int index, void *result))  \
  X(dnnl_primitive_desc_destroy, dnnl_status_t, (dnnl_primitive_desc_t))                                         \
  X(dnnl_reorder_primitive_desc_create, dnnl_status_t,                                                           \
    (dnnl_primitive_desc_t *, const_dnnl_memory_desc_t src, dnnl_engine_t, const_dnnl_memory_desc_t dst,         \
     dnnl_engine_t, const_dnnl_primitive_attr_t))                                                                \
  X(dnnl_primitive_create, dnnl_status_t, (dnnl_primitive_t *, const_dnnl_primitive_desc_t))                     \
  X(dnnl_memory_create, dnnl_status_t, (dnnl_memory_t *, const_dnnl_memory_desc_t, dnnl_engine_t, void *handle)) \
  X(dnnl_memory_set_data_handle, dnnl_status_t, (dnnl_memory_t, void *handle))                                   \
  X(dnnl_primitive_execute, dnnl_status_t, (const_dnnl_primitive_t, dnnl_stream_t, int nargs,                    \
                                            const dnnl_exec_arg_t *args))                                        \
  X(dnnl_stream_wait, dnnl_status_t, (dnnl_stream_t))                                                            \
  X(dnnl_set_max_cpu_isa, dnnl_status_t, (int isa))
}

// dnnl::threadpool_interop::threadpool_iface: the thread pool a threadpool build of oneDNN (MindSpore's is one)
// runs its parallel loops on. The virtual functions are in the library's order; wait() is oneDNN 3.11's
// addition, last before the destructor, and is never called for a synchronous pool (get_flags() == 0).
namespace dnnl {
namespace threadpool_interop {
struct threadpool_iface {
  virtual int get_num_threads() const = 0;
  virtual bool get_in_parallel() const = 0;
  virtual void parallel_for(int n, const std::function<void(int, int)> &fn) = 0;
  virtual uint64_t get_flags() const = 0;
  virtual void wait() {}
  virtual ~threadpool_iface() = default;
};
}  // namespace threadpool_interop
}  // namespace dnnl

#endif  // METRIC_LEARN_ONEDNN_API_H_
