// File helpers of the Ascend 310 runner (POSIX only, so GCC 7, the Ascend toolchain, needs no std::filesystem).
#ifndef METRIC_LEARN_ASCEND310_INFER_UTILS_H_
#define METRIC_LEARN_ASCEND310_INFER_UTILS_H_

#include <cstddef>
#include <string>
#include <vector>

// Every function returning bool sets *error to a message naming the path when it returns false.

// Full paths of the regular files named *.bin in `dir`, sorted by name; an empty folder is an error.
bool ListBinFiles(const std::string &dir, std::vector<std::string> *files, std::string *error);

bool IsFile(const std::string &path);

// Creates `dir` (one level) unless it exists.
bool MakeDir(const std::string &dir, std::string *error);

bool ReadFile(const std::string &path, std::vector<char> *data, std::string *error);

// Writes through `path`.tmp and a rename, so `path` is never left half-written.
bool WriteFile(const std::string &path, const void *data, size_t size, std::string *error);

// "dir/sop_3.bin" -> "sop_3"
std::string FileStem(const std::string &path);

#endif  // METRIC_LEARN_ASCEND310_INFER_UTILS_H_
