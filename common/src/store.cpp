// The engine-independent half of the store (store.h): statements, transaction nesting and
// migrations. The engines are in store_sqlite.cpp and store_postgres.cpp.
#include "kiln/common/store.h"

#include "kiln/common/error.h"
#include "store_backend.h"

namespace kiln::common {

namespace {

// The URI without its password (user:PASSWORD@ or password=...), for messages and path().
std::string redact(std::string_view url) {
  std::string out(url);
  const size_t scheme = out.find("://");
  const size_t at = out.find('@', scheme == std::string::npos ? 0 : scheme + 3);
  if (scheme != std::string::npos && at != std::string::npos) {
    const size_t colon = out.find(':', scheme + 3);
    if (colon != std::string::npos && colon < at) out.replace(colon + 1, at - colon - 1, "***");
  }
  for (size_t p = out.find("password="); p != std::string::npos; p = out.find("password=", p + 1)) {
    const size_t end = out.find('&', p);
    out.replace(p + 9, (end == std::string::npos ? out.size() : end) - p - 9, "***");
  }
  return out;
}

}  // namespace

Stmt::Stmt(Database& db, std::string_view sql) : c_(db.backend_->prepare(sql)) {}

Stmt::~Stmt() = default;

Stmt& Stmt::bind(std::string_view v) {
  c_->bind_text(v);
  return *this;
}

Stmt& Stmt::bind(int64_t v) {
  c_->bind_int(v);
  return *this;
}

Stmt& Stmt::bind(std::nullopt_t) {
  c_->bind_null();
  return *this;
}

bool Stmt::step() { return c_->step(); }

void Stmt::run() {
  while (step()) {
  }
}

std::string Stmt::text(int col) { return c_->text(col); }
int64_t Stmt::integer(int col) { return c_->integer(col); }
bool Stmt::null(int col) { return c_->null(col); }

bool Database::is_url(std::string_view location) {
  return location.starts_with("postgresql://") || location.starts_with("postgres://");
}

Database::Database(const std::string& location, std::vector<Migration> migrations,
                   Options options) {
  if (is_url(location)) {
    path_ = redact(location);
    backend_ = store_detail::open_postgres(location, path_, options);
  } else {
    path_ = location;
    backend_ = store_detail::open_sqlite(location, options);
  }
  migrate(migrations);
}

Database::~Database() = default;

Dialect Database::dialect() const { return backend_->dialect(); }

int Database::schema_version() { return backend_->schema_version(); }

void Database::exec(const std::string& sql) { backend_->exec(sql); }

void Database::migrate(const std::vector<Migration>& migrations) {
  const int target = static_cast<int>(migrations.size());
  // Read first, without the write lock: a database that is current is opened without writing,
  // so opening never waits for another process's write transaction.
  int version = schema_version();
  if (version == target) return;
  auto too_new = [&](int v) {
    return Error(Reason::kUnsupported, "database " + path_ + " has schema version " +
                                           std::to_string(v) + ", newer than this program (" +
                                           std::to_string(target) + ")");
  };
  if (version > target) throw too_new(version);
  write([&] {
    // Another process may have migrated between the read and the lock.
    int v = schema_version();
    if (v > target) throw too_new(v);
    for (; v < target; ++v) migrations[static_cast<size_t>(v)](*this);
    backend_->set_schema_version(target);
  });
}

// Runs `fn` in a new transaction of `kind`, or joins the one already open (a write inside a
// read takes the writers' lock from then on).
void Database::in_transaction(Txn kind, const std::function<void()>& fn) {
  if (txn_depth_ > 0) {
    if (kind == Txn::kWrite && txn_ == Txn::kRead) {
      backend_->upgrade();
      txn_ = Txn::kWrite;
    }
    ++txn_depth_;
    try {
      fn();
    } catch (...) {
      --txn_depth_;
      throw;
    }
    --txn_depth_;
    return;
  }
  if (kind == Txn::kWrite)
    backend_->begin_write();
  else
    backend_->begin_read();
  txn_ = kind;
  txn_depth_ = 1;
  try {
    fn();
    backend_->commit();
  } catch (...) {
    txn_depth_ = 0;
    txn_ = Txn::kNone;
    backend_->rollback();
    throw;
  }
  txn_depth_ = 0;
  txn_ = Txn::kNone;
}

void Database::write(const std::function<void()>& fn) { in_transaction(Txn::kWrite, fn); }

void Database::read(const std::function<void()>& fn) { in_transaction(Txn::kRead, fn); }

}  // namespace kiln::common
