// The two engines behind common::Database (store.h): what each must provide. The front
// (store.cpp) keeps the transaction nesting and the migrations; a backend runs statements,
// opens and ends transactions with the guarantees store.h lists, and keeps the schema version.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "kiln/common/store.h"

namespace kiln::common::store_detail {

// One statement: parameters bound in order, then stepped row by row.
class Cursor {
 public:
  virtual ~Cursor() = default;
  virtual void bind_text(std::string_view v) = 0;
  virtual void bind_int(int64_t v) = 0;
  virtual void bind_null() = 0;
  virtual void bind_blob(std::string_view v) = 0;
  virtual bool step() = 0;
  virtual std::string text(int col) = 0;
  virtual int64_t integer(int col) = 0;
  virtual bool null(int col) = 0;
  virtual std::string blob(int col) = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual Dialect dialect() const = 0;
  // The engine's connection is gone (store.h, Database::connection_lost).
  virtual bool connection_lost() const { return false; }
  virtual std::unique_ptr<Cursor> prepare(std::string_view sql) = 0;
  virtual void exec(const std::string& sql) = 0;
  // Opens a transaction that holds the writers' lock from its start.
  virtual void begin_write() = 0;
  // Opens a read transaction (one consistent view; no write lock).
  virtual void begin_read() = 0;
  // A read transaction that is about to write: takes the writers' lock now.
  virtual void upgrade() = 0;
  virtual void commit() = 0;
  virtual void rollback() noexcept = 0;
  // Inside or outside a transaction; 0 for a database never migrated.
  virtual int schema_version() = 0;
  // Inside the write transaction of a migration.
  virtual void set_schema_version(int version) = 0;
};

std::unique_ptr<Backend> open_sqlite(const std::string& path, const Database::Options& options);
// `url` is a libpq connection URI; `shown` the same without its password, for messages.
std::unique_ptr<Backend> open_postgres(const std::string& url, const std::string& shown,
                                       const Database::Options& options);

}  // namespace kiln::common::store_detail
