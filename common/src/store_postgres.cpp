// The shared engine: a PostgreSQL database through libpq, for several hosts on one state.
//
// Each module keeps its tables in a schema of its own (Options::schema), so kiln-net and
// kiln-spawn can share one database. Writers serialise on a transaction-scoped advisory lock
// keyed by that schema, taken as the write transaction begins: the same one-writer-at-a-time
// model as SQLite's BEGIN IMMEDIATE, across every host, with no serialisation failures to
// retry. Reads run in REPEATABLE READ transactions (one snapshot, no lock). Inside a
// transaction every statement runs under a savepoint, so that a failed one (a duplicate name,
// say) is undone alone and the caller may go on, as with SQLite.
#include <libpq-fe.h>
#include <poll.h>

#include <algorithm>
#include <cstdlib>
#include <mutex>
#include <optional>
#include <vector>

#include "kiln/common/error.h"
#include "store_backend.h"

namespace kiln::common::store_detail {

namespace {

struct ResultFree {
  void operator()(PGresult* r) const { PQclear(r); }
};
using Result = std::unique_ptr<PGresult, ResultFree>;

// libpq's message on one line: its hint lines ("\n\tIs the server running...") joined by "; ".
std::string trimmed(const char* message) {
  std::string m;
  for (const char* p = message ? message : ""; *p; ++p) {
    if (*p != '\n') {
      const bool blank = *p == '\t' || *p == ' ';
      if (!(blank && m.ends_with("; "))) m += blank ? ' ' : *p;
      continue;
    }
    while (!m.empty() && m.back() == ' ') m.pop_back();
    if (p[1]) m += "; ";
  }
  while (!m.empty() && (m.back() == ' ' || m.back() == ';')) m.pop_back();
  return m;
}

// A failed statement as common::Error: constraint violations as SQLite's are (kExists for a
// unique key, kBusy for the others), a lock wait that timed out kBusy, the rest kIo.
Error statement_error(const PGresult* r, PGconn* conn) {
  const char* state = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : nullptr;
  const std::string msg = trimmed(r ? PQresultErrorMessage(r) : PQerrorMessage(conn));
  const std::string_view s = state ? state : "";
  if (s == "23505") return exists("database constraint: " + msg);
  if (s.starts_with("23")) return busy("database constraint: " + msg);
  if (s == "55P03" || s == "40001" || s == "40P01") return busy("database: " + msg);
  return system_error("database: " + msg);
}

// `?` placeholders become `$1`, `$2`, ... (outside quotes and comments), so that modules write
// one SQL for both engines.
std::string numbered_placeholders(std::string_view sql) {
  std::string out;
  out.reserve(sql.size() + 16);
  int n = 0;
  for (size_t i = 0; i < sql.size(); ++i) {
    const char c = sql[i];
    if (c == '\'' || c == '"') {
      size_t j = sql.find(c, i + 1);  // '' inside a literal closes and reopens: same result
      if (j == std::string_view::npos) j = sql.size() - 1;
      out.append(sql.substr(i, j - i + 1));
      i = j;
    } else if (c == '-' && i + 1 < sql.size() && sql[i + 1] == '-') {
      size_t j = sql.find('\n', i);
      if (j == std::string_view::npos) j = sql.size() - 1;
      out.append(sql.substr(i, j - i + 1));
      i = j;
    } else if (c == '?') {
      // "?NNN" is parameter NNN (SQLite's numbered form); a bare "?" the one after the
      // largest so far, as SQLite counts them.
      size_t j = i + 1;
      int explicit_n = 0;
      while (j < sql.size() && sql[j] >= '0' && sql[j] <= '9' && explicit_n < 100000)
        explicit_n = explicit_n * 10 + (sql[j++] - '0');
      const int number = j > i + 1 ? explicit_n : n + 1;
      n = std::max(n, number);
      out += '$';
      out += std::to_string(number);
      i = j - 1;
    } else {
      out += c;
    }
  }
  return out;
}

// The advisory lock's key: FNV-1a of the schema name, the same on every host.
int64_t lock_key(const std::string& schema) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (unsigned char c : "kiln-store:" + schema) h = (h ^ c) * 0x100000001b3ULL;
  return static_cast<int64_t>(h);
}

void check_schema_name(const std::string& s) {
  bool ok = !s.empty() && s.size() <= 48 && !(s[0] >= '0' && s[0] <= '9');
  for (char c : s) ok = ok && ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_');
  if (!ok) throw Error(Reason::kInvalidArgument, "invalid database schema name '" + s + "'");
}

class Postgres;

struct Param {
  std::optional<std::string> value;  // nullopt: NULL
  bool binary = false;               // a blob, sent as bytes (BYTEA)
};

class PgCursor final : public Cursor {
 public:
  PgCursor(Postgres& db, std::string_view sql) : db_(db), sql_(numbered_placeholders(sql)) {}
  void bind_text(std::string_view v) override { params_.push_back({std::string(v), false}); }
  void bind_int(int64_t v) override { params_.push_back({std::to_string(v), false}); }
  void bind_null() override { params_.push_back({std::nullopt, false}); }
  void bind_blob(std::string_view v) override { params_.push_back({std::string(v), true}); }
  bool step() override;
  std::string text(int col) override {
    const char* v = value(col);
    return v ? std::string(v, static_cast<size_t>(PQgetlength(res_.get(), row_, col))) : "";
  }
  int64_t integer(int col) override {
    const char* v = value(col);
    return v ? std::strtoll(v, nullptr, 10) : 0;
  }
  bool null(int col) override { return value(col) == nullptr; }
  // BYTEA comes back as text in hex form: \x0a1b...
  std::string blob(int col) override {
    const std::string hex = text(col);
    if (hex.size() < 2 || hex[0] != '\\' || hex[1] != 'x') return hex;
    auto nibble = [](char c) { return c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10; };
    std::string out;
    out.reserve(hex.size() / 2);
    for (size_t i = 2; i + 1 < hex.size(); i += 2)
      out += static_cast<char>(nibble(hex[i]) << 4 | nibble(hex[i + 1]));
    return out;
  }

