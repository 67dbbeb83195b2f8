// A shared library loaded on first use (dlopen), for a dependency that only some commands need:
// loading and relocating a large library costs milliseconds at every process start, whether the
// process calls it or not (docs/common.md, "Libraries loaded on first use").
//
// The functions are declared by the library's own headers and resolved by name, so their types
// are checked:
//
//   #define MY_FUNCTIONS(X) X(foo_open) X(foo_close)
//   struct Api {
//   #define KILN_DECLARE(name) decltype(&::name) name = nullptr;
//     MY_FUNCTIONS(KILN_DECLARE)
//   };
//   SharedLibrary lib("libfoo.so.1", "libfoo (package libfoo1)");
//   #define KILN_RESOLVE(name) lib.resolve(api.name, #name);
//   MY_FUNCTIONS(KILN_RESOLVE)
//   if (!lib.error().empty()) ...
#pragma once

#include <string>

namespace kiln::common {

class SharedLibrary {
 public:
  // Opens `soname` with RTLD_NOW | RTLD_LOCAL. `what` names it in messages ("libnbd (package
  // libnbd0)"). The library stays loaded for the life of the process.
  SharedLibrary(const char* soname, std::string what);
  SharedLibrary(const SharedLibrary&) = delete;
  SharedLibrary& operator=(const SharedLibrary&) = delete;

  // Sets `fn` to the library's function `name`, or to nullptr with error() set.
  template <typename Fn>
  void resolve(Fn*& fn, const char* name) {
    fn = reinterpret_cast<Fn*>(symbol(name));
  }

  // Empty, or the first failure: "cannot load libnbd (package libnbd0): <dlerror>",
  // "libnbd (package libnbd0) lacks nbd_foo".
  const std::string& error() const { return error_; }

 private:
  void* symbol(const char* name);
  std::string what_;
  void* handle_ = nullptr;
  std::string error_;
};

}  // namespace kiln::common
