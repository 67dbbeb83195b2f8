// Errors of the netplumb control plane: kiln::common::Error (a reason code and a message meant
// for the user, "subnet 'x' has ports: ..."); see docs/common.md for the reasons.
#pragma once

#include "kiln/common/error.h"

namespace kiln::net {

using common::Error;
using common::Reason;

using common::busy;
using common::errno_error;
using common::exists;
using common::invalid;
using common::no_space;
using common::not_found;
using common::system_error;

}  // namespace kiln::net
