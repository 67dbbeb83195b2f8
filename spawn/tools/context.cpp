// The helpers of context.h.
#include "context.h"

#include <iostream>

namespace kiln::spawn::cli {

void Context::show(const Json& object) const {
  common::cli::print_object(std::cout, object, format);
}

void Context::list(const std::vector<Json>& objects,
                   const std::vector<std::string>& columns) const {
  common::cli::print_list(std::cout, objects, columns, format);
}

}  // namespace kiln::spawn::cli
