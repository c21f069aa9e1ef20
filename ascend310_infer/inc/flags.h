// Command-line flags of the runner in gflags' syntax (--name=value or --name value), without the dependency:
// the Ascend and Lite toolchains do not ship gflags, and four flags need no library.
#ifndef METRIC_LEARN_ASCEND310_INFER_FLAGS_H_
#define METRIC_LEARN_ASCEND310_INFER_FLAGS_H_

#include <map>
#include <string>

class Flags {
 public:
  // Declares a flag with its default value and help text.
  void Define(const std::string &name, const std::string &default_value, const std::string &help);

  // Parses argv; false (and *error naming the argument) on an unknown flag, a missing value, or a stray
  // argument. `--help` sets help_requested().
  bool Parse(int argc, char **argv, std::string *error);

  std::string Get(const std::string &name) const;

  // The flag's value as an int; false (and *error naming the flag) if it is not one.
  bool GetInt(const std::string &name, int *value, std::string *error) const;

  bool help_requested() const { return help_requested_; }

  // One line per flag: --name (default "value"): help
  std::string Usage() const;

 private:
  struct Flag {
    std::string value;
    std::string default_value;
    std::string help;
  };
  std::map<std::string, Flag> flags_;
  bool help_requested_ = false;
};

#endif  // METRIC_LEARN_ASCEND310_INFER_FLAGS_H_
