// kiln-spawn's instance commands: boot, list, show, console-log, stop, start, delete, snapshot.
#include <cstdlib>
#include <iostream>

#include "context.h"
#include "kiln/spawn/disk_key.h"
#include "kiln/spawn/resources.h"

namespace kiln::spawn::cli {

namespace {

Json to_json(const Instance& i) {
  return {{"id", i.id},
          {"name", i.name},
          {"status", i.status},
          {"task_state", i.task_state},
          {"fault", i.fault},
          {"image", i.image_id},
          {"flavor", i.flavor},
          {"vcpus", i.vcpus},
          {"ram", i.ram_mb},
          {"disk", i.disk_gb},
          {"network", i.network},
          {"network_id", i.network_id},
          {"port_id", i.port_id},
          {"mac_address", i.mac},
          {"ip_address", i.ip},
          {"tap", i.tap},
          {"export", i.export_name},
          {"domain", i.domain_name},
          {"instance_dir", i.dir},
          {"steps", i.steps_done},
          {"base_filled", i.base_filled},
          {"encrypted", !i.dir.empty() && instance_encrypted(i.dir)},
          {"created_at", i.created_at},
          {"updated_at", i.updated_at},
          {"host", i.host}};
}

int boot(Context& c) {
  c.args.max_positional(1);
  BootRequest r;
  r.name = c.args.positional(0, "NAME");
  r.image = c.args.get_or("--image", "");
  r.flavor = c.args.get_or("--flavor", "");
  r.network = c.args.get_or("--net", "");
  r.key_file = c.args.get_or("--key-file", "");
  r.user_data_file = c.args.get_or("--user-data", "");
  for (const auto& f : c.args.all("--file")) {
    auto eq = f.find('=');
    if (eq == std::string::npos || eq == 0 || eq + 1 == f.size())
      throw invalid("--file needs PATH=SRC, not '" + f + "'");
    r.files.emplace_back(f.substr(0, eq), f.substr(eq + 1));
  }
  r.security_groups = c.args.all("--security-group");
  r.inject = c.args.flag("--inject");
  const std::string drive = c.args.get_or("--config-drive", "true");
  if (drive != "true" && drive != "false")
    throw invalid("--config-drive must be true or false, not '" + drive + "'");
  r.config_drive = drive == "true";
  r.availability_zone = c.args.get_or("--availability-zone", "");  // any: the host's
  r.host = c.args.get_or("--host", "");
  r.kernel = c.args.get_or("--kernel", "");
  r.initrd = c.args.get_or("--initrd", "");
  r.cmdline = c.args.get_or("--cmdline", "");
  r.encrypted = c.args.flag("--encrypted");
  r.wait = !c.args.flag("--no-wait");
  c.show(to_json(c.compute().boot(r)));
  return 0;
}

int list(Context& c) {
  c.args.max_positional(0);
  std::vector<Json> a;
  for (const auto& i : c.store().instances()) {
    Json o = to_json(i);
    o["networks"] = i.ip.empty() ? "" : i.network + "=" + i.ip;
    a.push_back(o);
  }
  c.list(a, {"id", "name", "status", "task_state", "networks", "flavor"});
  return 0;
}

int show(Context& c) {
  c.args.max_positional(1);
  Store& s = c.store();
  const std::string& name = c.args.positional(0, "INSTANCE");
  auto i = s.find_instance(name);
  if (!i) throw not_found("instance '" + name + "' not found");
  Json o = to_json(*i);
  o["power_state"] = c.compute().power_state(*i);
  if (c.format == Format::kJson) {
    Json ev = Json::array();
    for (const auto& e : s.events(i->id))
      ev.push_back({{"at", e.at},
                    {"status", e.status},
                    {"task_state", e.task_state},
                    {"message", e.message}});
    o["events"] = ev;
    o["domain_xml"] = i->domain_xml;
  }
  c.show(o);
  return 0;
}

int console_log(Context& c) {
  c.args.max_positional(1);
  std::cout << c.compute().console_log(c.args.positional(0, "INSTANCE"));
  return 0;
}

// Nova's `openstack server image create` (createImage): prints the new image as image-show.
int snapshot(Context& c) {
  c.args.max_positional(2);
  const std::string ref = c.args.positional(0, "INSTANCE");
  SnapshotRequest r;
  r.image_name = c.args.positional(1, "IMAGE_NAME");
  r.disk_format = c.args.get_or("--disk-format", "qcow2");
  r.compress = c.args.get_or("--compress", "");
  c.show(image_json(c.compute().snapshot(ref, r)));
  return 0;
}

// What a kiln-spawn that died left half-done on this host; exit 1 if some of it could not be
// cleaned (each named with why).
int cleanup(Context& c) {
  c.args.max_positional(0);
  CleanupReport r = c.compute().cleanup();
  c.show(Json{{"builds_rolled_back", r.builds_rolled_back},
              {"deletes_finished", r.deletes_finished},
              {"snapshots_rolled_back", r.snapshots_rolled_back},
              {"in_progress", r.in_progress},
              {"errors", r.errors}});
  return r.errors.empty() ? 0 : 1;
}

// kiln-spawn agent: this host's work queue until SIGTERM or SIGINT (or, with --once, until it
// is empty); prints what it did.
int agent(Context& c) {
  c.args.max_positional(0);
  if (c.args.has("--host")) {
    const std::string host = c.args.get_or("--host", "");
    check_host_name(host);
    ::setenv("KILN_HOST", host.c_str(), 1);  // this_host() for everything that follows
  }
  AgentOptions o;
  o.poll_interval_ms =
      static_cast<int>(c.args.number("--poll-interval", 10, 60000).value_or(o.poll_interval_ms));
  o.once = c.args.flag("--once");
  AgentReport r = c.compute().run_agent(o);
  c.show(Json{{"host", this_host()},
              {"dead_rows_failed", r.dead_rows},
              {"builds_rolled_back", r.cleanup.builds_rolled_back},
              {"deletes_finished", r.cleanup.deletes_finished},
              {"snapshots_rolled_back", r.cleanup.snapshots_rolled_back},
              {"cleanup_errors", r.cleanup.errors},
              {"rows_done", r.done},
              {"rows_failed", r.failed}});
  return 0;
}

// The work queue's rows (of one host with --host), oldest first; payloads are not shown (they
// hold the boot's key, user data and files).
int work_list(Context& c) {
  c.args.max_positional(0);
  std::vector<Json> rows;
  for (const auto& w : c.store().work(c.args.get_or("--host", "")))
    rows.push_back(Json{{"id", w.id},
                        {"host", w.host},
                        {"kind", w.kind},
                        {"instance_id", w.instance_id},
                        {"state", w.state},
                        {"result", w.result},
                        {"error", w.error},
                        {"taken_by", w.taken_by},
                        {"created_at", w.created_at},
                        {"updated_at", w.updated_at}});
  c.list(rows, {"id", "host", "kind", "instance_id", "state", "error"});
  return 0;
}

// stop, start, delete: one or more instances, in order.
Command each(const char* name, void (*action)(Compute&, const std::string&)) {
  return {name, "INSTANCE...", {}, [action](Context& c) {
            c.args.positional(0, "INSTANCE");
            for (const auto& r : c.args.positional()) action(c.compute(), r);
            return 0;
          }};
}

}  // namespace

CommandTable instance_commands() {
  return {
      {"boot",
       "NAME --image I --flavor F --net N [--key-file F] [--user-data F] "
       "[--file PATH=SRC]... [--security-group G]... [--inject] [--config-drive true|false] "
       "[--kernel K [--initrd I] "
       "[--cmdline C]] [--availability-zone ZONE[:HOST]] [--host HOST] [--encrypted] [--no-wait]",
       {{"--inject"},
        {"--config-drive", kValue},
        {"--image", kValue},
        {"--flavor", kValue},
        {"--net", kValue},
        {"--key-file", kValue},
        {"--user-data", kValue},
        {"--file", kValue},
        {"--security-group", kValue},
        {"--availability-zone", kValue},
        {"--host", kValue},
        {"--kernel", kValue},
        {"--initrd", kValue},
        {"--cmdline", kValue},
        {"--encrypted"},
        {"--no-wait"}},
       boot},
      {"list", "", {}, list},
      {"show", "INSTANCE", {}, show},
      {"console-log", "INSTANCE", {}, console_log},
      each("stop", [](Compute& c, const std::string& r) { c.stop(r); }),
      each("start", [](Compute& c, const std::string& r) { c.start(r); }),
      each("delete", [](Compute& c, const std::string& r) { c.remove(r); }),
      {"snapshot",
       "INSTANCE IMAGE_NAME [--disk-format qcow2|raw] [--compress zlib|zstd]",
       {{"--disk-format", kValue}, {"--compress", kValue}},
       snapshot},
      {"cleanup", "", {}, cleanup},
      {"agent",
       "[--host NAME] [--poll-interval MS] [--once]",
       {{"--host", kValue}, {"--poll-interval", kValue}, {"--once"}},
       agent},
      {"work-list", "[--host NAME]", {{"--host", kValue}}, work_list},
  };
}

}  // namespace kiln::spawn::cli
