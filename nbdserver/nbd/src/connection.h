// One client connection: the fixed newstyle handshake (handshake.cpp), then the transmission
// phase (connection.cpp) with many requests in flight and replies sent as they complete.
#pragma once

#include <sys/uio.h>

#include <array>
#include <atomic>
#include <chrono>
#include <deque>
#include <optional>
#include <string>
#include <vector>

#include "budget.h"
#include "buffer.h"
#include "kiln/nbd/server.h"
#include "pacer.h"
#include "socket.h"

namespace kiln::nbd {

struct Request {
  uint16_t flags;
  uint16_t type;
  uint64_t handle;
  uint64_t offset;
  uint32_t length;
};

// A reply (one or several chunks) that leaves as one unit. Most replies are a header and
// perhaps a read's data: the header is kept in the message itself (`head`), so that such a
// reply costs no allocation. Longer ones (block status, chunked reads) add `buffers`; a chunked
// read lists its pieces in `iov`, pointing into `buffers` and `data`, whose memory stays put
// when the message moves. The iovecs of the others are made when the reply is sent, since
// `head` moves with the message. `data` is a read's payload (aligned, see buffer.h); `held` is
// the request's share of the memory budget, given back once the reply has left.
struct OutMessage {
  static constexpr size_t kHeadMax = 32;
  std::array<uint8_t, kHeadMax> head{};
  uint8_t head_len = 0;
  std::vector<std::vector<uint8_t>> buffers;
  AlignedBuffer data;
  std::vector<iovec> iov;
  uint64_t held = 0;

  // The first `n` bytes of the header, to be filled in.
  uint8_t* set_head(size_t n) {
    head_len = static_cast<uint8_t>(n);
    return head.data();
  }
  // Appends the iovecs that send this message (valid while it stays where it is).
  void append_iov(std::vector<iovec>& out) {
    if (!iov.empty()) {
      out.insert(out.end(), iov.begin(), iov.end());
      return;
    }
    if (head_len) out.push_back({head.data(), head_len});
    for (auto& b : buffers) out.push_back({b.data(), b.size()});
    if (!data.empty()) out.push_back({data.data(), data.size()});
  }
};

// What a handshake reply says about an export, copied out of it: the export may be removed
// while the reply is being sent.
struct ExportView {
  uint64_t id;
  std::string name, description;
  uint64_t size;
  uint16_t flags;
  uint32_t preferred_block, max_block;
};

class Connection {
 public:
  using Clock = std::chrono::steady_clock;
  enum class Phase { kHandshake, kTransmission, kEnded };

  Connection(Server& server, common::Fd fd, std::string peer, std::optional<ExportScope> scope);
  ~Connection();

  block::Task<void> run();
  // Stops reading requests; those in flight finish and are answered. Server thread only.
  void shutdown();
  // Closes the socket under the connection: pending reads and writes fail at once.
  void abort();
  Export* exported() const { return export_; }
  const std::string& peer() const { return peer_; }
  Phase phase() const { return phase_.load(); }
  Clock::time_point started() const { return started_; }
  // When shutdown() was first called; nullopt if it was not.
  std::optional<Clock::time_point> shutdown_at() const { return shutdown_at_; }
  bool aborted() const { return aborted_; }

 private:
  // handshake.cpp: returns true to enter transmission with export_ set.
  block::Task<bool> negotiate();
  // NBD_OPT_STARTTLS: acknowledges, runs the handshake; false ends the connection.
  block::Task<bool> start_tls();
  block::Task<int> reply_option(uint32_t option, uint32_t type, const std::vector<uint8_t>& data);
  block::Task<int> reply_error(uint32_t option, uint32_t type, const std::string& message);
  block::Task<int> handle_info(uint32_t option, const std::vector<uint8_t>& data, bool* go);
  block::Task<int> handle_meta_context(uint32_t option, const std::vector<uint8_t>& data);
  block::Task<int> handle_list(uint32_t option, uint32_t length);
  // The export a client asking for `name` may see (the per-export socket's one), or null.
  // Whether this client may know of `e` at all (its TLS identity, if the export has one).
  bool may_see(const Export& e) const;
  Export* lookup(const std::string& name, std::string* resolved = nullptr);
  uint16_t transmission_flags(const Export& e) const;
  ExportView view(const Export& e) const;

  // connection.cpp
  block::Task<void> transmission();
  // Waits until a request costing `cost` bytes fits the budgets, and takes them. False if the
  // connection is stopping instead.
  block::Task<bool> reserve(uint64_t cost);
  bool try_reserve(uint64_t cost);
  void release(uint64_t bytes);
  uint64_t request_cost(const Request& req, uint32_t max_block) const;
  block::Task<void> handle(Request req, AlignedBuffer payload, uint64_t held);
  block::Task<void> do_read(const Request& req, uint64_t held);
  block::Task<void> do_block_status(const Request& req, uint64_t held);
  void reply_simple(uint64_t handle, int err, uint64_t held, AlignedBuffer data = {});
  void reply_structured_error(uint64_t handle, int err, uint64_t held);
  void queue(OutMessage m);
  block::Task<void> writer();

  Server& server_;
  Socket sock_;
  std::string peer_;
  std::optional<ExportScope> scope_;  // the only export visible through this connection
  Export* export_ = nullptr;
  std::atomic<Phase> phase_{Phase::kHandshake};
  const Clock::time_point started_;
  std::optional<Clock::time_point> shutdown_at_;  // server thread only
  bool aborted_ = false;                          // server thread only
  bool structured_ = false;
  bool no_zeroes_ = false;
  uint32_t ctx_allocation_ = 0;  // ids of the selected metadata contexts; 0 = not selected
  uint32_t ctx_depth_ = 0;
  std::string ctx_export_;             // the export name the contexts were selected for
  std::atomic<bool> stopping_{false};  // set from the server's thread
  bool dead_ = false;

  // Transmission runs on the export's reactor; these are created there.
  block::Reactor* reactor_;
  unsigned in_flight_ = 0;
  ReceivePacer pacer_;
  uint64_t held_ = 0;  // bytes of the memory budget this connection holds
  Wakeup room_;        // the reader waits here for in-flight slots and budget
  std::optional<block::WaitGroup> handlers_;
  std::deque<OutMessage> out_;
  bool writing_ = false;
  std::optional<block::WaitGroup> writers_;
};

// Most descriptors one block-status reply carries per metadata context.
constexpr uint32_t kMaxDescriptors = 32768;
// What every request is charged besides its data: its coroutine, its reply's header.
constexpr uint64_t kRequestOverhead = 512;
// The most an idle connection may always take, whatever the others hold.
constexpr uint64_t kGuaranteedCost =
    AlignedBuffer::footprint(kGuaranteedRequestBytes) + kRequestOverhead;

// An errno as the NBD protocol spells it.
uint32_t wire_error(int err);

}  // namespace kiln::nbd
