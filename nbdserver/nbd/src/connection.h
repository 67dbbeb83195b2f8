// One client connection: the fixed newstyle handshake (handshake.cpp), then the transmission
// phase (connection.cpp) with many requests in flight and replies sent as they complete.
#pragma once

#include <sys/uio.h>

#include <atomic>
#include <deque>
#include <optional>
#include <string>
#include <vector>

#include "kiln/nbd/server.h"
#include "socket.h"

namespace kiln::nbd {

struct Request {
  uint16_t flags;
  uint16_t type;
  uint64_t handle;
  uint64_t offset;
  uint32_t length;
};

// A reply (one or several chunks) that leaves as one unit: its buffers and the iovecs into them.
struct OutMessage {
  std::vector<std::vector<uint8_t>> buffers;
  std::vector<iovec> iov;
  void add(std::vector<uint8_t> b) {
    buffers.push_back(std::move(b));
    iov.push_back({buffers.back().data(), buffers.back().size()});
  }
  // Call after all add()s: vectors of vectors may have moved the inner buffers' owners.
  void fix() {
    iov.clear();
    for (auto& b : buffers) iov.push_back({b.data(), b.size()});
  }
};

class Connection {
 public:
  Connection(Server& server, int fd, std::string peer);
  ~Connection();

  block::Task<void> run();
  // Stops reading requests; those in flight finish and are answered.
  void shutdown();
  Export* exported() const { return export_; }
  const std::string& peer() const { return peer_; }

 private:
  // handshake.cpp: returns true to enter transmission with export_ set.
  block::Task<bool> negotiate();
  // NBD_OPT_STARTTLS: acknowledges, runs the handshake; false ends the connection.
  block::Task<bool> start_tls();
  block::Task<int> reply_option(uint32_t option, uint32_t type, const std::vector<uint8_t>& data);
  block::Task<int> reply_error(uint32_t option, uint32_t type, const std::string& message);
  block::Task<int> handle_info(uint32_t option, const std::vector<uint8_t>& data, bool* go);
  block::Task<int> handle_meta_context(uint32_t option, const std::vector<uint8_t>& data);
  uint16_t transmission_flags() const;

  // connection.cpp
  block::Task<void> transmission();
  block::Task<void> handle(Request req, std::vector<uint8_t> payload);
  block::Task<void> do_read(const Request& req);
  block::Task<void> do_block_status(const Request& req);
  void reply_simple(uint64_t handle, int err, std::vector<uint8_t> data = {});
  void reply_structured_error(uint64_t handle, int err);
  void queue(OutMessage m);
  block::Task<void> writer();

  Server& server_;
  Socket sock_;
  std::string peer_;
  Export* export_ = nullptr;
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
  std::optional<block::WaitList> room_;
  std::optional<block::WaitGroup> handlers_;
  std::deque<OutMessage> out_;
  bool writing_ = false;
  std::optional<block::WaitGroup> writers_;
};

// An errno as the NBD protocol spells it.
uint32_t wire_error(int err);

}  // namespace kiln::nbd
