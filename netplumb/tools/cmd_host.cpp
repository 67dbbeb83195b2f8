// kiln-net's host commands: settings, apply (plumb the whole model) and teardown.
#include <iostream>

#include "context.h"
#include "kiln/common/host.h"
#include "kiln/net/plumber.h"

namespace kiln::net::cli {

namespace {

int config_set(Context& c) {
  c.args.max_positional(2);
  std::string host = c.args.get_or("--host", "");
  c.svc.set_setting(c.args.positional(0, "KEY"), c.args.positional(1, "VALUE"), host);
  // Another host's settings are plumbed there, by its own kiln-net.
  if (!host.empty() && host != common::this_host_name()) c.skip_plumb = true;
  return 0;
}

int config_show(Context& c) {
  c.args.max_positional(0);
  std::string host = c.args.get_or("--host", "");
  Json o = Json::object();
  o["host"] = host.empty() ? common::this_host_name() : host;
  for (auto& [k, v] : c.svc.settings(host)) o[k] = v;
  c.show(o);
  return 0;
}

int apply(Context& c) {
  c.args.max_positional(0);
  c.svc.report_agent();    // this host's tunnel address, for the others' flood lists
  c.verbose_plumb = true;  // the plumbing itself runs after every changing command
  return 0;
}

int agent_register(Context& c) {
  c.args.max_positional(0);
  c.show(to_json(c.svc.report_agent()));
  return 0;
}

int agent_list(Context& c) {
  c.args.max_positional(0);
  std::vector<Json> rows;
  for (auto& a : c.svc.agents()) rows.push_back(to_json(a));
  c.list(rows, {"id", "agent_type", "host", "alive", "admin_state_up", "binary"});
  return 0;
}

int agent_show(Context& c) {
  c.args.max_positional(1);
  c.show(to_json(c.svc.agent(c.args.positional(0, "AGENT"))));
  return 0;
}

int agent_update(Context& c) {
  c.args.max_positional(1);
  auto v = c.args.get("--admin-state-up");
  if (!v) throw invalid("agent-update wants --admin-state-up True|False");
  c.show(to_json(c.svc.update_agent(c.args.positional(0, "AGENT"),
                                    common::cli::parse_bool(*v, "--admin-state-up"))));
  return 0;
}

int agent_delete(Context& c) {
  c.args.positional(0, "AGENT");
  for (auto& r : c.args.positional()) {
    c.svc.delete_agent(r);
    c.deleted("agent", r);
  }
  return 0;
}

int teardown(Context& c) {
  c.args.max_positional(0);
  Plumber plumber(host_config(c.svc));
  ApplyResult r = plumber.teardown();
  for (auto& e : r.errors) std::cerr << "kiln-net: teardown: " << e << "\n";
  return r.errors.empty() ? 0 : 1;
}

}  // namespace

CommandTable host_commands() {
  return {
      changing({"config-set",
                "KEY VALUE [--host HOST]  (host settings: this host's, or HOST's)",
                {{"--host", kValue}},
                config_set}),
      {"config-show", "[--host HOST]", {{"--host", kValue}}, config_show},
      changing({"apply",
                "  (report this host's agent, plumb the whole model; repairs drift)",
                {},
                apply}),
      {"agent-register",
       "  (record this host's agent and tunnel IP without plumbing)",
       {},
       agent_register},
      {"agent-list", "", {}, agent_list},
      {"agent-show", "AGENT  (id or host)", {}, agent_show},
      changing({"agent-update",
                "AGENT --admin-state-up True|False  (down: no host's peer)",
                {{"--admin-state-up", kValue}},
                agent_update}),
      changing({"agent-delete",
                "AGENT...  (the other hosts stop flooding to it at their apply)",
                {},
                agent_delete}),
      {"teardown", "  (remove everything kiln-net plumbed; the model stays)", {}, teardown},
  };
}

}  // namespace kiln::net::cli
