// Errors of kiln-spawn's control plane: kiln::common::Error (a reason code and a message meant
// for the user); see docs/common.md for the reasons. A claim that does not fit the host is
// kNoSpace (the message names the resource).
#pragma once

#include "kiln/common/error.h"

namespace kiln::spawn {

using common::Error;
using common::Reason;
using namespace common::errors;  // invalid(), not_found(), exists(), busy(), no_space(), ...

}  // namespace kiln::spawn
