// The argument parser and the number parser of cli.h.
#include "kiln/common/cli.h"

#include <algorithm>
#include <cctype>
#include <ostream>

namespace kiln::common::cli {

namespace {

struct Spelling {
  std::string name;  // the option's name (its last spelling)
  bool takes_value;
};

bool is_negative_number(const std::string& s) {
  return s.size() >= 2 && s[0] == '-' && s[1] >= '0' && s[1] <= '9';
}

}  // namespace

std::string printable(std::string_view text) {
  std::string out(text);
  for (char& c : out)
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = '?';
  return out;
}

Args parse(const std::vector<std::string>& args, const std::vector<Option>& options,
           const Rules& rules) {
  Args out;
  std::map<std::string, Spelling, std::less<>> spellings;
  for (const Option& o : options) {
    std::vector<std::string> names;
    size_t start = 0;
    for (;;) {
      size_t bar = o.names.find('|', start);
      names.push_back(o.names.substr(start, bar == std::string::npos ? bar : bar - start));
      if (bar == std::string::npos) break;
      start = bar + 1;
    }
    for (const auto& n : names) {
      spellings[n] = {names.back(), o.takes_value};
      out.aliases_[n] = names.back();
    }
  }
  bool options_done = false;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& s = args[i];
    if (s.size() > kMaxArgument) throw UsageError("argument longer than 4096 characters");
    const bool option_like = s.size() >= 2 && s[0] == '-' &&
                             !(rules.negative_numbers_are_positional && is_negative_number(s));
    if (options_done || !option_like) {
      if (rules.stop_at_positional) {
        out.rest_.assign(args.begin() + static_cast<std::ptrdiff_t>(i), args.end());
        break;
      }
      out.positional_.push_back(s);
      continue;
    }
    if (s == "--") {
      options_done = true;
      continue;
    }
    if (s[1] == '-') {
      std::string name = s, value;
      const size_t eq = s.find('=');
      const bool has_value = eq != std::string::npos;
      if (has_value) {
        name = s.substr(0, eq);
        value = s.substr(eq + 1);
      }
      if (rules.neutron) std::replace(name.begin() + 2, name.end(), '_', '-');
      auto it = spellings.find(name);
      if (it == spellings.end()) throw UsageError("unknown option " + printable(name));
      const Spelling& sp = it->second;
      if (!sp.takes_value) {
        bool on = true;
        if (has_value) {
          if (!rules.neutron) throw UsageError("option " + name + " takes no value");
          on = parse_bool(value, name);
        }
        out.items_.push_back({sp.name, "", on});
        continue;
      }
      if (!has_value) {
        if (i + 1 >= args.size()) throw UsageError("option " + name + " needs a value");
        value = args[++i];
      }
      if (rules.neutron && value == "list=true") {
        // The neutron client's list syntax: "--dns_nameservers list=true 8.8.8.8 8.8.4.4"
        // gives every following argument up to the next option as a value.
        size_t n = 0;
        for (; i + 1 < args.size() && !args[i + 1].starts_with("-"); ++n)
          out.items_.push_back({sp.name, args[++i], true});
        if (n == 0) throw UsageError("option " + name + " list=true needs at least one value");
        continue;
      }
      out.items_.push_back({sp.name, value, true});
      continue;
    }
    // Short options, bundled or not: "-qu", "-kPATH", "-k PATH", "-qf raw".
    for (size_t j = 1; j < s.size(); ++j) {
      const std::string name = std::string("-") + s[j];
      auto it = spellings.find(name);
      if (it == spellings.end()) throw UsageError("unknown option " + printable(name));
      const Spelling& sp = it->second;
      if (!sp.takes_value) {
        out.items_.push_back({sp.name, "", true});
        continue;
      }
      std::string value = s.substr(j + 1);
      if (value.empty()) {
        if (i + 1 >= args.size()) throw UsageError("option " + name + " needs a value");
        value = args[++i];
      }
      out.items_.push_back({sp.name, value, true});
      break;
    }
  }
  return out;
}

std::string Args::canonical(std::string_view name) const {
  auto it = aliases_.find(name);
  return it == aliases_.end() ? std::string(name) : it->second;
}

const std::string& Args::positional(size_t i, const std::string& what) const {
  if (i >= positional_.size()) throw UsageError("missing argument " + what);
  return positional_[i];
}