 private:
  const char* value(int col) {
    if (!res_ || row_ >= PQntuples(res_.get()) || col < 0 || col >= PQnfields(res_.get()))
      throw system_error("database: no column " + std::to_string(col) + " in this row");
    if (PQgetisnull(res_.get(), row_, col)) return nullptr;
    return PQgetvalue(res_.get(), row_, col);
  }
  Postgres& db_;
  std::string sql_;
  std::vector<Param> params_;
  Result res_;
  int row_ = -1;
};

class Postgres final : public Backend {
 public:
  Postgres(const std::string& url, const std::string& shown, const Database::Options& options)
      : schema_(options.schema),
        key_(lock_key(options.schema)),
        lock_timeout_ms_(options.busy_timeout_ms) {
    check_schema_name(schema_);
    conn_ = PQconnectdb(url.c_str());
    if (!conn_ || PQstatus(conn_) != CONNECTION_OK) {
      std::string msg = conn_ ? trimmed(PQerrorMessage(conn_)) : "out of memory";
      PQfinish(conn_);
      throw Error(Reason::kIo, "cannot connect to " + shown + ": " + msg);
    }
    // NOTICEs (CREATE ... IF NOT EXISTS and the like) are not ours to print.
    PQsetNoticeProcessor(
        conn_, [](void*, const char*) {}, nullptr);
    try {
      std::lock_guard<std::mutex> g(mutex_);
      set_up_session_locked();
    } catch (...) {
      PQfinish(conn_);
      throw;
    }
  }
  ~Postgres() override { PQfinish(conn_); }

  Dialect dialect() const override { return Dialect::kPostgres; }
  bool connection_lost() const override { return PQstatus(conn_) == CONNECTION_BAD; }
  std::unique_ptr<Cursor> prepare(std::string_view sql) override {
    return std::make_unique<PgCursor>(*this, sql);
  }
  void exec(const std::string& sql) override {
    run([&] { return PQexec(conn_, sql.c_str()); });
  }
  void begin_write() override {
    command("BEGIN ISOLATION LEVEL READ COMMITTED");
    in_txn_ = true;
    try {
      lock_writers();
    } catch (...) {
      rollback();  // the lock wait timed out: leave no transaction open behind the caller
      throw;
    }
  }
  void begin_read() override {
    command("BEGIN ISOLATION LEVEL REPEATABLE READ");
    in_txn_ = true;
  }
  // Rows read before the lock come from the snapshot of the read: an update of a row that
  // another writer changed meanwhile fails (kBusy, serialisation) rather than losing a write.
  void upgrade() override { lock_writers(); }
  void commit() override {
    in_txn_ = false;
    command("COMMIT");
  }
  void rollback() noexcept override {
    in_txn_ = false;
    Result r(PQexec(conn_, "ROLLBACK"));
  }
  int schema_version() override {
    const std::string table = schema_ + ".kiln_schema";
    const char* values[] = {table.c_str()};
    Result r(PQexecParams(conn_, "SELECT to_regclass($1) IS NOT NULL", 1, nullptr, values, nullptr,
                          nullptr, 0));
    if (PQresultStatus(r.get()) != PGRES_TUPLES_OK) throw statement_error(r.get(), conn_);
    if (std::string_view(PQgetvalue(r.get(), 0, 0)) != "t") return 0;
    Result v(PQexec(conn_, "SELECT version FROM kiln_schema"));
    if (PQresultStatus(v.get()) != PGRES_TUPLES_OK) throw statement_error(v.get(), conn_);
    return PQntuples(v.get()) ? std::atoi(PQgetvalue(v.get(), 0, 0)) : 0;
  }
  void set_schema_version(int version) override {
    exec(
        "CREATE TABLE IF NOT EXISTS kiln_schema (version BIGINT NOT NULL);"
        "DELETE FROM kiln_schema;"
        "INSERT INTO kiln_schema VALUES (" +
        std::to_string(version) + ")");
  }

