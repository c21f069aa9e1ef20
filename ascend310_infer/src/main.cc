// Ascend 310 runner: every *.bin input of --dataset_path (sorted by name) through a MindIR, one Predict each.
// Writes result_Files/<name>_<k>.bin (output k of <name>.bin) and the average Predict latency to
// time_Result/test_perform_static.txt, both in the current folder. src/infer_cpu.py is the CPU twin.
#include <gflags/gflags.h>

#include <chrono>
#include <cstdint>
#include <fstream>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "include/api/context.h"
#include "include/api/model.h"
#include "include/api/serialization.h"
#include "include/api/types.h"
#include "inc/utils.h"

DEFINE_string(mindir_path, "", "MindIR file exported by export.py (batch 1)");
DEFINE_string(dataset_path, ".", "folder of preprocessed float32 *.bin inputs (preprocess.py img_data)");
DEFINE_int32(device_id, 0, "Ascend device id");

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
}  // namespace

int main(int argc, char **argv) {
  gflags::ParseCommandLineFlags(&argc, &argv, true);
  if (!IsFile(FLAGS_mindir_path)) {
    return Fail("--mindir_path '" + FLAGS_mindir_path + "' is not a file");
  }
  std::string error;
  std::vector<std::string> inputs;
  if (!ListBinFiles(FLAGS_dataset_path, &inputs, &error)) {
    return Fail(error);
  }

  auto context = std::make_shared<mindspore::Context>();
  auto ascend = std::make_shared<mindspore::AscendDeviceInfo>();
  ascend->SetDeviceID(static_cast<uint32_t>(FLAGS_device_id));
  context->MutableDeviceInfo().push_back(ascend);

  mindspore::Graph graph;
  mindspore::Status status = mindspore::Serialization::Load(FLAGS_mindir_path, mindspore::ModelType::kMindIR, &graph);
  if (status != mindspore::kSuccess) {
    return Fail("cannot load " + FLAGS_mindir_path + ": " + status.ToString());
  }
  mindspore::Model model;
  status = model.Build(mindspore::GraphCell(graph), context);
  if (status != mindspore::kSuccess) {
    return Fail("cannot build the model on device " + std::to_string(FLAGS_device_id) + ": " + status.ToString());
  }
  const std::vector<mindspore::MSTensor> model_inputs = model.GetInputs();
  if (model_inputs.size() != 1) {
    return Fail("expected a model with one input, it has " + std::to_string(model_inputs.size()));
  }
  const mindspore::MSTensor &input = model_inputs[0];
  std::cout << FLAGS_mindir_path << ": input " << input.Name() << " " << ShapeText(input.Shape()) << ", "
            << inputs.size() << " input files" << std::endl;

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
    // This MSTensor constructor copies the data.
    const std::vector<mindspore::MSTensor> feed{
      mindspore::MSTensor(input.Name(), input.DataType(), input.Shape(), data.data(), data.size())};
    std::vector<mindspore::MSTensor> outputs;
    const auto start = std::chrono::steady_clock::now();
    status = model.Predict(feed, &outputs);
    const auto end = std::chrono::steady_clock::now();
    if (status != mindspore::kSuccess) {
      return Fail("inference failed on " + inputs[i] + ": " + status.ToString());
    }
    total_ms += std::chrono::duration<double, std::milli>(end - start).count();
    for (size_t k = 0; k < outputs.size(); ++k) {
      const std::string path = std::string(kResultDir) + "/" + FileStem(inputs[i]) + "_" + std::to_string(k) + ".bin";
      const std::shared_ptr<const void> bytes = outputs[k].Data();  // a host copy
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
