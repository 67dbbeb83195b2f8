// kiln-io: drives a BlockDevice with qemu-io-like commands, from -c arguments or a script.
// In script mode it prints "ok N" when line N completed and "flushed N" when the flush on
// line N completed, flushing stdout each time, so a test that kills it knows what was
// acknowledged. With --parallel N, commands between barriers (flush, dump, size) run
// concurrently, up to N at a time.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "io_command.h"
#include "kiln/block/device.h"
#include "tool_util.h"

namespace kiln::block::cli {
namespace {

using kiln::block::BlockDevice;
using kiln::block::Reactor;
using kiln::block::Task;

constexpr uint64_t kMaxPiece = 4u << 20;

struct Options {
  std::string format;
  bool read_only = false;
  size_t l2_cache = 0;
  std::string image;
  std::optional<std::string> key_secret;  // --image-opts encrypt.key-secret
  std::vector<std::string> commands;      // -c
  std::string script;                     // --script FILE or "-"
  unsigned parallel = 1;
  bool direct = false;        // -t none / directsync, -n: O_DIRECT
  bool writethrough = false;  // -t writethrough / directsync: every write with FUA
  std::string snapshot;       // -l: an internal snapshot, opened read-only
};

// One failed command ends the run; the first failure is the one reported.
struct RunState {
  bool script_mode = false;
  std::string error;
  bool failed() const { return !error.empty(); }
  void fail(const IoCommand& cmd, const std::string& what) {
    if (error.empty()) error = "line " + std::to_string(cmd.line) + ": " + what;
  }
};

std::string errno_text(int rc) { return std::strerror(-rc); }

// The commands' I/O buffers, kept from one command to the next (one per command running at
// once). A new buffer per command faulted in new pages every time under AddressSanitizer, whose
// allocator maps every block above 128 KiB afresh and keeps freed ones in quarantine: one kiln-io
// of block.random_ops_serial (1500 commands) took 390k page faults and 9 s of CPU (release: 4k).
class Buffers {
 public:
  // A buffer of `n` bytes (contents unspecified) until the Lease ends.
  class Lease {
   public:
    Lease(Buffers& pool, size_t n) : pool_(pool) {
      if (!pool_.free_.empty()) {
        buf_ = std::move(pool_.free_.back());
        pool_.free_.pop_back();
      }
      buf_.resize(n);
    }
    ~Lease() { pool_.free_.push_back(std::move(buf_)); }
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;
    std::vector<uint8_t>& operator*() { return buf_; }

   private:
    Buffers& pool_;
    std::vector<uint8_t> buf_;
  };

