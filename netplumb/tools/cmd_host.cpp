// kiln-net's host commands: settings, apply (plumb the whole model) and teardown.
#include <iostream>

#include "context.h"
#include "kiln/net/plumber.h"

namespace kiln::net::cli {

namespace {

int config_set(Context& c) {
  c.args.max_positional(2);
  c.svc.set_setting(c.args.positional(0, "KEY"), c.args.positional(1, "VALUE"));
  return 0;
}

int config_show(Context& c) {
  c.args.max_positional(0);
  Json o = Json::object();
  for (auto& [k, v] : c.svc.settings()) o[k] = v;
  c.show(o);
  return 0;
}

int apply(Context& c) {
  c.args.max_positional(0);
  c.verbose_plumb = true;  // the plumbing itself runs after every changing command
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
      changing({"config-set", "KEY VALUE", {}, config_set}),
      {"config-show", "", {}, config_show},
      changing({"apply", "  (plumb the whole model; repairs drift)", {}, apply}),
      {"teardown", "  (remove everything kiln-net plumbed; the model stays)", {}, teardown},
  };
}

}  // namespace kiln::net::cli
