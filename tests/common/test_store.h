// Where a module's unit test keeps its store: an SQLite file in the test's own directory, or,
// when ctest runs the suite on PostgreSQL (KILN_TEST_STORE_URL, with the server the kiln_pg
// fixture starts), a schema of its own in that database. One location per test, the same for
// every process the test forks, so concurrency tests share it.
#pragma once

#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <string>

namespace kiln::testing {

struct StoreLocation {
  std::string location;  // a file or a URI
  std::string schema;    // PostgreSQL's schema (ignored for a file)
};

inline StoreLocation test_store(const std::string& file, const std::string& schema) {
  const char* url = std::getenv("KILN_TEST_STORE_URL");
  if (!url || !*url) return {file, schema};
  static std::atomic<int> serial{0};
  return {url, schema + "_t" + std::to_string(::getpid()) + "_" + std::to_string(serial++)};
}

}  // namespace kiln::testing