  // Runs one statement with text parameters (under a savepoint inside a transaction).
  Result execute(const std::string& sql, const std::vector<Param>& params) {
    std::vector<const char*> values;
    std::vector<int> lengths, formats;
    for (const auto& p : params) {
      values.push_back(p.value ? p.value->data() : nullptr);
      lengths.push_back(p.value ? static_cast<int>(p.value->size()) : 0);
      formats.push_back(p.binary ? 1 : 0);
    }
    return run([&] {
      return PQexecParams(conn_, sql.c_str(), static_cast<int>(values.size()), nullptr,
                          values.data(), lengths.data(), formats.data(), 0);
    });
  }

 private:
  // The session's settings, on a new connection and on one opened again.
  void set_up_session_locked() {
    command_locked("SET search_path TO " + schema_);
    // A writer waits for the lock as long as SQLite's busy timeout would, then fails kBusy.
    command_locked("SET lock_timeout = " + std::to_string(lock_timeout_ms_));
  }
  // A connection the server dropped is opened again (PQreset: the same parameters) before a
  // statement or a transaction starts; inside a transaction, the transaction went with it and
  // the statement fails (its caller rolls back; the next transaction reconnects). A server
  // that shuts down or ends an idle connection sends its FATAL message and closes: an idle
  // connection with something to read has been ended, and is seen so before anything is sent
  // on it (a statement is never sent twice).
  void reconnect_if_lost_locked() {
    if (in_txn_) return;
    // The message comes first and the end of the stream after it: read until nothing is left
    // (libpq marks the connection bad when it reads the end).
    for (int reads = 0; reads < 8 && PQstatus(conn_) == CONNECTION_OK; ++reads) {
      pollfd p{PQsocket(conn_), POLLIN, 0};
      if (p.fd < 0 || ::poll(&p, 1, 0) <= 0 || !PQconsumeInput(conn_)) break;
    }
    if (PQstatus(conn_) != CONNECTION_BAD) return;
    PQreset(conn_);
    if (PQstatus(conn_) != CONNECTION_OK)
      throw Error(Reason::kIo, "the database connection was lost and cannot be opened again: " +
                                   trimmed(PQerrorMessage(conn_)));
    set_up_session_locked();
  }
  template <class Send>
  Result run(Send send) {
    std::lock_guard<std::mutex> g(mutex_);
    reconnect_if_lost_locked();
    if (in_txn_) command_locked("SAVEPOINT kiln_statement");
    Result r(send());
    const auto st = PQresultStatus(r.get());
    if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK) {
      Error e = statement_error(r.get(), conn_);
      if (in_txn_) Result(PQexec(conn_, "ROLLBACK TO SAVEPOINT kiln_statement"));
      throw e;
    }
    if (in_txn_) command_locked("RELEASE SAVEPOINT kiln_statement");
    return r;
  }
  void command(const std::string& sql) {
    std::lock_guard<std::mutex> g(mutex_);
    reconnect_if_lost_locked();
    command_locked(sql);
  }
  void command_locked(const std::string& sql) {
    Result r(PQexec(conn_, sql.c_str()));
    if (PQresultStatus(r.get()) != PGRES_COMMAND_OK && PQresultStatus(r.get()) != PGRES_TUPLES_OK)
      throw statement_error(r.get(), conn_);
  }
  // Takes the writers' lock of this schema until the transaction ends; on the first write of
  // a connection, creates the schema if the database has none yet (as SQLite creates its file).
  void lock_writers() {
    command("SELECT pg_advisory_xact_lock(" + std::to_string(key_) + ")");
    if (schema_ready_) return;
    const char* values[] = {schema_.c_str()};
    Result r(PQexecParams(conn_, "SELECT 1 FROM pg_namespace WHERE nspname = $1", 1, nullptr,
                          values, nullptr, nullptr, 0));
    if (PQresultStatus(r.get()) != PGRES_TUPLES_OK) throw statement_error(r.get(), conn_);
    if (PQntuples(r.get()) == 0) command("CREATE SCHEMA " + schema_);
    schema_ready_ = true;
  }

  PGconn* conn_ = nullptr;
  std::string schema_;
  int64_t key_;
  int lock_timeout_ms_;
  bool in_txn_ = false;
  bool schema_ready_ = false;
  std::mutex mutex_;  // libpq connections are not for concurrent use
};

bool PgCursor::step() {
  if (!res_) res_ = db_.execute(sql_, params_);
  ++row_;
  return row_ < PQntuples(res_.get());
}

}  // namespace

std::unique_ptr<Backend> open_postgres(const std::string& url, const std::string& shown,
                                       const Database::Options& options) {
  return std::make_unique<Postgres>(url, shown, options);
}

}  // namespace kiln::common::store_detail
