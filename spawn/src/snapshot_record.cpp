// The instance's snapshot record (snapshot.h): read, written, and what delete and start need of
// it.
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "kiln/spawn/error.h"
#include "kiln/spawn/images.h"
#include "snapshot.h"
#include "util.h"

namespace kiln::spawn {

namespace {

using json = nlohmann::json;

constexpr size_t kMaxRecordBytes = 64 * 1024;
// Names in a list: the layers, and the steps (fewer).
constexpr size_t kMaxLayers = 2 * kMaxSnapshotLayers;

// A layer is a file of the instance's own directory, named as the snapshot names them: the
// record cannot make delete or start touch anything else.
bool is_layer_of(const std::string& dir, const std::string& path) {
  const std::string prefix = dir + "/snapshot-";
  return path.size() > prefix.size() + 6 && path.starts_with(prefix) && path.ends_with(".qcow2") &&
         path.find('/', prefix.size()) == std::string::npos;
}

std::string text_field(const json& j, const char* key, const std::string& where) {
  if (!j.contains(key)) return "";
  if (!j[key].is_string()) throw corrupt(where + ": \"" + key + "\" is not a string");
  return j[key].get<std::string>();
}

std::vector<std::string> list_field(const json& j, const char* key, const std::string& where) {
  std::vector<std::string> out;
  if (!j.contains(key)) return out;
  if (!j[key].is_array() || j[key].size() > kMaxLayers)
    throw corrupt(where + ": \"" + key + "\" is not a list of at most " +
                  std::to_string(kMaxLayers) + " names");
  for (const auto& v : j[key]) {
    if (!v.is_string()) throw corrupt(where + ": \"" + key + "\" holds a non-string");
    out.push_back(v.get<std::string>());
  }
  return out;
}

}  // namespace

std::string snapshot_record_path(const std::string& dir) { return dir + "/snapshot.json"; }

SnapshotRecord load_snapshot_record(const std::string& dir) {
  const std::string path = snapshot_record_path(dir);
  SnapshotRecord rec;
  if (::access(path.c_str(), F_OK) != 0) return rec;
  json j = json::parse(read_file(path, kMaxRecordBytes, "snapshot record"), nullptr, false);
  if (j.is_discarded() || !j.is_object()) throw corrupt(path + " is not a JSON object");
  rec.image_id = text_field(j, "image_id", path);
  rec.image_name = text_field(j, "image_name", path);
  rec.layer = text_field(j, "layer", path);
  rec.steps = list_field(j, "steps", path);
  rec.layers = list_field(j, "layers", path);
  if (!rec.layer.empty() && !is_layer_of(dir, rec.layer))
    throw corrupt(path + ": layer " + rec.layer + " is not a snapshot layer of " + dir);
  for (const auto& l : rec.layers)
    if (!is_layer_of(dir, l)) throw corrupt(path + ": layer " + l + " is not one of " + dir);
  return rec;
}

void save_snapshot_record(const std::string& dir, const SnapshotRecord& rec) {
  const std::string path = snapshot_record_path(dir);
  if (rec.image_id.empty() && rec.layers.empty()) {
    if (::unlink(path.c_str()) != 0 && errno != ENOENT)
      throw errno_error("cannot remove " + path, errno);
    sync_dir(dir);
    return;
  }
  json j = {{"image_id", rec.image_id},
            {"image_name", rec.image_name},
            {"layer", rec.layer},
            {"steps", rec.steps},
            {"layers", rec.layers}};
  const std::string tmp = path + ".tmp";
  write_file(tmp, j.dump(2) + "\n");
  if (::rename(tmp.c_str(), path.c_str()) != 0) throw errno_error("cannot rename " + tmp, errno);
  sync_dir(dir);
}

std::string active_disk(const Instance& inst) {
  SnapshotRecord rec = load_snapshot_record(inst.dir);
  return rec.layers.empty() ? inst.dir + "/disk" : rec.layers.back();
}

void discard_snapshot_leftovers(Store& store, const std::string& dir) {
  SnapshotRecord rec = load_snapshot_record(dir);
  if (rec.image_id.empty()) return;
  ImageStore images(store);
  if (::unlink(images.temp_path(rec.image_id).c_str()) != 0 && errno != ENOENT)
    throw errno_error("cannot remove " + images.temp_path(rec.image_id), errno);
  if (store.find_image(rec.image_id)) images.remove(rec.image_id);
}

}  // namespace kiln::spawn
