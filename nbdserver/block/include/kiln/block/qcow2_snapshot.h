// Internal qcow2 snapshots (kiln-img snapshot): create, apply, delete, as qemu-img does them.
// Each call opens the image for writing (locked), changes it in the order docs/block-layer.md
// describes ("Internal snapshots") and closes it. Errors are thrown as kiln::block::Error with
// an errno (ENOENT: no such snapshot) and a message that does not repeat the operation.
#pragma once

#include <cerrno>
#include <string>

#include "kiln/block/device.h"
#include "kiln/block/reactor.h"

namespace kiln::block::qcow2 {

// No snapshot has that id or name (apply, delete). Other failures are plain Errors.
class SnapshotNotFound : public Error {
 public:
  explicit SnapshotNotFound(const std::string& what) : Error(Reason::kNotFound, ENOENT, what) {}
};

// The longest name QEMU keeps (its snapshot name buffer is 256 bytes): longer ones are cut.
constexpr size_t kMaxSnapshotName = 255;

// Takes a snapshot of the active image named `name` (names need not be unique; the id is the
// next free number).
void snapshot_create(Reactor& reactor, const std::string& path, const std::string& name);
// Makes the active image a copy of the snapshot whose id, or else name, is `id_or_name`; the
// virtual size becomes the snapshot's.
void snapshot_apply(Reactor& reactor, const std::string& path, const std::string& id_or_name);
// Deletes the first snapshot named `name` (qemu-img -d looks up names only).
void snapshot_delete(Reactor& reactor, const std::string& path, const std::string& name);

}  // namespace kiln::block::qcow2
