#include "cli/args.h"

#include <algorithm>
#include <charconv>

#include "kiln/net/error.h"

namespace kiln::net::cli {

bool parse_bool(const std::string& s, const std::string& what) {
  std::string l = s;
  std::transform(l.begin(), l.end(), l.begin(), ::tolower);
  if (l == "true" || l == "1" || l == "yes" || l == "on") return true;
  if (l == "false" || l == "0" || l == "no" || l == "off") return false;
  throw invalid(what + ": '" + s + "' is not True or False");
}

Args Args::parse(const std::vector<std::string>& argv, const std::set<std::string>& flags,
                 const std::set<std::string>& valued) {
  constexpr size_t kMaxArg = 4096;
  Args a;
  for (size_t i = 0; i < argv.size(); ++i) {
    const std::string& arg = argv[i];
    if (arg.size() > kMaxArg) throw invalid("argument longer than 4096 characters");
    if (arg.size() < 2 || arg[0] != '-' || arg == "--") {
      a.positional_.push_back(arg);
      continue;
    }
    std::string name = arg, value;
    bool has_value = false;
    if (auto eq = arg.find('='); eq != std::string::npos) {
      name = arg.substr(0, eq);
      value = arg.substr(eq + 1);
      has_value = true;
    }
    // Neutron spells options with both - and _ (--tenant-id, --tenant_id).
    std::replace(name.begin() + 2, name.end(), '_', '-');
    if (flags.count(name)) {
      a.flags_[name] = has_value ? parse_bool(value, name) : true;
      continue;
    }
    if (!valued.count(name)) throw invalid("unknown option " + name);
    if (!has_value) {
      if (i + 1 >= argv.size()) throw invalid("option " + name + " needs a value");
      value = argv[++i];
    }
    a.values_.emplace(name, value);
  }
  return a;
}

std::string Args::positional(size_t i, const std::string& what) const {
  if (i >= positional_.size()) throw invalid("missing argument: " + what);
  return positional_[i];
}

std::optional<std::string> Args::get(const std::string& name) const {
  auto [b, e] = values_.equal_range(name);
  if (b == e) return std::nullopt;
  return std::prev(e)->second;
}

std::vector<std::string> Args::all(const std::string& name) const {
  std::vector<std::string> out;
  auto [b, e] = values_.equal_range(name);
  for (auto it = b; it != e; ++it) out.push_back(it->second);
  return out;
}

bool Args::flag(const std::string& name) const {
  auto it = flags_.find(name);
  return it != flags_.end() && it->second;
}

std::optional<int64_t> Args::integer(const std::string& name, int64_t min, int64_t max) const {
  auto v = get(name);
  if (!v) return std::nullopt;
  const std::string range =
      " (an integer from " + std::to_string(min) + " to " + std::to_string(max) + ")";
  int64_t out = 0;
  auto [p, ec] = std::from_chars(v->data(), v->data() + v->size(), out);
  if (v->empty() || (ec != std::errc() && ec != std::errc::result_out_of_range) ||
      p != v->data() + v->size())
    throw invalid(name + ": '" + *v + "' is not an integer" + range);
  if (ec == std::errc::result_out_of_range || out < min || out > max)
    throw invalid(name + ": " + *v + " is out of range" + range);
  return out;
}

void Args::max_positional(size_t n) const {
  if (positional_.size() > n) throw invalid("unexpected argument '" + positional_[n] + "'");
}

}  // namespace kiln::net::cli
