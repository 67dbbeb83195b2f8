// The command-line layer every Kiln binary uses: one argument parser (short and long options,
// flags, repeatable options, positionals, "--", subcommands), one strict number parser, the
// command-table type, and run_main(), which turns what a tool throws into "PROG: message" on
// stderr and an exit code. Tables and JSON output: cli_output.h. See docs/common.md.
#pragma once

#include <cstdint>
#include <functional>
#include <iosfwd>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "kiln/common/error.h"

namespace kiln::common::cli {

// A mistake on the command line (an unknown option, a missing value, a malformed number). It is
// a kInvalidArgument Error; run_main() ends the tool with the tool's usage exit code.
class UsageError : public Error {
 public:
  explicit UsageError(const std::string& message) : Error(Reason::kInvalidArgument, message) {}
};

// Ends the tool with one line and a given exit code (kiln-img's exit codes follow qemu-img's).
class ExitError : public std::runtime_error {
 public:
  explicit ExitError(const std::string& message, int exit_code = 1)
      : std::runtime_error(message), exit_code_(exit_code) {}
  int exit_code() const { return exit_code_; }

 private:
  int exit_code_;
};

inline constexpr bool kFlag = false;  // an option without a value
inline constexpr bool kValue = true;  // an option that takes one ("--x V", "--x=V", "-xV", "-x V")

// One option: its spellings separated by '|' ("-k|--socket", "--shared", "-q"). It is looked up
// by any of them; the last one is its name in messages.
struct Option {
  std::string names;
  bool takes_value = kFlag;
};

struct Rules {
  // Stop at the first positional (a subcommand): it and everything after it go to rest().
  bool stop_at_positional = false;
  // "-2" is a positional (a value such as a ratio), not an unknown option "-2".
  bool negative_numbers_are_positional = false;
  // OpenStack's spellings: '_' and '-' are the same in long names (--tenant_id), a flag may
  // be given "=True" or "=False", and "--opt list=true A B" gives --opt the values A and B
  // (every argument up to the next option).
  bool neutron = false;
};

// The longest argument accepted: every external input has a limit.
inline constexpr size_t kMaxArgument = 4096;

// The parsed command line. Options keep the order they were given in (kiln-fs inject applies
// its operations in that order).
class Args {
 public:
  struct Item {
    std::string name;   // the option's name (its last spelling)
    std::string value;  // empty for flags
    bool on = true;     // a flag given "=False" (Rules::neutron) is off
  };

  const std::vector<Item>& items() const { return items_; }
  const std::vector<std::string>& positional() const { return positional_; }
  // The i-th positional; UsageError "missing argument WHAT" if there is none.
  const std::string& positional(size_t i, const std::string& what) const;
  // UsageError "unexpected argument 'x'" beyond `n` positionals.
  void max_positional(size_t n) const;
  // With Rules::stop_at_positional: the first positional and everything after it.
  const std::vector<std::string>& rest() const { return rest_; }

  // Options are named by any of their spellings.
  bool has(std::string_view name) const;
  bool flag(std::string_view name) const;                       // given (and not "=False")
  std::optional<std::string> get(std::string_view name) const;  // the last value given
  std::string get_or(std::string_view name, const std::string& fallback) const;
  std::vector<std::string> all(std::string_view name) const;  // every value, in order
  // The last value as a number (parse_number, named after the option), or nothing.
  std::optional<uint64_t> number(std::string_view name, uint64_t min, uint64_t max) const;

  // Appends `other`'s options and positionals (global options given after a subcommand).
  void merge(const Args& other);

