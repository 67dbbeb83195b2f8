// A local image (raw or qcow2 with its backing chain) as a Source, through the block layer.
// The source owns its reactor, so any thread may call it; a mutex keeps one call at a time.
#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <mutex>

#include "kiln/block/device.h"
#include "kiln/block/reactor.h"
#include "kiln/common/fd.h"
#include "kiln/fs/filesystem.h"
#include "kiln/fs/source.h"

namespace kiln::fs {
namespace {

using kiln::block::BlockDevice;
using kiln::block::Reactor;

using common::Fd;  // here: the one that holds the image's lock

class LocalSource final : public Source {
 public:
  LocalSource(std::string path, bool read_only) : path_(std::move(path)), read_only_(read_only) {
    // One call at a time, each waited for: plain system calls beat io_uring here.
    reactor_.set_inline_file_io(true);
  }
  ~LocalSource() override {
    try {
      close(true);
    } catch (...) {
    }
  }

  void open(const SourceOptions& options) {
    if (!options.read_only) lock();
    kiln::block::OpenOptions o;
    o.format = options.format;
    o.read_only = options.read_only;
    o.key_secret = options.key_secret;
    try {
      dev_ = reactor_.run(kiln::block::open_image(reactor_, path_, o));
    } catch (const kiln::block::Error& e) {
      throw Error(e.reason(), std::string(e.what()));
    }
  }

  uint64_t size() const override { return dev_->size(); }
  bool read_only() const override { return read_only_; }
  const std::string& name() const override { return path_; }

  int pread(void* buf, size_t len, uint64_t offset) override {
    if (!in_range(len, offset)) return -EINVAL;
    std::lock_guard<std::mutex> guard(mutex_);
    if (!dev_) return -EBADF;
    return reactor_.run(dev_->read(offset, {static_cast<uint8_t*>(buf), len}));
  }

  int pwrite(const void* buf, size_t len, uint64_t offset) override {
    if (read_only_) return -EROFS;
    if (!in_range(len, offset)) return -EINVAL;
    std::lock_guard<std::mutex> guard(mutex_);
    if (!dev_) return -EBADF;
    return reactor_.run(dev_->write(offset, {static_cast<const uint8_t*>(buf), len}, 0));
  }

  int flush() override {
    if (read_only_) return 0;
    std::lock_guard<std::mutex> guard(mutex_);
    if (!dev_) return -EBADF;
    return reactor_.run(dev_->flush());
  }

  void start_writeback() override {
    std::lock_guard<std::mutex> guard(mutex_);
    if (dev_ && !read_only_) dev_->start_writeback();
  }

  void close(bool discard) override {
    std::lock_guard<std::mutex> guard(mutex_);
    if (!dev_) return;
    // A discarded session wrote nothing (writes are buffered above us); the block layer's
    // close still runs, so that the image is left as clean as it was found.
    (void)discard;
    int rc = reactor_.run(dev_->close());
    dev_.reset();
    lock_.reset();
    if (rc < 0)
      throw Error(common::reason_of_errno(-rc),
                  path_ + ": cannot close the image: " + std::strerror(-rc));
  }

 private:
  bool in_range(size_t len, uint64_t offset) const {
    return dev_ && offset <= dev_->size() && len <= dev_->size() - offset;
  }

  // A lock of kiln-fs's own (flock), on top of the block layer's QEMU-compatible locks that
  // open_image() takes: it only excludes other kiln-fs writers. Released when the source
  // closes or is destroyed (also when opening the image failed).
  void lock() {
    lock_.reset(::open(path_.c_str(), O_RDONLY | O_CLOEXEC));
    if (lock_.get() < 0)
      throw Error(common::reason_of_errno(errno), path_ + ": cannot open: " + std::strerror(errno));
    if (flock(lock_.get(), LOCK_EX | LOCK_NB) != 0) {
      int e = errno;
      lock_.reset();
      if (e == EWOULDBLOCK)
        throw Error(Reason::kBusy,
                    path_ + ": the image is in use by another process (locked for writing)");
      throw Error(common::reason_of_errno(e),
                  path_ + ": cannot lock the image: " + std::strerror(e));
    }
  }

  std::string path_;
  bool read_only_;
  Reactor reactor_{64};
  std::unique_ptr<BlockDevice> dev_;
  std::mutex mutex_;
  Fd lock_;
};

}  // namespace

std::unique_ptr<Source> open_local_source(const std::string& path, const SourceOptions& options) {
  auto src = std::make_unique<LocalSource>(path, options.read_only);
  src->open(options);
  return src;
}

}  // namespace kiln::fs
