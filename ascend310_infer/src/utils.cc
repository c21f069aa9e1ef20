#include "inc/utils.h"

#include <dirent.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>

namespace {
std::string Describe(const std::string &what, const std::string &path) {
  return what + " " + path + ": " + std::strerror(errno);
}

bool EndsWith(const std::string &text, const std::string &suffix) {
  return text.size() >= suffix.size() && text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}
}  // namespace

bool IsFile(const std::string &path) {
  struct stat info;
  return stat(path.c_str(), &info) == 0 && S_ISREG(info.st_mode);
}

bool ListBinFiles(const std::string &dir, std::vector<std::string> *files, std::string *error) {
  DIR *handle = opendir(dir.c_str());
  if (handle == nullptr) {
    *error = Describe("cannot open the input folder", dir);
    return false;
  }
  files->clear();
  for (const dirent *entry = readdir(handle); entry != nullptr; entry = readdir(handle)) {
    const std::string path = dir + "/" + entry->d_name;
    if (EndsWith(entry->d_name, ".bin") && IsFile(path)) {
      files->push_back(path);
    }
  }
  closedir(handle);
  if (files->empty()) {
    *error = "no *.bin input files in " + dir;
    return false;
  }
  std::sort(files->begin(), files->end());
  return true;
}

bool MakeDir(const std::string &dir, std::string *error) {
  struct stat info;
  if (stat(dir.c_str(), &info) == 0 && S_ISDIR(info.st_mode)) {
    return true;
  }
  if (mkdir(dir.c_str(), 0755) != 0) {
    *error = Describe("cannot create the folder", dir);
    return false;
  }
  return true;
}

bool ReadFile(const std::string &path, std::vector<char> *data, std::string *error) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) {
    *error = "cannot open " + path;
    return false;
  }
  const std::streamsize size = in.tellg();
  in.seekg(0, std::ios::beg);
  data->resize(static_cast<size_t>(size));
  if (size > 0 && !in.read(data->data(), size)) {
    *error = "cannot read " + path;
    return false;
  }
  return true;
}

bool WriteFile(const std::string &path, const void *data, size_t size, std::string *error) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out.write(static_cast<const char *>(data), static_cast<std::streamsize>(size));
    if (!out.flush()) {
      *error = "cannot write " + tmp;
      return false;
    }
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    *error = Describe("cannot rename " + tmp + " to", path);
    std::remove(tmp.c_str());
    return false;
  }
  return true;
}

std::string FileStem(const std::string &path) {
  const size_t slash = path.find_last_of('/');
  const std::string name = slash == std::string::npos ? path : path.substr(slash + 1);
  const size_t dot = name.find_last_of('.');
  return dot == std::string::npos ? name : name.substr(0, dot);
}
