// Stub of MindSpore Lite's include/api/types.h: ModelType and the MSTensor members the runner uses, same
// signatures (names cross as std::vector<char>, wrapped inline).
#ifndef METRIC_LEARN_LITE_STUB_TYPES_H_
#define METRIC_LEARN_LITE_STUB_TYPES_H_
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "include/api/data_type.h"
#include "include/api/dual_abi_helper.h"
#include "include/api/visible.h"

namespace mindspore {
enum ModelType : uint32_t {
  kMindIR = 0,
  kAIR = 1,
  kOM = 2,
  kONNX = 3,
  kMindIR_Lite = 4,
  kDataFlow = 5,
  kUnknownType = 0xFFFFFFFF
};

class MS_API MSTensor {
 public:
  class Impl;
  MSTensor();
  explicit MSTensor(const std::shared_ptr<Impl> &impl);
  inline MSTensor(const std::string &name, DataType type, const std::vector<int64_t> &shape, const void *data,
                  size_t data_len);
  ~MSTensor();

  inline std::string Name() const;
  enum DataType DataType() const;
  const std::vector<int64_t> &Shape() const;
  int64_t ElementNum() const;
  std::shared_ptr<const void> Data() const;
  void *MutableData();
  size_t DataSize() const;

 private:
  MSTensor(const std::vector<char> &name, enum DataType type, const std::vector<int64_t> &shape, const void *data,
           size_t data_len);
  std::vector<char> CharName() const;

  friend class ModelImpl;
  std::shared_ptr<Impl> impl_;
};

MSTensor::MSTensor(const std::string &name, enum DataType type, const std::vector<int64_t> &shape, const void *data,
                   size_t data_len)
    : MSTensor(StringToChar(name), type, shape, data, data_len) {}
std::string MSTensor::Name() const { return CharToString(CharName()); }

struct MSCallBackParam {
  std::string node_name;
  std::string node_type;
  double execute_time;
  int arch;
};

using MSKernelCallBack = std::function<bool(const std::vector<MSTensor> &, const std::vector<MSTensor> &,
                                            const MSCallBackParam &opInfo)>;
}  // namespace mindspore
#endif  // METRIC_LEARN_LITE_STUB_TYPES_H_
