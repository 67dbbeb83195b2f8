// The helpers of context.h.
#include "context.h"

#include <iostream>

namespace kiln::net::cli {

std::string Context::tenant() const {
  return args.get("--tenant-id").value_or(args.get_or("--os-tenant-name", kDefaultTenant));
}

void Context::show(const Json& object) const {
  common::cli::print_object(std::cout, object, format);
}

void Context::list(const std::vector<Json>& objects,
                   const std::vector<std::string>& columns) const {
  common::cli::print_list(std::cout, objects, columns, format);
}

void Context::deleted(const std::string& what, const std::string& ref) const {
  if (format == Format::kTable) std::cout << "Deleted " << what << ": " << ref << "\n";
}

Command changing(Command c) {
  c.run = [run = std::move(c.run)](Context& ctx) {
    int rc = run(ctx);
    ctx.changed = true;
    return rc;
  };
  return c;
}

}  // namespace kiln::net::cli
