// kiln-img info: what qemu-img info prints, in human or JSON form, optionally for the whole
// backing chain.
#include <sys/stat.h>

#include <cinttypes>
#include <cstdio>
#include <ctime>
#include <set>
#include <string>
#include <vector>

#include "img_commands.h"
#include "kiln/block/device.h"
#include "kiln/block/qcow2.h"
#include "tool_util.h"

namespace kiln::block::cli {
namespace {

constexpr int kMaxChain = 64;

struct ImageInfo {
  std::string filename;
  std::string format;
  uint64_t virtual_size = 0;
  int64_t actual_size = -1;
  bool is_qcow2 = false;
  kiln::block::qcow2::Info q;
  std::string full_backing;  // resolved as qemu does, relative to `filename`
};

ImageInfo collect(const std::string& path, const std::string& format, bool lock) {
  ImageInfo info;
  info.filename = path;
  info.format = format;
  info.actual_size = allocated_bytes(path);
  if (format == "raw") {
    // Like QEMU, a raw image is a whole number of 512-byte sectors.
    info.virtual_size = (file_length(path) + 511) / 512 * 512;
    return info;
  }
  info.is_qcow2 = true;
  info.q = kiln::block::qcow2::read_info(kiln::block::Reactor::current(), path, lock);
  info.virtual_size = info.q.virtual_size;
  if (!info.q.backing_file.empty()) info.full_backing = path_combine(path, info.q.backing_file);
  return info;
}

std::string compat_name(uint32_t version) { return version >= 3 ? "1.1" : "0.10"; }

// The LUKS block of format-specific, keys in qemu-img 7.2's order.
common::Json encrypt_json(const kiln::block::qcow2::EncryptInfo& e) {
  common::Json j;
  j["ivgen-alg"] = e.ivgen_alg;
  j["hash-alg"] = e.hash_alg;
  j["cipher-alg"] = e.cipher_alg;
  j["uuid"] = e.uuid;
  j["format"] = "luks";
  j["cipher-mode"] = e.cipher_mode;
  common::Json slots = common::Json::array();
  for (const auto& s : e.slots) {
    common::Json k;
    k["active"] = s.active;
    if (s.active) k["iters"] = uint64_t{s.iters};
    k["key-offset"] = s.key_offset;
    if (s.active) k["stripes"] = uint64_t{s.stripes};
    slots.push_back(std::move(k));
  }
  j["slots"] = slots;
  j["payload-offset"] = e.payload_offset;
  j["master-key-iters"] = uint64_t{e.master_key_iters};
  return j;
}

void print_encrypt(const kiln::block::qcow2::EncryptInfo& e) {
  std::printf(
      "    encrypt:\n        ivgen alg: %s\n        hash alg: %s\n        cipher alg: %s\n"
      "        uuid: %s\n        format: luks\n        cipher mode: %s\n        slots:\n",
      e.ivgen_alg.c_str(), e.hash_alg.c_str(), e.cipher_alg.c_str(), e.uuid.c_str(),
      e.cipher_mode.c_str());
  for (size_t n = 0; n < e.slots.size(); ++n) {
    const auto& s = e.slots[n];
    std::printf("            [%zu]:\n                active: %s\n", n, s.active ? "true" : "false");
    if (s.active) std::printf("                iters: %u\n", s.iters);
    std::printf("                key offset: %" PRIu64 "\n", s.key_offset);
    if (s.active) std::printf("                stripes: %u\n", s.stripes);
  }
  std::printf("        payload offset: %" PRIu64 "\n        master key iters: %u\n",
              e.payload_offset, e.master_key_iters);
}

common::Json to_json(const ImageInfo& i) {
  // Keys in the order qemu-img 7.2 prints them.
  common::Json o;
  if (i.is_qcow2 && !i.q.backing_file.empty() && !i.q.backing_format.empty())
    o["backing-filename-format"] = i.q.backing_format;
  if (i.is_qcow2 && !i.q.snapshots.empty()) o["snapshots"] = snapshots_json(i.q.snapshots);
  o["virtual-size"] = i.virtual_size;
  o["filename"] = i.filename;
  if (i.is_qcow2) o["cluster-size"] = uint64_t{i.q.cluster_size};
  o["format"] = i.format;
  if (i.actual_size >= 0) o["actual-size"] = i.actual_size;
  if (i.is_qcow2) {
    common::Json data;
    data["compat"] = compat_name(i.q.version);
    data["compression-type"] = i.q.compression_type.empty() ? "zlib" : i.q.compression_type;
    if (i.q.version >= 3) data["lazy-refcounts"] = i.q.lazy_refcounts;
    data["refcount-bits"] = uint64_t{i.q.refcount_bits};
    if (i.q.encrypt) data["encrypt"] = encrypt_json(*i.q.encrypt);
    if (i.q.version >= 3) {
      data["corrupt"] = i.q.corrupt;
      data["extended-l2"] = i.q.extended_l2;
    }
    common::Json fs;
    fs["type"] = "qcow2";
    fs["data"] = data;
    o["format-specific"] = fs;
    if (!i.q.backing_file.empty()) {
      o["full-backing-filename"] = i.full_backing;
      o["backing-filename"] = i.q.backing_file;
    }
  }
  if (i.is_qcow2 && i.q.encrypted) o["encrypted"] = true;
  o["dirty-flag"] = i.is_qcow2 && i.q.dirty;
  return o;
}

void print_human(const ImageInfo& i) {
  std::printf("image: %s\nfile format: %s\nvirtual size: %s (%" PRIu64 " bytes)\n",
              i.filename.c_str(), i.format.c_str(), human_size(i.virtual_size).c_str(),
              i.virtual_size);
  if (i.actual_size >= 0)
    std::printf("disk size: %s\n", human_size(static_cast<uint64_t>(i.actual_size)).c_str());
  else
    std::printf("disk size: unavailable\n");
  if (!i.is_qcow2) return;
  const auto& q = i.q;
  if (q.encrypted) std::printf("encrypted: yes\n");
  std::printf("cluster_size: %u\n", q.cluster_size);
  if (q.dirty) std::printf("cleanly shut down: no\n");
  if (!q.backing_file.empty()) {
    std::printf("backing file: %s", q.backing_file.c_str());
    if (i.full_backing != q.backing_file) std::printf(" (actual path: %s)", i.full_backing.c_str());
    std::printf("\n");
    if (!q.backing_format.empty())
      std::printf("backing file format: %s\n", q.backing_format.c_str());
  }
  print_snapshot_list(q.snapshots);
  std::printf("Format specific information:\n");
  std::printf("    compat: %s\n", compat_name(q.version).c_str());
  std::printf("    compression type: %s\n",
              q.compression_type.empty() ? "zlib" : q.compression_type.c_str());
  if (q.version >= 3) std::printf("    lazy refcounts: %s\n", q.lazy_refcounts ? "true" : "false");
  std::printf("    refcount bits: %u\n", q.refcount_bits);
  if (q.encrypt) print_encrypt(*q.encrypt);
  if (q.version >= 3) {
    std::printf("    corrupt: %s\n", q.corrupt ? "true" : "false");
    std::printf("    extended l2: %s\n", q.extended_l2 ? "true" : "false");
  }
}

std::string identity(const std::string& path) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0) return path;
  return std::to_string(st.st_dev) + ":" + std::to_string(st.st_ino);
}

}  // namespace

