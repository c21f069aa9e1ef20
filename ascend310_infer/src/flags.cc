#include "inc/flags.h"

#include <cerrno>
#include <climits>
#include <cstdlib>

void Flags::Define(const std::string &name, const std::string &default_value, const std::string &help) {
  flags_[name] = Flag{default_value, default_value, help};
}

bool Flags::Parse(int argc, char **argv, std::string *error) {
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      help_requested_ = true;
      continue;
    }
    if (arg.compare(0, 2, "--") != 0) {
      *error = "unexpected argument '" + arg + "' (flags are --name=value)";
      return false;
    }
    const size_t equals = arg.find('=');
    const std::string name = arg.substr(2, equals == std::string::npos ? std::string::npos : equals - 2);
    auto flag = flags_.find(name);
    if (flag == flags_.end()) {
      *error = "unknown flag --" + name;
      return false;
    }
    if (equals != std::string::npos) {
      flag->second.value = arg.substr(equals + 1);
    } else if (i + 1 < argc) {
      flag->second.value = argv[++i];
    } else {
      *error = "flag --" + name + " needs a value";
      return false;
    }
  }
  return true;
}

std::string Flags::Get(const std::string &name) const {
  auto flag = flags_.find(name);
  return flag == flags_.end() ? std::string() : flag->second.value;
}

bool Flags::GetInt(const std::string &name, int *value, std::string *error) const {
  const std::string text = Get(name);
  char *end = nullptr;
  errno = 0;
  const long number = std::strtol(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || errno == ERANGE || number < INT_MIN || number > INT_MAX) {
    *error = "--" + name + " must be an integer, got '" + text + "'";
    return false;
  }
  *value = static_cast<int>(number);
  return true;
}

std::string Flags::Usage() const {
  std::string text;
  for (const auto &entry : flags_) {
    text += "  --" + entry.first + " (default \"" + entry.second.default_value + "\"): " + entry.second.help + "\n";
  }
  return text;
}
