#include <sys/stat.h>

#include "qcow2/image.h"

namespace kiln::block::qcow2 {

Info read_info(Reactor& r, const std::string& path, bool lock) {
  OpenOptions o;
  o.lock = lock;
  o.read_only = true;
  o.open_backing = false;
  o.header_only = true;  // as qemu-img info: an encrypted image shows its header without a key
  auto img = r.run(Image::open(r, path, o, {}));
  const Header& h = img->header();
  Info info;
  info.filename = path;
  info.virtual_size = h.size;
  struct stat st;
  if (fstat(img->fd(), &st) == 0) info.actual_size = uint64_t(st.st_blocks) * 512;
  info.cluster_size = uint32_t(h.cluster_size());
  info.version = h.version;
  info.refcount_bits = h.refcount_bits();
  info.lazy_refcounts = h.compatible_features & kCompatLazyRefcounts;
  info.corrupt = h.incompatible_features & kIncompatCorrupt;
  info.dirty = h.incompatible_features & kIncompatDirty;
  info.extended_l2 = h.incompatible_features & kIncompatExtendedL2;
  info.compression_type = h.compression == Compression::kZstd ? "zstd" : "zlib";
  info.backing_file = h.backing_file;
  if (!h.backing_file.empty()) {
    if (h.backing_file[0] == '/') {
      info.full_backing_filename = h.backing_file;
    } else {
      auto slash = path.rfind('/');
      info.full_backing_filename =
          slash == std::string::npos ? h.backing_file : path.substr(0, slash + 1) + h.backing_file;
    }
  }
  info.backing_format = h.backing_format.value_or("");
  for (const Snapshot& s : img->snapshots())
    info.snapshots.push_back({s.id, s.name, s.vm_state_size, s.date_sec, s.date_nsec,
                              s.vm_clock_nsec, s.disk_size, s.icount});
  info.encrypted = h.crypt_method != kCryptNone;
  if (const crypto::LuksHeader* l = img->luks()) {
    EncryptInfo e;
    e.ivgen_alg = l->ivgen();
    e.hash_alg = l->hash;
    e.cipher_alg = l->cipher_alg();
    e.uuid = l->uuid;
    e.cipher_mode = l->mode();
    for (const crypto::LuksSlot& s : l->slots)
      e.slots.push_back(
          {s.active, s.iterations, s.stripes, uint64_t(s.key_offset) * crypto::kSectorSize});
    e.payload_offset = uint64_t(l->payload_offset) * crypto::kSectorSize;
    e.master_key_iters = l->mk_digest_iterations;
    info.encrypt = std::move(e);
  }
  return info;
}

}  // namespace kiln::block::qcow2
