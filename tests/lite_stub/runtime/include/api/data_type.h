// Stub of MindSpore Lite's include/api/data_type.h: the element types the runner meets (same values).
#ifndef METRIC_LEARN_LITE_STUB_DATA_TYPE_H_
#define METRIC_LEARN_LITE_STUB_DATA_TYPE_H_
#include <cstdint>

namespace mindspore {
enum class DataType : int {
  kTypeUnknown = 0,
  kNumberTypeInt32 = 34,
  kNumberTypeFloat16 = 42,
  kNumberTypeFloat32 = 43,
  kInvalidType = INT32_MAX,
};
}  // namespace mindspore
#endif  // METRIC_LEARN_LITE_STUB_DATA_TYPE_H_
