// The subcommands of kiln-img, one table (kiln-img.cpp). Each gets its options and positionals
// parsed by the common CLI layer, prints what qemu-img prints, and returns the exit code;
// errors are thrown as ToolError or kiln::block::Error and turned into one line by run_main().
#pragma once

#include <string>
#include <vector>

#include "kiln/block/qcow2.h"
#include "kiln/block/reactor.h"
#include "kiln/common/cli.h"
#include "kiln/common/json.h"

namespace kiln::block::cli {

using common::cli::Args;

int img_create(const common::cli::Args& args);
int img_info(const common::cli::Args& args);
int img_check(const common::cli::Args& args);
int img_map(const common::cli::Args& args);
int img_resize(const common::cli::Args& args);
int img_convert(const common::cli::Args& args);
// img_compare.cpp, img_commit.cpp, img_rebase.cpp, img_measure.cpp, img_amend.cpp
int img_compare(const common::cli::Args& args);
int img_commit(const common::cli::Args& args);
int img_rebase(const common::cli::Args& args);
int img_measure(const common::cli::Args& args);
int img_amend(const common::cli::Args& args);
int img_snapshot(const common::cli::Args& args);

// Shared by the subcommands.
enum class OutputFormat { kHuman, kJson };
OutputFormat parse_output_format(const std::string& value);
// The format given with -f, or the probed one. Throws on unknown names. For commands that only
// read the top image's header (info, check); those that open the image through the block
// layer pass the format as given (checked with valid_format), so that a probed image that
// names a backing file is refused there.
std::string resolve_format(const std::string& requested, const std::string& path);
// `requested` if it is empty (probe) or a known format; throws otherwise.
std::string valid_format(const std::string& requested);
// The snapshot list of `info` and `snapshot -l` (img_snapshot.cpp); nothing if empty.
void print_snapshot_list(const std::vector<kiln::block::qcow2::SnapshotInfo>& snapshots);
// The "snapshots" array of `info --output=json`.
common::Json snapshots_json(const std::vector<kiln::block::qcow2::SnapshotInfo>& snapshots);

}  // namespace kiln::block::cli
