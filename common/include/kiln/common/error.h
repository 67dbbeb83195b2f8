// The control plane's error: an exception with a reason code that callers and tests match, the
// errno behind it (if any), and a one-line message meant for the user. Data paths return
// negative errno instead (see docs/common.md).
#pragma once

#include <stdexcept>
#include <string>

namespace kiln::common {

// Stable reasons: add new ones at the end, never renumber (exit codes and tests use them).
enum class Reason {
  kInvalidArgument,  // bad input from the user: a value out of range, a malformed name
  kNotFound,         // the named thing does not exist
  kExists,           // the thing to create exists already (a name, an address, a rule)
  kBusy,             // in use or in the wrong state for this (attached, running, locked)
  kNoSpace,          // out of a bounded resource: capacity, free addresses, tags
  kCorrupt,          // hostile or damaged input: a file or message that breaks its format
  kPermission,       // not allowed (EACCES, EPERM)
  kIo,               // the system failed: I/O, a syscall, a library, a database
  kUnsupported,      // valid but not implemented or not available in this build
};

// "invalid-argument", "not-found", ...: for logs and JSON.
const char* reason_name(Reason r);

class Error : public std::runtime_error {
 public:
  Error(Reason reason, const std::string& message, int err = 0)
      : std::runtime_error(message), reason_(reason), errno_(err) {}
  Reason reason() const { return reason_; }
  // The errno that caused it, or 0.
  int error_number() const { return errno_; }

 private:
  Reason reason_;
  int errno_;
};

// The constructors by reason, in a namespace of their own so that a module can take them all
// with one using-directive (kiln::net and kiln::spawn do).
namespace errors {

inline Error invalid(const std::string& m) { return Error(Reason::kInvalidArgument, m); }
inline Error not_found(const std::string& m) { return Error(Reason::kNotFound, m); }
inline Error exists(const std::string& m) { return Error(Reason::kExists, m); }
inline Error busy(const std::string& m) { return Error(Reason::kBusy, m); }
inline Error no_space(const std::string& m) { return Error(Reason::kNoSpace, m); }
inline Error corrupt(const std::string& m) { return Error(Reason::kCorrupt, m); }
inline Error unsupported(const std::string& m) { return Error(Reason::kUnsupported, m); }
inline Error system_error(const std::string& m) { return Error(Reason::kIo, m); }

// "what: strerror(err)", with the reason of the errno and the errno kept.
Error errno_error(const std::string& what, int err);

}  // namespace errors
using namespace errors;

// The reason an errno stands for (ENOENT: kNotFound, EEXIST: kExists, EACCES: kPermission, ...;
// anything unlisted: kIo).
Reason reason_of_errno(int err);

// The exit code of a command-line tool that ends with this error: 3 for not found (as kiln-net
// and kiln-spawn always did), 1 otherwise.
int exit_code(const Error& e);

}  // namespace kiln::common