int img_info(const Args& args) {
  const OutputFormat out = parse_output_format(args.get_or("--output", "human"));
  const bool chain = args.flag("--backing-chain");
  const bool force_share = args.flag("-U");
  if (args.positional().size() != 1) throw ToolError("Expecting one image file name");
  // The header is read without the key (as qemu-img info): --object and encrypt.key-secret
  // are accepted and not needed.
  const ImageArg image = image_arg(args, args.positional()[0]);
  const std::string format = image.format;
  std::string path = image.path;

  std::vector<ImageInfo> infos;
  std::set<std::string> seen;
  std::string cur = path;
  std::string cur_format = resolve_format(format, path);
  for (;;) {
    if (!seen.insert(identity(cur)).second)
      throw ToolError("Backing file '" + cur + "' creates an infinite loop.");
    if (static_cast<int>(infos.size()) >= kMaxChain)
      throw ToolError("Backing chain of '" + path + "' is deeper than " +
                      std::to_string(kMaxChain) + " images");
    infos.push_back(collect(cur, cur_format, !force_share));
    const ImageInfo& last = infos.back();
    if (!chain || !last.is_qcow2 || last.q.backing_file.empty()) break;
    // Walking the chain opens the backing files. The header of a probed image may be a
    // guest's forgery inside a raw disk, naming any host file: follow it only when told.
    if (format.empty())
      throw ToolError("'" + path +
                      "': the image format was probed (no format given) and it "
                      "names a backing file '" +
                      kiln::block::qcow2::printable(last.q.backing_file) +
                      "'; refusing to open it for --backing-chain, since a guest could have "
                      "written this header into a raw disk. If you trust this image, give its "
                      "format explicitly (-f qcow2)");
    if (last.q.backing_format.empty())
      throw ToolError("Backing file '" + last.full_backing + "' of '" + cur +
                      "' has no backing format in the image header (refusing to probe)");
    cur_format = resolve_format(last.q.backing_format, last.full_backing);
    cur = last.full_backing;
  }

  if (out == OutputFormat::kJson) {
    if (chain) {
      common::Json all = common::Json::array();
      for (const auto& i : infos) all.push_back(to_json(i));
      std::printf("%s\n", common::dump(all, 4).c_str());
    } else {
      std::printf("%s\n", common::dump(to_json(infos[0]), 4).c_str());
    }
    return 0;
  }
  for (size_t n = 0; n < infos.size(); ++n) {
    if (n) std::printf("\n");
    print_human(infos[n]);
  }
  return 0;
}

}  // namespace kiln::block::cli
