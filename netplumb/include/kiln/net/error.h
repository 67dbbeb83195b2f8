// Errors of the netplumb control plane: one exception type carrying a user-facing message.
#pragma once

#include <stdexcept>
#include <string>

namespace kiln::net {

// Thrown for bad input, conflicts (in use, duplicate) and plumbing failures.
// The message is a complete sentence fragment meant for the user ("subnet 'x' has ports: ...").
class Error : public std::runtime_error {
 public:
  enum class Kind { kInvalid, kNotFound, kConflict, kSystem };
  Error(Kind kind, const std::string& message) : std::runtime_error(message), kind_(kind) {}
  Kind kind() const { return kind_; }

 private:
  Kind kind_;
};

inline Error invalid(const std::string& m) { return Error(Error::Kind::kInvalid, m); }
inline Error not_found(const std::string& m) { return Error(Error::Kind::kNotFound, m); }
inline Error conflict(const std::string& m) { return Error(Error::Kind::kConflict, m); }
inline Error system_error(const std::string& m) { return Error(Error::Kind::kSystem, m); }

}  // namespace kiln::net
