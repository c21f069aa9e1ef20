// The thread pool of the custom CPU kernels (conv.cc, batchnorm.cc, maxpool.cc, momentum.cc): n threads (the caller
// and n - 1 workers that sleep between jobs), usable as oneDNN's threadpool and by our own loops (parallel_for).
#pragma once

#include <atomic>
#include <cstdlib>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "onednn_api.h"

namespace metric_learn {

class Pool : public dnnl::threadpool_interop::threadpool_iface {
 public:
  explicit Pool(int n) : n_(n) {
    for (int i = 1; i < n_; ++i) workers_.emplace_back([this] { loop(); });
  }
  int get_num_threads() const override { return n_; }
  bool get_in_parallel() const override { return in_pool_; }
  uint64_t get_flags() const override { return 0; }
  virtual void wait() {}
  void parallel_for(int n, const std::function<void(int, int)> &fn) override {
    if (n <= 1 || n_ == 1 || in_pool_) {
      for (int i = 0; i < n; ++i) fn(i, n);
      return;
    }
    {
      std::lock_guard<std::mutex> lock(m_);
      fn_ = &fn;
      count_ = n;
      next_.store(0);
      done_.store(0);
      ++generation_;
    }
    cv_.notify_all();
    run();
    std::unique_lock<std::mutex> lock(m_);
    done_cv_.wait(lock, [&] { return done_.load() == count_; });
    fn_ = nullptr;
  }

 private:
  void run() {
    bool was = in_pool_;
    in_pool_ = true;
    int finished = 0;
    for (int i; (i = next_.fetch_add(1)) < count_;) {
      (*fn_)(i, count_);
      ++finished;
    }
    in_pool_ = was;
    if (finished && done_.fetch_add(finished) + finished == count_) {
      std::lock_guard<std::mutex> lock(m_);
      done_cv_.notify_all();
    }
  }
  void loop() {
    uint64_t seen = 0;
    for (;;) {
      {
        std::unique_lock<std::mutex> lock(m_);
        cv_.wait(lock, [&] { return generation_ != seen; });
        seen = generation_;
        if (!fn_) continue;
      }
      run();
    }
  }
  int n_;
  std::vector<std::thread> workers_;
  std::mutex m_;
  std::condition_variable cv_, done_cv_;
  const std::function<void(int, int)> *fn_ = nullptr;
  int count_ = 0;
  std::atomic<int> next_{0}, done_{0};
  uint64_t generation_ = 0;
  static inline thread_local bool in_pool_ = false;
};

// The pool of our own kernels (batchnorm.cc, maxpool.cc, momentum.cc; conv.cc keeps its own for oneDNN), with
// METRIC_LEARN_KERNELS_THREADS threads (else every core), and the lock that makes them run one at a time.
inline Pool &own_kernels_pool() {
  static Pool *pool = [] {
    const char *t = getenv("METRIC_LEARN_KERNELS_THREADS");
    int n = t ? atoi(t) : (int)std::thread::hardware_concurrency();
    return new Pool(n > 0 ? n : 1);  // never freed: its threads live as long as the process
  }();
  return *pool;
}

inline std::mutex &own_kernels_mutex() {
  static std::mutex mutex;
  return mutex;
}

// "(2x3x4x4), (3)": the arguments' shapes, for error messages.
inline std::string shapes_text(int nparam, const int *ndims, int64_t *const *shapes) {
  std::string text;
  for (int i = 0; i < nparam; ++i) {
    text += i ? ", (" : "(";
    for (int d = 0; d < ndims[i]; ++d) text += (d ? "x" : "") + std::to_string(shapes[i][d]);
    text += ")";
  }
  return text;
}

}  // namespace metric_learn
