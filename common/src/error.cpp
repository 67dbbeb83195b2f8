#include "kiln/common/error.h"

#include <cerrno>
#include <cstring>

namespace kiln::common {

const char* reason_name(Reason r) {
  switch (r) {
    case Reason::kInvalidArgument:
      return "invalid-argument";
    case Reason::kNotFound:
      return "not-found";
    case Reason::kExists:
      return "exists";
    case Reason::kBusy:
      return "busy";
    case Reason::kNoSpace:
      return "no-space";
    case Reason::kCorrupt:
      return "corrupt";
    case Reason::kPermission:
      return "permission";
    case Reason::kIo:
      return "io";
    case Reason::kUnsupported:
      return "unsupported";
  }
  return "io";
}

Reason reason_of_errno(int err) {
  switch (err) {
    case EINVAL:
    case ERANGE:
    case ENAMETOOLONG:
      return Reason::kInvalidArgument;
    case ENOENT:
    case ENODEV:
    case ENXIO:
    case ESRCH:
      return Reason::kNotFound;
    case EEXIST:
      return Reason::kExists;
    case EBUSY:
    case EAGAIN:
    case ETXTBSY:
    case ENOTEMPTY:
      return Reason::kBusy;
    case ENOSPC:
    case EDQUOT:
    case ENOMEM:
    case EMFILE:
    case ENFILE:
      return Reason::kNoSpace;
    case EACCES:
    case EPERM:
    case EROFS:
      return Reason::kPermission;
    case ENOTSUP:
    case ENOSYS:
      return Reason::kUnsupported;
    default:
      return Reason::kIo;
  }
}

Error errors::errno_error(const std::string& what, int err) {
  return Error(reason_of_errno(err), what + ": " + std::strerror(err), err);
}

int exit_code(const Error& e) { return e.reason() == Reason::kNotFound ? 3 : 1; }

}  // namespace kiln::common