 private:
  std::vector<std::vector<uint8_t>> free_;
};

void say(const char* fmt, uint64_t a, uint64_t b) {
  std::printf(fmt, a, a, b);
  std::fflush(stdout);
}

Task<void> do_read(BlockDevice& dev, const IoCommand& cmd, RunState& st, Buffers& buffers) {
  Buffers::Lease lease(buffers, static_cast<size_t>(std::min(cmd.length, kMaxPiece)));
  std::vector<uint8_t>& buf = *lease;
  for (uint64_t done = 0; done < cmd.length;) {
    size_t n = static_cast<size_t>(std::min<uint64_t>(buf.size(), cmd.length - done));
    int rc = co_await dev.read(cmd.offset + done, std::span<uint8_t>(buf.data(), n));
    if (rc < 0) {
      st.fail(cmd,
              "read failed at offset " + std::to_string(cmd.offset + done) + ": " + errno_text(rc));
      co_return;
    }
    if (!cmd.accept.empty()) {
      bool ok[256] = {};
      for (uint8_t b : cmd.accept) ok[b] = true;
      for (size_t i = 0; i < n; ++i) {
        if (!ok[buf[i]]) {
          char msg[160];
          std::snprintf(msg, sizeof msg,
                        "read -P: pattern mismatch at offset %" PRIu64
                        ": got 0x%02x, expected 0x%02x%s",
                        cmd.offset + done + i, buf[i], cmd.accept[0],
                        cmd.accept.size() > 1 ? " or another listed byte" : "");
          st.fail(cmd, msg);
          co_return;
        }
      }
    }
    done += n;
  }
  if (!st.script_mode)
    say("read %" PRIu64 "/%" PRIu64 " bytes at offset %" PRIu64 "\n", cmd.length, cmd.offset);
}

Task<void> do_write(Reactor& reactor, BlockDevice& dev, const IoCommand& cmd, RunState& st,
                    Buffers& buffers) {
  Buffers::Lease lease(buffers, static_cast<size_t>(std::min(cmd.length, kMaxPiece)));
  std::vector<uint8_t>& buf = *lease;
  std::fill(buf.begin(), buf.end(), static_cast<uint8_t>(cmd.pattern < 0 ? 0 : cmd.pattern));
  std::unique_ptr<kiln::common::Fd> src;
  if (cmd.op == IoOp::kWritef) {
    src = std::make_unique<kiln::common::Fd>(::open(cmd.path.c_str(), O_RDONLY | O_CLOEXEC));
    if (src->get() < 0) {
      st.fail(cmd, "cannot open '" + cmd.path + "': " + std::strerror(errno));
      co_return;
    }
  }
  unsigned flags = cmd.fua ? unsigned{kiln::block::kWriteFua} : 0u;
  for (uint64_t done = 0; done < cmd.length;) {
    size_t n = static_cast<size_t>(std::min<uint64_t>(buf.size(), cmd.length - done));
    if (src) {
      int rc = co_await reactor.read_full(src->get(), std::span<uint8_t>(buf.data(), n), done);
      if (rc < 0) {
        st.fail(cmd, "cannot read '" + cmd.path + "': " + errno_text(rc));
        co_return;
      }
    }
    int rc = co_await dev.write(cmd.offset + done, std::span<const uint8_t>(buf.data(), n), flags);
    if (rc < 0) {
      st.fail(cmd, "write failed at offset " + std::to_string(cmd.offset + done) + ": " +
                       errno_text(rc));
      co_return;
    }
    done += n;
  }
  if (!st.script_mode)
    say("wrote %" PRIu64 "/%" PRIu64 " bytes at offset %" PRIu64 "\n", cmd.length, cmd.offset);
}

Task<void> do_dump(Reactor& reactor, BlockDevice& dev, const IoCommand& cmd, RunState& st,
                   Buffers& buffers) {
  kiln::common::Fd fd(::open(cmd.path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (fd.get() < 0) {
    st.fail(cmd, "cannot create '" + cmd.path + "': " + std::strerror(errno));
    co_return;
  }
  const uint64_t size = dev.size();
  if (::ftruncate(fd.get(), static_cast<off_t>(size)) != 0) {
    st.fail(cmd, "cannot resize '" + cmd.path + "': " + std::strerror(errno));
    co_return;
  }
  Buffers::Lease lease(buffers, static_cast<size_t>(std::min<uint64_t>(kMaxPiece, size)));
  std::vector<uint8_t>& buf = *lease;
  for (uint64_t off = 0; off < size;) {
    size_t n = static_cast<size_t>(std::min<uint64_t>(buf.size(), size - off));
    int rc = co_await dev.read(off, std::span<uint8_t>(buf.data(), n));
    if (rc < 0) {
      st.fail(cmd, "read failed at offset " + std::to_string(off) + ": " + errno_text(rc));
      co_return;
    }
    bool zero = std::all_of(buf.begin(), buf.begin() + static_cast<std::ptrdiff_t>(n),
                            [](uint8_t b) { return b == 0; });
    if (!zero) {
      rc = co_await reactor.write_full(fd.get(), std::span<const uint8_t>(buf.data(), n), off);
      if (rc < 0) {
        st.fail(cmd, "cannot write '" + cmd.path + "': " + errno_text(rc));
        co_return;
      }
    }
    off += n;
  }
  if (!st.script_mode) {
    std::printf("dumped %" PRIu64 " bytes to %s\n", size, cmd.path.c_str());
    std::fflush(stdout);
  }
}

Task<void> execute(Reactor& reactor, BlockDevice& dev, const IoCommand& cmd, RunState& st,
                   Buffers& buffers) {
  int rc = 0;
  switch (cmd.op) {
    case IoOp::kRead:
      co_await do_read(dev, cmd, st, buffers);
      break;
    case IoOp::kWrite:
    case IoOp::kWritef:
      co_await do_write(reactor, dev, cmd, st, buffers);
      break;
    case IoOp::kZero: {
      unsigned flags = (cmd.unmap ? 0u : unsigned{kiln::block::kWriteNoUnmap}) |
                       (cmd.fua ? unsigned{kiln::block::kWriteFua} : 0u);
      rc = co_await dev.write_zeroes(cmd.offset, cmd.length, flags);
      if (rc < 0)
        st.fail(cmd, "zero failed at offset " + std::to_string(cmd.offset) + ": " + errno_text(rc));
      else if (!st.script_mode)
        say("wrote %" PRIu64 "/%" PRIu64 " bytes at offset %" PRIu64 "\n", cmd.length, cmd.offset);
      break;
    }
    case IoOp::kDiscard:
      rc = co_await dev.discard(cmd.offset, cmd.length);
      if (rc < 0)
        st.fail(cmd,
                "discard failed at offset " + std::to_string(cmd.offset) + ": " + errno_text(rc));
      else if (!st.script_mode)
        say("discard %" PRIu64 "/%" PRIu64 " bytes at offset %" PRIu64 "\n", cmd.length,
            cmd.offset);
      break;
    case IoOp::kFlush:
      rc = co_await dev.flush();
      if (rc < 0) st.fail(cmd, "flush failed: " + errno_text(rc));
      break;
    case IoOp::kDump:
      co_await do_dump(reactor, dev, cmd, st, buffers);
      break;
    case IoOp::kSize:
      std::printf("size %" PRIu64 "\n", dev.size());
      std::fflush(stdout);
      break;
  }
  if (st.failed() || !st.script_mode) co_return;
  if (cmd.op == IoOp::kFlush) std::printf("flushed %d\n", cmd.line);
  std::printf("ok %d\n", cmd.line);
  std::fflush(stdout);
}

// Runs the commands in order; with parallel > 1, non-barrier commands overlap.
class Runner {
 public:
  Runner(Reactor& reactor, BlockDevice& dev, RunState& st, unsigned parallel, bool writethrough)
      : writethrough_(writethrough),
        reactor_(reactor),
        dev_(dev),
        st_(st),
        parallel_(parallel),
        group_(reactor),
        slot_free_(reactor) {}

  Task<void> submit(IoCommand cmd) {
    if (st_.failed()) co_return;
    if (writethrough_) cmd.fua = true;
    if (parallel_ <= 1) {
      co_await execute(reactor_, dev_, cmd, st_, buffers_);
      co_return;
    }
    if (is_barrier(cmd.op)) {
      co_await group_.wait();
      if (st_.failed()) co_return;
      co_await execute(reactor_, dev_, cmd, st_, buffers_);
      co_return;
    }
    while (inflight_ >= parallel_) co_await slot_free_.wait();
    ++inflight_;
    reactor_.spawn(one(std::move(cmd)), &group_);
  }

  Task<void> drain() { co_await group_.wait(); }

 private:
  Task<void> one(IoCommand cmd) {
    try {
      co_await execute(reactor_, dev_, cmd, st_, buffers_);
    } catch (const std::exception& e) {
      st_.fail(cmd, e.what());
    }
    --inflight_;
    slot_free_.notify_all();
  }

  bool writethrough_;
  Reactor& reactor_;
  BlockDevice& dev_;
  RunState& st_;
  unsigned parallel_;
  kiln::block::WaitGroup group_;
  kiln::block::WaitList slot_free_;
  unsigned inflight_ = 0;
  Buffers buffers_;
};

Task<void> run_all(Runner& runner, const std::vector<IoCommand>& commands, std::istream* script) {
  for (const IoCommand& cmd : commands) co_await runner.submit(cmd);
  if (script) {
    std::string text;
    int line = 0;
    while (std::getline(*script, text)) {
      ++line;
      IoCommand cmd;
      if (!parse_io_command(text, line, &cmd)) continue;
      co_await runner.submit(std::move(cmd));
    }
  }
  co_await runner.drain();
}

void help(std::ostream& out) {
  out << "Usage: kiln-io [-f FMT] [-r] [-l SNAPSHOT] [-t CACHE|-n] [--l2-cache BYTES] IMAGE\n"
         "               [-c CMD]... [--script FILE|-] [--parallel N]\n"
         "       kiln-io [--object secret,id=ID,file=F] --image-opts \\\n"
         "               driver=qcow2,file.filename=IMAGE,encrypt.key-secret=ID [-c CMD]...\n"
         "-l SNAPSHOT opens an internal qcow2 snapshot (id or name) read-only.\n"
         "CACHE (qemu-io's -t): writeback (default), writethrough, unsafe, none (O_DIRECT) or\n"
         "directsync (O_DIRECT, every write with FUA); -n is -t none.\n"
         "commands: read [-P BYTE] OFF LEN | write [-f] [-P BYTE] OFF LEN |\n"
         "          writef HOSTFILE OFF LEN | zero [-f] [-u] OFF LEN | discard OFF LEN |\n"
         "          flush | dump FILE | size\n"
         "kiln-io --help shows this help, kiln-io --version the version.\n";
}

const std::vector<common::cli::Option> kOptions = {{"-h|--help"},
                                                   {"-f|--format", common::cli::kValue},
                                                   {"-r|--read-only"},
                                                   {"-c|--cmd", common::cli::kValue},
                                                   {"--l2-cache", common::cli::kValue},
                                                   {"-t|--cache", common::cli::kValue},
                                                   {"-n|--nocache"},
                                                   {"--script", common::cli::kValue},
                                                   {"--parallel", common::cli::kValue},
                                                   {"-l|--snapshot", common::cli::kValue},
                                                   {"--object", common::cli::kValue},
                                                   {"--image-opts"},
                                                   {"--version"}};

Options parse_options(const common::cli::Args& args) {
  Options o;
  if (args.positional().size() != 1) throw ToolError("Expecting exactly one image file name");
  ImageArg image = image_arg(args, args.positional()[0], "--format");
  o.image = image.path;
  o.format = image.format;
  o.key_secret = std::move(image.key_secret);
  if (!o.format.empty() && o.format != "raw" && o.format != "qcow2")
    throw ToolError("Unknown format '" + o.format + "' (supported: qcow2, raw)");
  o.snapshot = args.get_or("--snapshot", "");
  o.read_only = args.flag("--read-only") || !o.snapshot.empty();
  o.commands = args.all("--cmd");
  if (auto v = args.get("--l2-cache"))
    o.l2_cache =
        static_cast<size_t>(parse_size_arg(*v, "L2 cache size", uint64_t{1} << 40, /*min=*/1));
  const std::string cache = args.get_or("--cache", args.flag("--nocache") ? "none" : "writeback");
  if (cache == "none" || cache == "off" || cache == "directsync")
    o.direct = true;
  else if (cache != "writeback" && cache != "writethrough" && cache != "unsafe")
    throw ToolError("Invalid cache mode '" + cache +
                    "' (none, directsync, writeback, writethrough or unsafe)");
  o.writethrough = cache == "writethrough" || cache == "directsync";
  o.script = args.get_or("--script", "");
  if (auto v = args.get("--parallel"))
    o.parallel = static_cast<unsigned>(
        common::cli::parse_number(*v, "--parallel", 1, 1024, common::cli::Radix::kDecimalOrHex));
  return o;
}

int run(const std::vector<std::string>& argv) {
  const common::cli::Args args = common::cli::parse(argv, kOptions);
  if (args.flag("--help")) {
    help(std::cout);
    return 0;
  }
  if (args.flag("--version")) {
    common::cli::print_version(std::cout, "kiln-io");
    return 0;
  }
  const Options o = parse_options(args);

  // Parse every -c command before touching the image, so a typo changes nothing.
  std::vector<IoCommand> commands;
  for (size_t i = 0; i < o.commands.size(); ++i) {
    IoCommand cmd;
    if (parse_io_command(o.commands[i], static_cast<int>(i + 1), &cmd)) commands.push_back(cmd);
  }
  std::ifstream script_file;
  std::istream* script = nullptr;
  if (!o.script.empty()) {
    if (o.script == "-") {
      script = &std::cin;
    } else {
      script_file.open(o.script);
      if (!script_file) throw ToolError("cannot open script '" + o.script + "'");
      script = &script_file;
    }
  }

  Reactor& reactor = Reactor::current();
  kiln::block::OpenOptions opts;
  opts.format = o.format;
  opts.read_only = o.read_only;
  if (o.l2_cache) opts.l2_cache_bytes = o.l2_cache;
  opts.direct = o.direct;
  opts.snapshot = o.snapshot;
  opts.key_secret = o.key_secret;
  auto dev = reactor.run(kiln::block::open_image(reactor, o.image, opts));

  RunState st;
  st.script_mode = script != nullptr;
  Runner runner(reactor, *dev, st, o.parallel, o.writethrough);
  std::string parse_error;
  try {
    reactor.run(run_all(runner, commands, script));
  } catch (const ToolError& e) {
    // A bad script line: let what is in flight finish, then report it.
    parse_error = e.what();
    reactor.run(runner.drain());
  }
  int close_rc = reactor.run(dev->close());
  if (st.failed()) throw ToolError(st.error);
  if (!parse_error.empty()) throw ToolError(parse_error);
  if (close_rc < 0) throw ToolError("closing the image failed: " + errno_text(close_rc));
  return 0;
}

}  // namespace
}  // namespace kiln::block::cli

int main(int argc, char** argv) {
  using namespace kiln::common::cli;
  return run_main({"kiln-io", kiln::block::cli::help, 1, false, &exit_one}, argc, argv,
                  kiln::block::cli::run);
}
