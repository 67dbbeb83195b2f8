// Neutron-style command line arguments: positionals, "--opt value", "--opt=value", flags.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

namespace kiln::net::cli {

class Args {
 public:
  // `flags` are options that take no value (they accept "=True"/"=False").
  // `valued` are options that take one; anything else is refused.
  static Args parse(const std::vector<std::string>& argv, const std::set<std::string>& flags,
                    const std::set<std::string>& valued);

  const std::vector<std::string>& positional() const { return positional_; }
  std::string positional(size_t i, const std::string& what) const;
  // The last value of an option, or nothing.
  std::optional<std::string> get(const std::string& name) const;
  std::string get_or(const std::string& name, const std::string& def) const {
    return get(name).value_or(def);
  }
  std::vector<std::string> all(const std::string& name) const;
  bool flag(const std::string& name) const;
  // The option as a whole decimal integer within [min, max] (no sign but '-', no blanks, no
  // trailing characters), or nothing if absent; anything else throws naming the option.
  std::optional<int64_t> integer(const std::string& name, int64_t min, int64_t max) const;
  // Refuses positionals beyond `n` ("unexpected argument 'x'").
  void max_positional(size_t n) const;

 private:
  std::vector<std::string> positional_;
  std::multimap<std::string, std::string> values_;
  std::map<std::string, bool> flags_;
  std::vector<std::string> order_;
};

// "True"/"true"/"1"/"yes" and friends.
bool parse_bool(const std::string& s, const std::string& what);

}  // namespace kiln::net::cli
