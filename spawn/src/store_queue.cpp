// The work queue in spawn's store (store.h WorkItem): rows addressed to a host, taken by that
// host's agent. Taking a row is one write transaction, and the store's write transactions
// serialise across hosts (SQLite: BEGIN IMMEDIATE; PostgreSQL: the writers' advisory lock), so a
// row is taken once whatever the engine.
#include "kiln/spawn/error.h"
#include "kiln/spawn/store.h"
#include "store_hosts.h"

namespace kiln::spawn {

using common::Stmt;

namespace {

const char* kWorkCols =
    "id, host, kind, instance_id, payload, state, result, error, taken_by, created_at, "
    "updated_at";

WorkItem read_work(Stmt& s) {
  WorkItem w;
  w.id = s.integer(0);
  w.host = s.text(1);
  w.kind = s.text(2);
  w.instance_id = s.text(3);
  w.payload = s.text(4);
  w.state = s.text(5);
  w.result = s.text(6);
  w.error = s.text(7);
  w.taken_by = s.integer(8);
  w.created_at = s.text(9);
  w.updated_at = s.text(10);
  return w;
}

}  // namespace

void work_queue_v5(common::Database& db) {
  db.exec(db.schema_sql(
      "CREATE TABLE work_queue ("
      "id {{serial}}, host TEXT NOT NULL, kind TEXT NOT NULL, instance_id TEXT NOT NULL, "
      "payload TEXT NOT NULL DEFAULT '{}', state TEXT NOT NULL DEFAULT 'queued', "
      "result TEXT NOT NULL DEFAULT '', error TEXT NOT NULL DEFAULT '', "
      "taken_by BIGINT NOT NULL DEFAULT 0, "
      "created_at TEXT NOT NULL, updated_at TEXT NOT NULL);"
      "CREATE INDEX work_queue_host_state ON work_queue(host, state);"
      "CREATE INDEX work_queue_instance ON work_queue(instance_id);"));
}

int64_t Store::enqueue(const WorkItem& w) {
  if (w.host.empty() || w.kind.empty() || w.instance_id.empty())
    throw invalid("a work queue row needs a host, a kind and an instance");
  int64_t id = 0;
  write([&] {
    const std::string now = utc_now();
    Stmt(db_,
         "INSERT INTO work_queue(host, kind, instance_id, payload, state, created_at, "
         "updated_at) VALUES (?, ?, ?, ?, 'queued', ?, ?)")
        .bind(w.host)
        .bind(w.kind)
        .bind(w.instance_id)
        .bind(w.payload.empty() ? std::string("{}") : w.payload)
        .bind(now)
        .bind(now)
        .run();
    // The newest row of this instance is the one just made (inside the writers' lock).
    Stmt s(db_, "SELECT MAX(id) FROM work_queue WHERE instance_id = ?");
    s.bind(w.instance_id);
    if (!s.step() || s.null(0)) throw system_error("the work queue row just inserted is missing");
    id = s.integer(0);
  });
  return id;
}

int64_t Store::enqueue_once(const WorkItem& w) {
  int64_t id = 0;
  write([&] {
    Stmt s(db_,
           "SELECT id FROM work_queue WHERE host = ? AND kind = ? AND instance_id = ? AND "
           "state = 'queued' ORDER BY id LIMIT 1");
    s.bind(w.host).bind(w.kind).bind(w.instance_id);
    id = s.step() ? s.integer(0) : enqueue(w);  // a nested write joins this one
  });
  return id;
}

void Store::remove_work(int64_t id) {
  write([&] { Stmt(db_, "DELETE FROM work_queue WHERE id = ?").bind(id).run(); });
}

bool Store::withdraw_work(int64_t id) {
  bool withdrawn = false;
  write([&] {
    Stmt s(db_, "SELECT 1 FROM work_queue WHERE id = ? AND state = 'queued'");
    s.bind(id);
    withdrawn = s.step();
    if (withdrawn) Stmt(db_, "DELETE FROM work_queue WHERE id = ?").bind(id).run();
  });
  return withdrawn;
}

std::optional<WorkItem> Store::take_work(const std::string& host, int64_t pid) {
  std::optional<WorkItem> out;
  // An idle agent polls: a read first, so that an empty queue costs no write lock (which every
  // boot and every other agent would wait for).
  {
    Stmt s(db_, "SELECT 1 FROM work_queue WHERE host = ? AND state = 'queued' LIMIT 1");
    s.bind(host);
    if (!s.step()) return out;
  }
  write([&] {
    WorkItem w;
    {
      Stmt s(db_, std::string("SELECT ") + kWorkCols +
                      " FROM work_queue WHERE host = ? AND state = 'queued' ORDER BY id LIMIT 1");
      s.bind(host);
      if (!s.step()) return;
      w = read_work(s);
    }
    w.state = kWorkRunning;
    w.taken_by = pid;
    w.updated_at = utc_now();
    Stmt(db_,
         "UPDATE work_queue SET state = 'running', taken_by = ?, updated_at = ? "
         "WHERE id = ? AND state = 'queued'")
        .bind(pid)
        .bind(w.updated_at)
        .bind(w.id)
        .run();
    out = std::move(w);
  });
  return out;
}

void Store::finish_work(int64_t id, bool ok, const std::string& result, const std::string& error) {
  write([&] {
    Stmt(db_, "UPDATE work_queue SET state = ?, result = ?, error = ?, updated_at = ? WHERE id = ?")
        .bind(ok ? kWorkDone : kWorkFailed)
        .bind(result)
        .bind(error)
        .bind(utc_now())
        .bind(id)
        .run();
  });
}

std::optional<WorkItem> Store::find_work(int64_t id) {
  Stmt s(db_, std::string("SELECT ") + kWorkCols + " FROM work_queue WHERE id = ?");
  s.bind(id);
  if (!s.step()) return std::nullopt;
  return read_work(s);
}

std::vector<WorkItem> Store::work(const std::string& host) {
  Stmt s(db_, std::string("SELECT ") + kWorkCols + " FROM work_queue" +
                  (host.empty() ? "" : " WHERE host = ?") + " ORDER BY id");
  if (!host.empty()) s.bind(host);
  std::vector<WorkItem> out;
  while (s.step()) out.push_back(read_work(s));
  return out;
}

bool Store::work_pending(const std::string& instance_id, const std::string& kind) {
  Stmt s(db_,
         "SELECT COUNT(*) FROM work_queue WHERE instance_id = ? AND kind = ? AND "
         "state IN ('queued', 'running')");
  s.bind(instance_id).bind(kind);
  s.step();
  return s.integer(0) > 0;
}

std::vector<WorkItem> Store::fail_running_work(const std::string& host, const std::string& error) {
  std::vector<WorkItem> out;
  write([&] {
    Stmt s(db_, std::string("SELECT ") + kWorkCols +
                    " FROM work_queue WHERE host = ? AND state = 'running' ORDER BY id");
    s.bind(host);
    while (s.step()) out.push_back(read_work(s));
    for (auto& w : out) {
      w.state = kWorkFailed;
      w.error = error;
      Stmt(db_, "UPDATE work_queue SET state = 'failed', error = ?, updated_at = ? WHERE id = ?")
          .bind(error)
          .bind(utc_now())
          .bind(w.id)
          .run();
    }
  });
  return out;
}

}  // namespace kiln::spawn
