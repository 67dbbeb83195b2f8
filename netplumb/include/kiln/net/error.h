// Errors of the netplumb control plane: kiln::common::Error (a reason code and a message meant
// for the user, "subnet 'x' has ports: ..."); see docs/common.md for the reasons.
#pragma once

#include "kiln/common/error.h"

namespace kiln::net {

using common::Error;
using common::Reason;
using namespace common::errors;  // invalid(), not_found(), exists(), busy(), no_space(), ...

}  // namespace kiln::net
