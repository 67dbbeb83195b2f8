// The instance's snapshot record (snapshot.h): what start and delete read from it, and a record
// that names files outside the instance's directory, or too many, refused rather than followed.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>

#include "kiln/spawn/compute.h"
#include "kiln/spawn/error.h"
#include "snapshot.h"
#include "test_util.h"

namespace kiln::spawn {
namespace {

using testing::TempDir;

void write(const std::string& path, const std::string& text) { std::ofstream(path) << text; }

TEST(SnapshotRecord, StepsInNovasOrder) {
  EXPECT_EQ(snapshot_steps(), (std::vector<std::string>{"freeze", "convert", "merge", "upload"}));
}

TEST(SnapshotRecord, AbsentEmptyAndRoundTrip) {
  TempDir d;
  Instance inst;
  inst.dir = d.str();
  SnapshotRecord none = load_snapshot_record(d.str());
  EXPECT_TRUE(none.image_id.empty() && none.layers.empty() && none.steps.empty());
  EXPECT_EQ(active_disk(inst), d / "disk");

  SnapshotRecord r;
  r.image_id = "0b6c2f4e-0000-4000-8000-000000000001";
  r.image_name = "snap1";
  r.layer = d / "snapshot-b.qcow2";
  r.steps = {"freeze", "convert"};
  r.layers = {d / "snapshot-a.qcow2"};
  save_snapshot_record(d.str(), r);
  struct stat st {};
  ASSERT_EQ(::stat((d / "snapshot.json").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  SnapshotRecord back = load_snapshot_record(d.str());
  EXPECT_EQ(back.image_id, r.image_id);
  EXPECT_EQ(back.image_name, "snap1");
  EXPECT_EQ(back.layer, r.layer);
  EXPECT_EQ(back.steps, r.steps);
  EXPECT_EQ(back.layers, r.layers);
  // The export's image: the top layer a failed commit left.
  EXPECT_EQ(active_disk(inst), d / "snapshot-a.qcow2");

  // Nothing pending and no layer: no file.
  save_snapshot_record(d.str(), SnapshotRecord{});
  EXPECT_FALSE(std::filesystem::exists(d / "snapshot.json"));
  EXPECT_EQ(active_disk(inst), d / "disk");
}

TEST(SnapshotRecord, NamesOutsideTheInstanceAreRefused) {
  TempDir d;
  Instance inst;
  inst.dir = d.str();
  const std::string dir = d.str();
  for (const std::string& layer :
       {std::string("/etc/passwd"), dir + "/disk", dir + "/snapshot-../../x.qcow2",
        dir + "/snapshot-a/b.qcow2", dir + "/snapshot-a.raw", dir + "x/snapshot-a.qcow2"}) {
    SCOPED_TRACE(layer);
    write(d / "snapshot.json", "{\"layers\":[\"" + layer + "\"]}");
    try {
      active_disk(inst);
      ADD_FAILURE() << "accepted";
    } catch (const Error& e) {
      EXPECT_EQ(e.reason(), Reason::kCorrupt) << e.what();
      EXPECT_NE(std::string(e.what()).find("is not one of"), std::string::npos) << e.what();
    }
    write(d / "snapshot.json", "{\"image_id\":\"x\",\"layer\":\"" + layer + "\"}");
    EXPECT_THROW(load_snapshot_record(d.str()), Error);
  }
}

TEST(SnapshotRecord, MalformedOrHugeIsAnError) {
  TempDir d;
  std::string many = "{\"layers\":[";
  for (int i = 0; i < 17; ++i) many += (i ? "," : "") + ("\"" + d / "snapshot-") + "x.qcow2\"";
  many += "]}";
  for (const std::string& text :
       {std::string("not json"), std::string("[1,2]"), std::string("{\"layers\":\"a\"}"),
        std::string("{\"image_id\":7}"), std::string("{\"steps\":[1]}"), many}) {
    SCOPED_TRACE(text);
    write(d / "snapshot.json", text);
    try {
      load_snapshot_record(d.str());
      ADD_FAILURE() << "accepted";
    } catch (const Error& e) {
      EXPECT_EQ(e.reason(), Reason::kCorrupt) << e.what();
    }
  }
  write(d / "snapshot.json", "{\"image_name\":\"" + std::string(70000, 'a') + "\"}");
  try {
    load_snapshot_record(d.str());
    ADD_FAILURE() << "accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("larger than"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace kiln::spawn
