// Stub of MindSpore Lite's include/api/model.h: the Model members the runner uses, same signatures.
#ifndef METRIC_LEARN_LITE_STUB_MODEL_H_
#define METRIC_LEARN_LITE_STUB_MODEL_H_
#include <memory>
#include <string>
#include <vector>

#include "include/api/context.h"
#include "include/api/dual_abi_helper.h"
#include "include/api/status.h"
#include "include/api/types.h"

namespace mindspore {
class ModelImpl;

class MS_API Model {
 public:
  Model();
  ~Model();

  inline Status Build(const std::string &model_path, ModelType model_type,
                      const std::shared_ptr<Context> &model_context = nullptr);
  Status Predict(const std::vector<MSTensor> &inputs, std::vector<MSTensor> *outputs,
                 const MSKernelCallBack &before = nullptr, const MSKernelCallBack &after = nullptr);
  std::vector<MSTensor> GetInputs();
  std::vector<MSTensor> GetOutputs();

 private:
  Status Build(const std::vector<char> &model_path, ModelType model_type,
               const std::shared_ptr<Context> &model_context);
  std::shared_ptr<ModelImpl> impl_;
};

Status Model::Build(const std::string &model_path, ModelType model_type,
                    const std::shared_ptr<Context> &model_context) {
  return Build(StringToChar(model_path), model_type, model_context);
}
}  // namespace mindspore
#endif  // METRIC_LEARN_LITE_STUB_MODEL_H_
