// What an instance snapshot (snapshot.cpp) keeps in the instance's directory, and what the rest
// of Compute needs of it:
//
//   STATE/instances/<id>/snapshot.json   the snapshot in progress (its image id and name, its
//                                        temporary layer, its steps, each recorded before its
//                                        work starts) and the layers a failed commit left under
//                                        the export; absent when there is neither
//   STATE/instances/<id>/snapshot-<image id>.qcow2   the temporary top layer of a live snapshot
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "kiln/spawn/store.h"

namespace kiln::spawn {

// Layers that failed commits may leave under an export before snapshots of it are refused.
inline constexpr size_t kMaxSnapshotLayers = 8;

struct SnapshotRecord {
  // The snapshot in progress; empty image_id: none.
  std::string image_id, image_name;
  std::string layer;               // its temporary layer, while the export may run on it
  std::vector<std::string> steps;  // steps whose work may exist (their undo is due)
  // Layers the export runs on above the overlay, oldest first: a snapshot whose commit failed
  // left them there (the guest's writes since are in them).
  std::vector<std::string> layers;
};

// Where the record of the instance whose directory is `dir` is (snapshot.json).
std::string snapshot_record_path(const std::string& dir);
// The record of the instance whose directory is `dir` (an empty one if there is none). Throws
// Error(kCorrupt) for a file that is not one.
SnapshotRecord load_snapshot_record(const std::string& dir);
// Replaces it atomically (written, synced, renamed); an empty record removes the file.
void save_snapshot_record(const std::string& dir, const SnapshotRecord& rec);

// The image the instance's export serves: the overlay (dir/disk), or the top layer that a
// snapshot's failed commit left on it.
std::string active_disk(const Instance& inst);

// What a snapshot killed half-way left outside the instance's directory `dir` (the new image's
// temporary file, its row): removed. For delete and disk-remove, which remove the directory.
void discard_snapshot_leftovers(Store& store, const std::string& dir);

}  // namespace kiln::spawn
