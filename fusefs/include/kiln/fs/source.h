// Where a disk's bytes come from: a local image through the block layer, or a remote NBD
// export through libnbd. kiln-fs reads partition tables and filesystems through this
// interface only. Data operations return 0 or -errno and are safe to call from any thread
// (one at a time is enough: implementations serialise internally).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

namespace kiln::fs {

class Source {
 public:
  virtual ~Source() = default;

  virtual uint64_t size() const = 0;
  virtual bool read_only() const = 0;
  // The image path or URI, for error messages.
  virtual const std::string& name() const = 0;

  // Reads past the end fail with -EINVAL: callers stay inside size().
  virtual int pread(void* buf, size_t len, uint64_t offset) = 0;
  virtual int pwrite(const void* buf, size_t len, uint64_t offset) = 0;
  virtual int flush() = 0;
  // Starts writing what was written so far towards the disk, without waiting
  // (BlockDevice::start_writeback): a hint for long streams of writes. Default: nothing.
  virtual void start_writeback() {}
  // Flushes (unless `discard`) and closes; the source must not be used afterwards. Throws
  // Error if the flush or the close fails.
  virtual void close(bool discard = false) = 0;
};

struct SourceOptions {
  bool read_only = false;
  std::string format;  // local images: "raw", "qcow2" or "" (probe the top image)
  // Local qcow2 LUKS images: the passphrase (--object secret + --image-opts
  // encrypt.key-secret), which unlocks every encrypted image of the chain. Never printed.
  std::optional<std::string> key_secret;
};

// True for nbd://, nbd+unix:// (and their TLS variants, which libnbd may refuse).
bool is_nbd_uri(const std::string& image);

// Opens a local image (path) or a remote export (URI). Throws Error with one clear line.
// A local image opened writable is locked (flock, exclusive, non-blocking): a second kiln-fs
// writer gets an error instead of corrupting it. The block layer adds its own QEMU-compatible
// locks on every image it opens.
std::unique_ptr<Source> open_source(const std::string& image, const SourceOptions& options);

// Separate entry points, for tests and for callers that know what they have.
std::unique_ptr<Source> open_local_source(const std::string& path, const SourceOptions& options);
std::unique_ptr<Source> open_nbd_source(const std::string& uri, const SourceOptions& options);

}  // namespace kiln::fs
