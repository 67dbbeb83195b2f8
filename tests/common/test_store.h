// Where a module's unit test keeps its store: an SQLite file in the test's own directory, or,
// when ctest runs the suite on PostgreSQL (KILN_TEST_STORE_URL, with the server the kiln_pg
// fixture starts), a schema of its own in that database. One location per test, the same for
// every process the test forks, so concurrency tests share it.
#pragma once

#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

namespace kiln::teststore {

struct StoreLocation {
  std::string location;  // a file or a URI
  std::string schema;    // PostgreSQL's schema (ignored for a file)
};

// The URI of the test server's database, or "" when the suite runs on SQLite files.
inline std::string url() {
  const char* u = std::getenv("KILN_TEST_STORE_URL");
  return u ? u : "";
}

inline StoreLocation test_store(const std::string& file, const std::string& schema) {
  if (url().empty()) return {file, schema};
  static std::atomic<int> serial{0};
  return {url(), schema + "_t" + std::to_string(::getpid()) + "_" + std::to_string(serial++)};
}

// A schema named after a test's state directory: every Store a test opens on that directory
// (in this process or a forked one) meets the same tables, as it would meet the same file.
inline std::string schema_for(const std::string& prefix, const std::string& dir) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (unsigned char c : dir) h = (h ^ c) * 0x100000001b3ULL;
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(h));
  return prefix + "_" + hex;
}

}  // namespace kiln::teststore