void Args::max_positional(size_t n) const {
  if (positional_.size() > n)
    throw UsageError("unexpected argument '" + printable(positional_[n]) + "'");
}

bool Args::has(std::string_view name) const {
  const std::string key = canonical(name);
  return std::any_of(items_.begin(), items_.end(), [&](const Item& i) { return i.name == key; });
}

bool Args::flag(std::string_view name) const {
  const std::string key = canonical(name);
  for (auto it = items_.rbegin(); it != items_.rend(); ++it)
    if (it->name == key) return it->on;
  return false;
}

std::optional<std::string> Args::get(std::string_view name) const {
  const std::string key = canonical(name);
  for (auto it = items_.rbegin(); it != items_.rend(); ++it)
    if (it->name == key) return it->value;
  return std::nullopt;
}

std::string Args::get_or(std::string_view name, const std::string& fallback) const {
  return get(name).value_or(fallback);
}

std::vector<std::string> Args::all(std::string_view name) const {
  const std::string key = canonical(name);
  std::vector<std::string> out;
  for (const Item& i : items_)
    if (i.name == key) out.push_back(i.value);
  return out;
}

std::optional<uint64_t> Args::number(std::string_view name, uint64_t min, uint64_t max) const {
  auto v = get(name);
  if (!v) return std::nullopt;
  return parse_number(*v, canonical(name), min, max);
}

void Args::merge(const Args& other) {
  items_.insert(items_.end(), other.items_.begin(), other.items_.end());
  positional_.insert(positional_.end(), other.positional_.begin(), other.positional_.end());
  for (const auto& [k, v] : other.aliases_) aliases_.emplace(k, v);
}

uint64_t parse_number(std::string_view text, std::string_view what, uint64_t min, uint64_t max,
                      Radix radix) {
  const bool hex = radix == Radix::kDecimalOrHex && text.size() > 2 && text[0] == '0' &&
                   (text[1] == 'x' || text[1] == 'X');
  const unsigned base = hex ? 16 : radix == Radix::kOctal ? 8 : 10;
  auto range = [&](uint64_t v) {
    if (radix != Radix::kOctal) return std::to_string(v);
    std::string s;
    do {
      s.insert(s.begin(), char('0' + v % 8));
      v /= 8;
    } while (v);
    return s;
  };
  const std::string kind = radix == Radix::kOctal ? "an octal number" : "a whole number";
  std::string expected = "expected " + kind + " from " + range(min) + " to " + range(max);
  if (radix == Radix::kDecimalOrHex) expected += ", decimal or 0x and hexadecimal digits";
  auto fail = [&](const std::string& why) -> uint64_t {
    throw UsageError("Invalid " + std::string(what) + " '" + printable(text) + "' (" + why + ")");
  };
  const size_t first = hex ? 2 : 0;
  if (text.size() == first) return fail(expected);
  if (radix == Radix::kDecimalOrHex && !hex && text.size() > 1 && text[0] == '0')
    return fail("a leading zero is ambiguous (octal?): write it without");
  uint64_t v = 0;
  bool overflow = false;
  for (size_t i = first; i < text.size(); ++i) {
    const char c = text[i];
    unsigned d;
    if (c >= '0' && c <= '9')
      d = unsigned(c - '0');
    else if (hex && std::isxdigit(static_cast<unsigned char>(c)))
      d = unsigned(std::tolower(static_cast<unsigned char>(c)) - 'a' + 10);
    else
      return fail(expected);
    if (d >= base) return fail(expected);
    // Keep reading after an overflow: "99999999999999999999x" is malformed, not too large.
    if (v > (UINT64_MAX - d) / base) overflow = true;
    if (!overflow) v = v * base + d;
  }
  if (overflow || v < min || v > max) return fail(expected);
  return v;
}

bool parse_bool(std::string_view text, std::string_view what) {
  std::string l(text);
  std::transform(l.begin(), l.end(), l.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  if (l == "true" || l == "1" || l == "yes" || l == "on") return true;
  if (l == "false" || l == "0" || l == "no" || l == "off") return false;
  throw UsageError(std::string(what) + ": '" + printable(text) + "' is not True or False");
}

void print_command_line(std::ostream& out, const std::string& name, const std::string& usage) {
  out << "  " << name << (usage.empty() ? "" : " ") << usage << "\n";
}

}  // namespace kiln::common::cli
