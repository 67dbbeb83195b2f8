// The part of spawn's store that knows compute hosts: the migration that added them (store.cpp
// lists it with the others).
#pragma once

#include <string>
#include <vector>

#include "kiln/common/store.h"

namespace kiln::spawn {

// Version 4: the hosts table, and a host on every claim and instance. The host this kiln-spawn
// runs on is registered from its settings (and discovery on `dir`), and the claims and instances
// that exist are put on it: a single-host store goes on working as it did.
void hosts_v4(common::Database& db, const std::string& dir);

// Version 5: the work queue (store.h WorkItem).
void work_queue_v5(common::Database& db);

// Every migration of spawn's store, in order (store.cpp); tests make older databases with the
// first ones.
std::vector<common::Database::Migration> store_migrations(const std::string& dir);

}  // namespace kiln::spawn
