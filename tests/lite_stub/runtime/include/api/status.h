// Stub of MindSpore Lite's include/api/status.h: the Status members the runner uses, same signatures.
#ifndef METRIC_LEARN_LITE_STUB_STATUS_H_
#define METRIC_LEARN_LITE_STUB_STATUS_H_
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "include/api/dual_abi_helper.h"
#include "include/api/visible.h"

namespace mindspore {
enum CompCode : uint32_t {
  kCore = 0x00000000u,
  kLite = 0xF0000000u,
};

enum StatusCode : uint32_t {
  kSuccess = 0,
  kLiteError = kLite | (0x0FFFFFFF & -1),
  kLiteParamInvalid = kLite | (0x0FFFFFFF & -3),
  kLiteFileError = kLite | (0x0FFFFFFF & -10),
  kLiteInputTensorError = kLite | (0x0FFFFFFF & -101),
};

class MS_API Status {
 public:
  Status();
  inline Status(enum StatusCode status_code, const std::string &status_msg = "");  // NOLINT(runtime/explicit)
  ~Status() = default;

  enum StatusCode StatusCode() const;
  inline std::string ToString() const;

  bool operator==(const Status &other) const;
  bool operator==(enum StatusCode other_code) const;
  bool operator!=(const Status &other) const;
  bool operator!=(enum StatusCode other_code) const;

 private:
  Status(enum StatusCode status_code, const std::vector<char> &status_msg);
  std::vector<char> ToCString() const;
  struct Data;
  std::shared_ptr<Data> data_;
};

Status::Status(enum StatusCode status_code, const std::string &status_msg)
    : Status(status_code, StringToChar(status_msg)) {}
std::string Status::ToString() const { return CharToString(ToCString()); }
}  // namespace mindspore
#endif  // METRIC_LEARN_LITE_STUB_STATUS_H_
