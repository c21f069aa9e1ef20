// A stand-in for libmindspore-lite.so, built by the tests against the stub headers, so that the runner in
// ascend310_infer/ compiles, links and runs here. Its "model" is not read from the MindIR (only the file's
// existence is checked): the input shape comes from $LITE_STUB_INPUT_SHAPE (default 1,3,32,32, float32) and the
// output is 2048 float32 values, output[j] = the sum of the input values at indices i with i % 2048 == j, so the
// tests can recompute every result file. Build and Predict report what they were asked on stderr.
#include <sys/stat.h>

#include <cstdlib>
#include <cstring>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "include/api/context.h"
#include "include/api/model.h"
#include "include/api/status.h"
#include "include/api/types.h"

namespace mindspore {
namespace {
constexpr size_t kOutputSize = 2048;

std::vector<int64_t> StubInputShape() {
  const char *text = std::getenv("LITE_STUB_INPUT_SHAPE");
  std::vector<int64_t> shape;
  std::stringstream in(text != nullptr ? text : "1,3,32,32");
  for (std::string item; std::getline(in, item, ',');) {
    shape.push_back(std::stoll(item));
  }
  return shape;
}
}  // namespace

// Status
struct Status::Data {
  enum StatusCode code = kSuccess;
  std::string message;
};
Status::Status() : data_(std::make_shared<Data>()) {}
Status::Status(enum StatusCode status_code, const std::vector<char> &status_msg) : data_(std::make_shared<Data>()) {
  data_->code = status_code;
  data_->message = CharToString(status_msg);
}
enum StatusCode Status::StatusCode() const { return data_->code; }
std::vector<char> Status::ToCString() const { return StringToChar(data_->message); }
bool Status::operator==(const Status &other) const { return data_->code == other.data_->code; }
bool Status::operator==(enum StatusCode other_code) const { return data_->code == other_code; }
bool Status::operator!=(const Status &other) const { return !(*this == other); }
bool Status::operator!=(enum StatusCode other_code) const { return !(*this == other_code); }

// Context and device infos
struct Context::Data {
  int32_t thread_num = 2;
  std::vector<std::shared_ptr<DeviceInfoContext>> devices;
};
Context::Context() : data_(std::make_shared<Data>()) {}
void Context::SetThreadNum(int32_t thread_num) { data_->thread_num = thread_num; }
int32_t Context::GetThreadNum() const { return data_->thread_num; }
std::vector<std::shared_ptr<DeviceInfoContext>> &Context::MutableDeviceInfo() { return data_->devices; }

struct DeviceInfoContext::Data {
  uint32_t device_id = 0;
};
DeviceInfoContext::DeviceInfoContext() : data_(std::make_shared<Data>()) {}
void AscendDeviceInfo::SetDeviceID(uint32_t device_id) { data_->device_id = device_id; }
uint32_t AscendDeviceInfo::GetDeviceID() const { return data_->device_id; }

// MSTensor
class MSTensor::Impl {
 public:
  std::string name;
  enum DataType type = DataType::kNumberTypeFloat32;
  std::vector<int64_t> shape;
  std::vector<char> bytes;
};
MSTensor::MSTensor() : impl_(std::make_shared<Impl>()) {}
MSTensor::MSTensor(const std::shared_ptr<Impl> &impl) : impl_(impl) {}
MSTensor::MSTensor(const std::vector<char> &name, enum DataType type, const std::vector<int64_t> &shape,
                   const void *data, size_t data_len)
    : impl_(std::make_shared<Impl>()) {
  impl_->name = CharToString(name);
  impl_->type = type;
  impl_->shape = shape;
  impl_->bytes.assign(static_cast<const char *>(data), static_cast<const char *>(data) + data_len);
}
MSTensor::~MSTensor() = default;
std::vector<char> MSTensor::CharName() const { return StringToChar(impl_->name); }
enum DataType MSTensor::DataType() const { return impl_->type; }
const std::vector<int64_t> &MSTensor::Shape() const { return impl_->shape; }
int64_t MSTensor::ElementNum() const {
  int64_t n = 1;
  for (int64_t d : impl_->shape) {
    n *= d;
  }
  return n;
}
std::shared_ptr<const void> MSTensor::Data() const {
  return std::shared_ptr<const void>(impl_, impl_->bytes.data());  // aliasing: lives as long as the tensor
}
void *MSTensor::MutableData() { return impl_->bytes.data(); }
size_t MSTensor::DataSize() const { return impl_->bytes.size(); }

// Model
class ModelImpl {
 public:
  bool built = false;
  MSTensor input;
  MSTensor output;
};

Model::Model() : impl_(std::make_shared<ModelImpl>()) {}
Model::~Model() = default;

Status Model::Build(const std::vector<char> &model_path, ModelType model_type,
                    const std::shared_ptr<Context> &model_context) {
  const std::string path = CharToString(model_path);
  struct stat info;
  if (stat(path.c_str(), &info) != 0 || !S_ISREG(info.st_mode)) {
    return Status(kLiteFileError, "stub: no model file " + path);
  }
  if (model_type != kMindIR || model_context == nullptr || model_context->MutableDeviceInfo().size() != 1) {
    return Status(kLiteParamInvalid, "stub: expected ModelType::kMindIR and a context with one device");
  }
  const std::shared_ptr<DeviceInfoContext> &device = model_context->MutableDeviceInfo()[0];
  std::cerr << "lite stub: Build " << path << " on ";
  if (device->GetDeviceType() == kAscend) {
    std::cerr << "Ascend device " << std::static_pointer_cast<AscendDeviceInfo>(device)->GetDeviceID();
  } else {
    std::cerr << "CPU with " << model_context->GetThreadNum() << " threads";
  }
  std::cerr << std::endl;
  const std::vector<int64_t> shape = StubInputShape();
  int64_t count = 1;
  for (int64_t d : shape) {
    count *= d;
  }
  const std::vector<float> zeros(static_cast<size_t>(count), 0.0f);
  const std::vector<float> out(kOutputSize, 0.0f);
  impl_->input = MSTensor("x", DataType::kNumberTypeFloat32, shape, zeros.data(), zeros.size() * sizeof(float));
  impl_->output = MSTensor("features", DataType::kNumberTypeFloat32, {1, static_cast<int64_t>(kOutputSize)},
                           out.data(), out.size() * sizeof(float));
  impl_->built = true;
  return Status(kSuccess);
}

std::vector<MSTensor> Model::GetInputs() {
  return impl_->built ? std::vector<MSTensor>{impl_->input} : std::vector<MSTensor>{};
}
std::vector<MSTensor> Model::GetOutputs() {
  return impl_->built ? std::vector<MSTensor>{impl_->output} : std::vector<MSTensor>{};
}

Status Model::Predict(const std::vector<MSTensor> &inputs, std::vector<MSTensor> *outputs,
                      const MSKernelCallBack &before, const MSKernelCallBack &after) {
  (void)before;
  (void)after;
  if (!impl_->built || inputs.size() != 1 || outputs == nullptr ||
      inputs[0].DataSize() != impl_->input.DataSize()) {
    return Status(kLiteInputTensorError, "stub: Predict needs the built model's one input");
  }
  const float *x = static_cast<const float *>(inputs[0].Data().get());
  float *y = static_cast<float *>(impl_->output.MutableData());
  std::memset(y, 0, kOutputSize * sizeof(float));
  const size_t n = inputs[0].DataSize() / sizeof(float);
  for (size_t i = 0; i < n; ++i) {
    y[i % kOutputSize] += x[i];
  }
  *outputs = {impl_->output};
  return Status(kSuccess);
}
}  // namespace mindspore
