// Offline inference runner on MindSpore Lite's C++ API: every *.bin input of --dataset_path (sorted by name)
// through a MindIR written by export.py, one Predict each, on an Ascend 310/310P (Lite's Ascend backend) or a
// CPU (--device_type CPU, Lite's CPU package on x86_64 or aarch64). Writes result_Files/<name>_<k>.bin (output k
// of <name>.bin) and the average Predict latency to time_Result/test_perform_static.txt, both in the current
// folder. src/deploy/infer_cpu.py is the Python twin. The API calls used are those of MindSpore 2.10's public headers
// (include/api/model.h, context.h, types.h, status.h), as MindSpore Lite ships them in runtime/include/api/.
#include <chrono>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "include/api/context.h"
#include "include/api/model.h"
#include "include/api/status.h"
#include "include/api/types.h"
#include "inc/flags.h"
#include "inc/utils.h"

namespace {
constexpr char kResultDir[] = "result_Files";
constexpr char kTimeDir[] = "time_Result";
constexpr char kTimeFile[] = "time_Result/test_perform_static.txt";
constexpr size_t kProgressEvery = 500;

int Fail(const std::string &message) {
  std::cerr << "error: " << message << std::endl;
  return 1;
}

std::string ShapeText(const std::vector<int64_t> &shape) {
  std::string text;
  for (size_t i = 0; i < shape.size(); ++i) {
    text += (i ? "x" : "") + std::to_string(shape[i]);
  }
  return text;
}

// The Lite context for --device_type; nullptr (and *error) for an unknown type.
std::shared_ptr<mindspore::Context> MakeContext(const std::string &device_type, int device_id, int thread_num,
                                                std::string *error) {
  auto context = std::make_shared<mindspore::Context>();
  if (device_type == "Ascend") {
    auto ascend = std::make_shared<mindspore::AscendDeviceInfo>();
    ascend->SetDeviceID(static_cast<uint32_t>(device_id));
    context->MutableDeviceInfo().push_back(ascend);
  } else if (device_type == "CPU") {
    context->SetThreadNum(thread_num);
    context->MutableDeviceInfo().push_back(std::make_shared<mindspore::CPUDeviceInfo>());
  } else {
    *error = "--device_type must be Ascend or CPU, got '" + device_type + "'";
    return nullptr;
  }
  return context;
}
}  // namespace

int main(int argc, char **argv) {
  Flags flags;
  flags.Define("mindir_path", "", "MindIR file exported by export.py (batch 1)");
  flags.Define("dataset_path", ".", "folder of preprocessed float32 *.bin inputs (preprocess.py img_data)");
  flags.Define("device_id", "0", "Ascend device id (unused on CPU)");
  flags.Define("device_type", "Ascend", "Ascend (310/310P, Lite's Ascend backend) or CPU (Lite's CPU package)");
  flags.Define("thread_num", "2", "CPU threads (--device_type CPU)");
  std::string error;
  if (!flags.Parse(argc, argv, &error)) {
    std::cerr << "flags:\n" << flags.Usage();
    return Fail(error);
  }
  if (flags.help_requested()) {
    std::cout << "usage: main --mindir_path=FILE --dataset_path=DIR [--device_type=Ascend|CPU] [--device_id=N]\n"
              << flags.Usage();
    return 0;
  }
  const std::string mindir_path = flags.Get("mindir_path");
  const std::string device_type = flags.Get("device_type");
  int device_id = 0;
  int thread_num = 0;
  if (!flags.GetInt("device_id", &device_id, &error) || !flags.GetInt("thread_num", &thread_num, &error)) {
    return Fail(error);
  }
  if (!IsFile(mindir_path)) {
    return Fail("--mindir_path '" + mindir_path + "' is not a file");
  }
  const std::shared_ptr<mindspore::Context> context = MakeContext(device_type, device_id, thread_num, &error);
  if (context == nullptr) {
    return Fail(error);
  }
  std::vector<std::string> inputs;
  if (!ListBinFiles(flags.Get("dataset_path"), &inputs, &error)) {
    return Fail(error);
  }

  // Lite reads and compiles the MindIR itself (ModelType::kMindIR: the file ms.export writes).
  mindspore::Model model;
  mindspore::Status status = model.Build(mindir_path, mindspore::ModelType::kMindIR, context);
  const std::string where = device_type == "CPU" ? "the CPU" : "Ascend device " + std::to_string(device_id);
  if (status != mindspore::kSuccess) {
    return Fail("cannot build " + mindir_path + " on " + where + ": " + status.ToString());
  }
  std::vector<mindspore::MSTensor> model_inputs = model.GetInputs();
  if (model_inputs.size() != 1) {
    return Fail("expected a model with one input, it has " + std::to_string(model_inputs.size()));
  }
  mindspore::MSTensor &input = model_inputs[0];
  std::cout << mindir_path << " on " << where << ": input " << input.Name() << " " << ShapeText(input.Shape())
            << ", " << inputs.size() << " input files" << std::endl;

  if (!MakeDir(kResultDir, &error) || !MakeDir(kTimeDir, &error)) {
    return Fail(error);
  }
  double total_ms = 0.0;
  for (size_t i = 0; i < inputs.size(); ++i) {
    std::vector<char> data;
    if (!ReadFile(inputs[i], &data, &error)) {
      return Fail(error);
    }
    if (data.size() != input.DataSize()) {
      return Fail(inputs[i] + ": " + std::to_string(data.size()) + " bytes, the model input " +
                  ShapeText(input.Shape()) + " needs " + std::to_string(input.DataSize()));
    }
    // The model's own input tensor (MSTensor is a handle): the bytes go straight into it.
    void *buffer = input.MutableData();
    if (buffer == nullptr) {
      return Fail("the model gives no input buffer for " + inputs[i]);
    }
    std::memcpy(buffer, data.data(), data.size());
    std::vector<mindspore::MSTensor> outputs;
    const auto start = std::chrono::steady_clock::now();
    status = model.Predict(model_inputs, &outputs);
    const auto end = std::chrono::steady_clock::now();
    if (status != mindspore::kSuccess) {
      return Fail("inference failed on " + inputs[i] + ": " + status.ToString());
    }
    total_ms += std::chrono::duration<double, std::milli>(end - start).count();
    for (size_t k = 0; k < outputs.size(); ++k) {
      const std::string path = std::string(kResultDir) + "/" + FileStem(inputs[i]) + "_" + std::to_string(k) + ".bin";
      const std::shared_ptr<const void> bytes = outputs[k].Data();  // host memory
      if (bytes == nullptr || !WriteFile(path, bytes.get(), outputs[k].DataSize(), &error)) {
        return Fail(bytes == nullptr ? "no output data for " + inputs[i] : error);
      }
    }
    if ((i + 1) % kProgressEvery == 0 || i + 1 == inputs.size()) {
      std::cout << "inference: " << i + 1 << "/" << inputs.size() << ", " << total_ms / (i + 1) << " ms per input"
                << std::endl;
    }
  }

  const double average_ms = total_ms / inputs.size();
  std::ofstream timing(kTimeFile, std::ios::trunc);
  timing << "NN inference cost average time: " << average_ms << " ms of infer_count " << inputs.size() << std::endl;
  if (!timing) {
    return Fail(std::string("cannot write ") + kTimeFile);
  }
  std::cout << "average inference time: " << average_ms << " ms (" << kTimeFile << ")" << std::endl;
  return 0;
}
