// Stub of MindSpore Lite's include/api/dual_abi_helper.h: strings cross the library boundary as
// std::vector<char>, so the runner and the library need not share a std::string ABI.
#ifndef METRIC_LEARN_LITE_STUB_DUAL_ABI_HELPER_H_
#define METRIC_LEARN_LITE_STUB_DUAL_ABI_HELPER_H_
#include <string>
#include <vector>

namespace mindspore {
inline std::vector<char> StringToChar(const std::string &s) { return std::vector<char>(s.begin(), s.end()); }
inline std::string CharToString(const std::vector<char> &c) { return std::string(c.begin(), c.end()); }
}  // namespace mindspore
#endif  // METRIC_LEARN_LITE_STUB_DUAL_ABI_HELPER_H_
