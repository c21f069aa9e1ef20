// Stub of MindSpore Lite's include/api/context.h: Context and the CPU / Ascend device infos, same signatures.
#ifndef METRIC_LEARN_LITE_STUB_CONTEXT_H_
#define METRIC_LEARN_LITE_STUB_CONTEXT_H_
#include <cstdint>
#include <memory>
#include <vector>

#include "include/api/dual_abi_helper.h"
#include "include/api/types.h"

namespace mindspore {
enum DeviceType {
  kCPU = 0,
  kGPU,
  kKirinNPU,
  kAscend,
  kAscend910,
  kAscend310,
  kDSP,
  kCustomDevice,
  kAllDevice,
  kInvalidDeviceType = 100,
};

class DeviceInfoContext;

class MS_API Context {
 public:
  struct Data;
  Context();
  ~Context() = default;

  void SetThreadNum(int32_t thread_num);
  int32_t GetThreadNum() const;
  std::vector<std::shared_ptr<DeviceInfoContext>> &MutableDeviceInfo();

 private:
  std::shared_ptr<Data> data_;
};

class MS_API DeviceInfoContext : public std::enable_shared_from_this<DeviceInfoContext> {
 public:
  struct Data;
  DeviceInfoContext();
  virtual ~DeviceInfoContext() = default;
  virtual enum DeviceType GetDeviceType() const = 0;

 protected:
  std::shared_ptr<Data> data_;
};

class MS_API CPUDeviceInfo : public DeviceInfoContext {
 public:
  enum DeviceType GetDeviceType() const override { return DeviceType::kCPU; };
};

class MS_API AscendDeviceInfo : public DeviceInfoContext {
 public:
  enum DeviceType GetDeviceType() const override { return DeviceType::kAscend; };
  void SetDeviceID(uint32_t device_id);
  uint32_t GetDeviceID() const;
};

using Ascend310DeviceInfo = AscendDeviceInfo;
}  // namespace mindspore
#endif  // METRIC_LEARN_LITE_STUB_CONTEXT_H_
