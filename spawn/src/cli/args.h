// kiln-spawn's command line: global options, a command, its positional arguments and options.
#pragma once

#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

namespace kiln::spawn::cli {

class Args {
 public:
  // `flags` take no value; `valued` take one (as "--opt value" or "--opt=value") and may repeat.
  static Args parse(const std::vector<std::string>& argv, const std::set<std::string>& flags,
                    const std::set<std::string>& valued);

  bool flag(const std::string& name) const { return flags_.count(name) > 0; }
  std::optional<std::string> get(const std::string& name) const;  // the last one given
  std::string get_or(const std::string& name, const std::string& dflt) const;
  std::vector<std::string> all(const std::string& name) const;
  const std::vector<std::string>& positional() const { return positional_; }
  // The i-th positional argument; Error(kInvalidArgument) naming `what` when missing.
  const std::string& positional(size_t i, const std::string& what) const;
  void max_positional(size_t n) const;

 private:
  std::set<std::string> flags_;
  std::map<std::string, std::vector<std::string>> values_;
  std::vector<std::string> positional_;
};

// Parses a non-negative integer option value; Error(kInvalidArgument) naming the option.
long long parse_int(const std::string& option, const std::string& text, long long max);

}  // namespace kiln::spawn::cli