 private:
  friend Args parse(const std::vector<std::string>&, const std::vector<Option>&, const Rules&);
  std::string canonical(std::string_view name) const;
  std::vector<Item> items_;
  std::vector<std::string> positional_, rest_;
  std::map<std::string, std::string, std::less<>> aliases_;  // spelling -> name
};

// Parses `args` (without the program name). Throws UsageError: "unknown option --x", "option
// --x needs a value", "option --x takes no value", "argument longer than 4096 characters".
Args parse(const std::vector<std::string>& args, const std::vector<Option>& options,
           const Rules& rules = {});

// ---- numbers: the one strict parser ----

enum class Radix {
  kDecimal,       // "0".."9" only
  kOctal,         // "0".."7" only (file modes)
  kDecimalOrHex,  // decimal, or 0x and hex digits; a leading zero is refused (octal or not?)
};

// The whole of `text` as a number in [min, max]: no sign, no blanks, no suffix, no exponent.
// Anything else is a UsageError "Invalid WHAT 'TEXT' (expected a whole number from MIN to
// MAX)" (qemu's "Invalid ..." form); a text that is too long to be in range is out of range.
uint64_t parse_number(std::string_view text, std::string_view what, uint64_t min, uint64_t max,
                      Radix radix = Radix::kDecimal);

// "True"/"true"/"1"/"yes"/"on" and their opposites; UsageError otherwise.
bool parse_bool(std::string_view text, std::string_view what);

// `text` as it can be shown in a one-line message: control characters become '?'.
std::string printable(std::string_view text);

// ---- subcommands ----

// One line of a command table: a subcommand, its usage after the name, its options and what it
// does. A tool keeps its commands in tables, one per resource (kiln-net's network, subnet, ...).
template <class Context>
struct Command {
  std::string name;
  std::string usage;
  std::vector<Option> options;
  std::function<int(Context&)> run;
};

template <class Context>
using CommandTable = std::vector<Command<Context>>;

template <class Context>
const Command<Context>* find_command(const CommandTable<Context>& table, std::string_view name) {
  for (const auto& c : table)
    if (c.name == name) return &c;
  return nullptr;
}

// A command line of the form [GLOBAL OPTIONS] COMMAND [OPTIONS] (kiln-net, kiln-spawn); the
// global options may come after the command too. `command` is null when there is none or it is
// `help`; an unknown one is a UsageError "unknown command 'x' (see PROG help)". `table` must
// outlive the result.
template <class Context>
struct Invocation {
  const Command<Context>* command = nullptr;
  Args args;
};

template <class Context>
Invocation<Context> parse_invocation(const std::vector<std::string>& argv,
                                     const std::vector<Option>& global, Rules rules,
                                     const CommandTable<Context>& table, const std::string& prog);

// "  NAME USAGE" for each command, in the table's order (the help's command list; the bash
// completion reads the subcommands from these two-space-indented lines).
template <class Context>
void print_commands(std::ostream& out, const CommandTable<Context>& table);

// ---- the program ----

struct Program {
  std::string name;  // "kiln-net": the prefix of every error line
  // The help text; its first line is "Usage: NAME ..." (help2man makes the man page's SYNOPSIS
  // from it).
  std::function<void(std::ostream&)> help;
  // Exit code for a UsageError: 2 for kiln-fs; kiln-img, kiln-io and kiln-nbd follow qemu-img
  // (1), and kiln-net and kiln-spawn always gave 1 for a bad argument.
  int usage_exit = 2;
  // Add " (PROG --help)" to a usage error.
  bool usage_hint = false;
  // Exit code of a common::Error: 3 for kNotFound, 1 otherwise (kiln-net, kiln-spawn); the
  // qemu-style tools give 1 for every error.
  int (*error_exit)(const Error&) = &exit_code;
};

// Every error exits 1 (qemu-img and qemu-nbd have one code for failures).
int exit_one(const Error&);

// Runs `body` with the arguments after the program name. "--version" alone prints "NAME
// VERSION"; "--help" or "-h" first prints the help (exit 0). What `body` throws is printed as
// "NAME: message" (one line, stdout flushed first) and returns: UsageError -> usage_exit,
// ExitError -> its code, Error -> error_exit, anything else 1. A failed write to stdout is an
// error too (exit 1), so that "kiln-img info > /dev/full" does not succeed.
int run_main(const Program& program, int argc, char** argv,
             const std::function<int(const std::vector<std::string>&)>& body);

// "NAME VERSION\n" on stdout.
void print_version(std::ostream& out, const std::string& name);

// ---- template definitions ----

void print_command_line(std::ostream& out, const std::string& name, const std::string& usage);

template <class Context>
void print_commands(std::ostream& out, const CommandTable<Context>& table) {
  for (const auto& c : table) print_command_line(out, c.name, c.usage);
}

template <class Context>
Invocation<Context> parse_invocation(const std::vector<std::string>& argv,
                                     const std::vector<Option>& global, Rules rules,
                                     const CommandTable<Context>& table, const std::string& prog) {
  rules.stop_at_positional = true;
  Invocation<Context> out{nullptr, parse(argv, global, rules)};
  const std::vector<std::string> rest = out.args.rest();
  if (rest.empty() || rest[0] == "help") return out;
  out.command = find_command(table, rest[0]);
  if (!out.command) throw UsageError("unknown command '" + rest[0] + "' (see " + prog + " help)");
  std::vector<Option> options = global;
  options.insert(options.end(), out.command->options.begin(), out.command->options.end());
  rules.stop_at_positional = false;
  out.args.merge(parse({rest.begin() + 1, rest.end()}, options, rules));
  return out;
}

}  // namespace kiln::common::cli
