// Errors of kiln-spawn's control plane: one exception type with a message meant for the user.
#pragma once

#include <stdexcept>
#include <string>

namespace kiln::spawn {

class Error : public std::runtime_error {
 public:
  // kCapacity: a claim does not fit the host (the message names the resource).
  enum class Kind { kInvalid, kNotFound, kConflict, kCapacity, kSystem };
  Error(Kind kind, const std::string& message) : std::runtime_error(message), kind_(kind) {}
  Kind kind() const { return kind_; }

 private:
  Kind kind_;
};

inline Error invalid(const std::string& m) { return Error(Error::Kind::kInvalid, m); }
inline Error not_found(const std::string& m) { return Error(Error::Kind::kNotFound, m); }
inline Error conflict(const std::string& m) { return Error(Error::Kind::kConflict, m); }
inline Error capacity(const std::string& m) { return Error(Error::Kind::kCapacity, m); }
inline Error system_error(const std::string& m) { return Error(Error::Kind::kSystem, m); }

// "what: strerror(errno)" as a system error.
Error errno_error(const std::string& what, int err);

}  // namespace kiln::spawn
