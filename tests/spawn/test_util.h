// Helpers of spawn's GoogleTest suites: small file helpers and forked children.
#pragma once

#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include "kiln/common/temp.h"
#include "kiln/net/store.h"
#include "kiln/spawn/store.h"
#include "test_store.h"

namespace kiln::spawn::testing {

using common::TempDir;

// spawn's store for a test's state directory `dir`: dir/spawn.db, or, when the suite runs on
// PostgreSQL (spawn.pg.*), a schema named after `dir` in the test server's database.
struct TestStore : Store {
  explicit TestStore(const std::string& dir)
      : Store(dir, teststore::url(), teststore::schema_for("spawn", dir)) {}
};

// The same for kiln-net's store at `file`.
struct TestNetStore : net::Store {
  explicit TestNetStore(const std::string& file)
      : net::Store(teststore::url().empty() ? file : teststore::url(),
                   teststore::schema_for("net", file)) {}
};

inline void write_text(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary);
  f << text;
  if (!f) throw std::runtime_error("cannot write " + path);
}

inline std::string read_text(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

// Runs `fn` in `n` forked children at once; returns their exit codes. Children exit with fn's
// result without running the parent's destructors or atexit handlers.
inline std::vector<int> in_children(int n, const std::function<int(int)>& fn) {
  std::vector<pid_t> pids;
  for (int i = 0; i < n; ++i) {
    pid_t p = fork();
    if (p == 0) {
      int rc = 99;
      try {
        rc = fn(i);
      } catch (...) {
        rc = 98;
      }
      _exit(rc);
    }
    pids.push_back(p);
  }
  std::vector<int> out;
  for (pid_t p : pids) {
    int st = 0;
    waitpid(p, &st, 0);
    out.push_back(WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
  }
  return out;
}

}  // namespace kiln::spawn::testing
