// Test helper: records an instance's metadata in kiln-spawn's store as a boot's config-drive
// step does (Store::put_metadata), without booting anything.
//   metadata_seed STATE_DIR UUID NAME NETWORK_ID IP [USER_DATA]
#include <iostream>

#include "kiln/spawn/metadata.h"
#include "kiln/spawn/store.h"

int main(int argc, char** argv) {
  using namespace kiln::spawn;
  if (argc != 6 && argc != 7) {
    std::cerr << "usage: metadata_seed STATE_DIR UUID NAME NETWORK_ID IP [USER_DATA]\n";
    return 2;
  }
  ConfigDriveInput in;
  in.uuid = argv[2];
  in.name = argv[3];
  in.hostname = sanitize_hostname(in.name);
  in.project_id = "demo";
  in.flavor = "m1.tiny";
  in.image_id = "aabbccdd-0000-4000-8000-000000000000";
  in.public_keys = {{"key-" + in.name, "ssh-ed25519 AAAAC3Nz " + in.name + "@test"}};
  if (argc == 7) {
    in.has_user_data = true;
    in.user_data = argv[6];
  }
  ConfigDriveNetwork n;
  n.network_id = argv[4];
  n.ip = argv[5];
  n.netmask = "255.255.255.0";
  in.networks = {n};
  Store store(argv[1]);
  store.put_metadata(in.uuid, metadata_record(in), {{n.network_id, n.ip}});
  return 0;
}
