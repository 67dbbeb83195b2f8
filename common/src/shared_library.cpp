#include "kiln/common/shared_library.h"

#include <dlfcn.h>

#include <utility>

namespace kiln::common {

namespace {

std::string dl_error() {
  const char* e = dlerror();
  return e ? e : "unknown error";
}

}  // namespace

SharedLibrary::SharedLibrary(const char* soname, std::string what) : what_(std::move(what)) {
  handle_ = dlopen(soname, RTLD_NOW | RTLD_LOCAL);
  if (!handle_) error_ = "cannot load " + what_ + ": " + dl_error();
}

void* SharedLibrary::symbol(const char* name) {
  if (!handle_) return nullptr;
  void* p = dlsym(handle_, name);
  if (!p && error_.empty()) error_ = what_ + " lacks " + name;
  return p;
}

}  // namespace kiln::common
