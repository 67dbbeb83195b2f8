#include "args.h"

#include "kiln/spawn/error.h"

namespace kiln::spawn::cli {

Args Args::parse(const std::vector<std::string>& argv, const std::set<std::string>& flags,
                 const std::set<std::string>& valued) {
  Args a;
  bool options_done = false;
  for (size_t i = 0; i < argv.size(); ++i) {
    const std::string& s = argv[i];
    bool negative_number = s.size() >= 2 && s[0] == '-' && s[1] >= '0' && s[1] <= '9';
    if (options_done || s.size() < 2 || s[0] != '-' || negative_number) {
      a.positional_.push_back(s);
      continue;
    }
    if (s == "--") {
      options_done = true;
      continue;
    }
    std::string name = s, value;
    bool has_value = false;
    if (auto eq = s.find('='); eq != std::string::npos && s.rfind("--", 0) == 0) {
      name = s.substr(0, eq);
      value = s.substr(eq + 1);
      has_value = true;
    }
    if (flags.count(name)) {
      if (has_value) throw invalid("option " + name + " takes no value");
      a.flags_.insert(name);
    } else if (valued.count(name)) {
      if (!has_value) {
        if (i + 1 >= argv.size()) throw invalid("option " + name + " needs a value");
        value = argv[++i];
      }
      a.values_[name].push_back(value);
    } else {
      throw invalid("unknown option " + name);
    }
  }
  return a;
}

std::optional<std::string> Args::get(const std::string& name) const {
  auto it = values_.find(name);
  if (it == values_.end() || it->second.empty()) return std::nullopt;
  return it->second.back();
}

std::string Args::get_or(const std::string& name, const std::string& dflt) const {
  return get(name).value_or(dflt);
}

std::vector<std::string> Args::all(const std::string& name) const {
  auto it = values_.find(name);
  return it == values_.end() ? std::vector<std::string>{} : it->second;
}

const std::string& Args::positional(size_t i, const std::string& what) const {
  if (i >= positional_.size()) throw invalid("missing argument " + what);
  return positional_[i];
}

void Args::max_positional(size_t n) const {
  if (positional_.size() > n) throw invalid("unexpected argument '" + positional_[n] + "'");
}

long long parse_int(const std::string& option, const std::string& text, long long max) {
  long long v = 0;
  if (text.empty() || text.size() > 18)
    throw invalid(option + " needs a number, not '" + text + "'");
  for (char c : text) {
    if (c < '0' || c > '9') throw invalid(option + " needs a number, not '" + text + "'");
    v = v * 10 + (c - '0');
  }
  if (v > max) throw invalid(option + " is at most " + std::to_string(max));
  return v;
}

}  // namespace kiln::spawn::cli
