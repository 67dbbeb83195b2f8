// The transmission phase. One reader loop parses every request a receive brought straight
// from the socket's buffer (a write's payload is taken before the next header); each request
// runs as its own coroutine, so many are in flight. Replies are queued as they complete; one
// writer at a time gathers them into a single sendmsg, once the loop turn's completions have
// all queued theirs (docs/kiln-nbd.md, "Performance").
//
// Memory: each request is charged, when its header is read, for what the server will hold
// for it (a write's payload, a read's data, a block-status reply) until its reply has left
// the socket. The reader stops taking requests while the connection or the server is over
// its budget, so a client that does not read its replies holds at most its own budget.
#include "connection.h"

#include <sys/socket.h>

#include <cerrno>
#include <cstring>

#include "commit.h"
#include "kiln/nbd/protocol.h"
#include "log.h"
#include "wire.h"

namespace kiln::nbd {

using block::Task;

// Most replies one sendmsg gathers.
constexpr size_t kMaxBatch = 128;

uint32_t wire_error(int err) {
  switch (err < 0 ? -err : err) {
    case 0:
      return 0;
    case EPERM:
    case EROFS:
    case EACCES:
      return kEperm;
    case ENOMEM:
      return kEnomem;
    case EINVAL:
      return kEinval;
    case ENOSPC:
    case EDQUOT:
    case EFBIG:
      return kEnospc;
    case EOVERFLOW:
      return kEoverflow;
    case ENOTSUP:
      return kEnotsup;
    case ESHUTDOWN:
      return kEshutdown;
    default:
      return kEio;
  }
}

Connection::Connection(Server& server, common::Fd fd, std::string peer,
                       std::optional<ExportScope> scope)
    : server_(server),
      sock_(server.reactor(), std::move(fd)),
      peer_(std::move(peer)),
      scope_(std::move(scope)),
      started_(Clock::now()),
      reactor_(&server.reactor()),
      pacer_(std::chrono::microseconds(server.options().batch_wait_us)) {}

Connection::~Connection() = default;

void Connection::shutdown() {
  if (!shutdown_at_) shutdown_at_ = Clock::now();
  stopping_ = true;
  sock_.shutdown_read();
  room_.wake();  // a reader waiting for budget must see stopping_
}

void Connection::abort() {
  aborted_ = true;
  stopping_ = true;
  ::shutdown(sock_.fd(), SHUT_RDWR);
  room_.wake();
}

Task<void> Connection::run() {
  logf(LogLevel::kDebug, "%s: connected", peer_.c_str());
  // (GCC 12 miscompiles a co_await inside a short-circuit condition: keep it apart.)
  const bool negotiated = co_await negotiate();
  if (negotiated && !stopping_) {
    Export* e = export_;
    phase_ = Phase::kTransmission;
    e->stats.connections++;
    e->stats.total_connections++;
    logf(LogLevel::kInfo, "%s: serving export '%s'%s", peer_.c_str(), e->config.name.c_str(),
         structured_ ? " (structured replies)" : "");
    // Move to the export's reactor thread for the transmission phase, and back at the end.
    reactor_ = e->home;
    sock_.move_to(*reactor_);
    handlers_.emplace(*reactor_);
    writers_.emplace(*reactor_);
    co_await reactor_->schedule();
    co_await transmission();
    co_await handlers_->wait();
    co_await writers_->wait();
    e->stats.connections--;
    reactor_ = &server_.reactor();
    sock_.move_to(*reactor_);
    co_await reactor_->schedule();
    logf(LogLevel::kInfo, "%s: disconnected from '%s'", peer_.c_str(), e->config.name.c_str());
  }
  phase_ = Phase::kEnded;
}

uint64_t Connection::request_cost(const Request& req, uint32_t max_block) const {
  switch (req.type) {
    case kCmdRead:
    case kCmdWrite:
      // The data lives in an aligned buffer (buffer.h): charged what it costs the heap.
      return kRequestOverhead +
             (req.length <= max_block ? AlignedBuffer::footprint(req.length) : 0);
    case kCmdBlockStatus: {
      // The largest reply do_block_status() builds: kMaxDescriptors for each context.
      const uint64_t contexts = (ctx_allocation_ ? 1 : 0) + (ctx_depth_ ? 1 : 0);
      return kRequestOverhead +
             contexts * (kStructuredReplySize + 4 + 8 * uint64_t(kMaxDescriptors));
    }
    default:
      return kRequestOverhead;
  }
}

bool Connection::try_reserve(uint64_t cost) {
  const ServerOptions& o = server_.options();
  if (held_ == 0 && cost <= kGuaranteedCost) {
    // Progress for every client: an idle connection always gets one ordinary request,
    // whatever the others hold.
    server_.budget().force_take(cost);
  } else {
    if (held_ > 0 && held_ + cost > std::max(o.max_connection_bytes, uint64_t(o.max_block)))
      return false;
    if (!server_.budget().try_take(cost)) return false;
  }
  held_ += cost;
  return true;
}

Task<bool> Connection::reserve(uint64_t cost) {
  if (try_reserve(cost)) co_return true;
  server_.budget().add_waiter(&room_);
  bool ok = false;
  for (;;) {
    if (stopping_ || dead_) break;
    if (try_reserve(cost)) {
      ok = true;
      break;
    }
    co_await room_.wait(*reactor_, [this, cost] {
      // Only a hint: the loop takes the bytes for real.
      const ServerOptions& o = server_.options();
      return stopping_ || dead_ || (held_ == 0 && cost <= kGuaranteedCost) ||
             (held_ + cost <= std::max(o.max_connection_bytes, uint64_t(o.max_block)) &&
              server_.budget().used() + cost <= server_.budget().limit());
    });
  }
  server_.budget().remove_waiter(&room_);
  co_return ok;
}

void Connection::release(uint64_t bytes) {
  if (!bytes) return;
  held_ -= bytes;
  server_.budget().give_back(bytes);  // wakes waiting connections, this one included
  room_.wake();
}

Task<void> Connection::transmission() {
  // Read through the gate: a live snapshot may be switching the device.
  co_await export_->gate->enter();
  const uint32_t max_block =
      std::min(export_->device->caps().max_block, server_.options().max_block);
  export_->gate->leave();
  uint64_t batch = 0;  // requests parsed since the last receive
  while (!stopping_ && !dead_) {
    while (in_flight_ >= server_.options().max_in_flight && !stopping_ && !dead_)
      co_await room_.wait(*reactor_, [this] {
        return in_flight_ < server_.options().max_in_flight || stopping_ || dead_;
      });
    if (stopping_ || dead_) break;
    // Every request one receive brought is parsed here, straight from the socket's buffer;
    // the loop suspends only to receive more (or to wait for budget).
    const std::span<const uint8_t> in = sock_.pending();
    if (in.size() < kRequestSize) {
      // A client that pipelines gets a moment to send more first (pacer.h).
      const std::chrono::microseconds wait = pacer_.before_receive(Clock::now(), batch);
      batch = 0;
      if (wait.count() > 0) {
        export_->stats.receive_waits++;
        co_await reactor_->sleep(wait);
      }
      if (co_await sock_.receive() < 0) break;
      continue;
    }
    ++batch;
    const uint8_t* h = in.data();
    if (get32(h) != kRequestMagic) {
      logf(LogLevel::kWarn, "%s: bad request magic, closing", peer_.c_str());
      break;
    }
    Request req{get16(h + 4), get16(h + 6), get64(h + 8), get64(h + 16), get32(h + 24)};
    sock_.consume(kRequestSize);
    if (log_enabled(LogLevel::kDebug))
      logf(LogLevel::kDebug, "%s: request type=%u flags=%#x offset=%llu length=%u", peer_.c_str(),
           req.type, req.flags, (unsigned long long)req.offset, req.length);
    if (req.type == kCmdDisc) break;
    // Nothing more is read from this client until the request fits its budgets.
    const uint64_t cost = request_cost(req, max_block);
    if (!try_reserve(cost)) {
      const bool ok = co_await reserve(cost);
      if (!ok) break;
    }
    AlignedBuffer payload;
    if (req.type == kCmdWrite) {
      if (req.length > max_block) {
        // Too big to take into memory: drop the payload from the stream and refuse.
        if (co_await sock_.skip(req.length) < 0) {
          release(cost);
          break;
        }
        export_->stats.errors++;
        reply_simple(req.handle, EINVAL, cost);
        continue;
      }
      payload = AlignedBuffer(req.length);
      // What the last receive brought of the payload, then the rest (large payloads are
      // received straight into the buffer).
      const size_t have = std::min<size_t>(req.length, sock_.buffered());
      if (have) std::memcpy(payload.data(), sock_.pending().data(), have);
      sock_.consume(have);
      if (have < req.length) {
        const int rc = co_await sock_.read_exact(payload.span().subspan(have));
        if (rc < 0) {
          release(cost);
          break;
        }
      }
    }
    ++in_flight_;
    reactor_->spawn(handle(req, std::move(payload), cost), &*handlers_);
  }
}

void Connection::reply_simple(uint64_t handle, int err, uint64_t held, AlignedBuffer data) {
  OutMessage m;
  m.held = held;
  uint8_t* head = m.set_head(kSimpleReplySize);
  put32(&head[0], kSimpleReplyMagic);
  put32(&head[4], wire_error(err));
  put64(&head[8], handle);
  if (err == 0) m.data = std::move(data);
  queue(std::move(m));
}

namespace {
// Writes a structured reply chunk's header (kStructuredReplySize bytes) at `h`.
void put_chunk_header(uint8_t* h, uint16_t flags, uint16_t type, uint64_t handle, uint32_t len) {
  put32(&h[0], kStructuredReplyMagic);
  put16(&h[4], flags);
  put16(&h[6], type);
  put64(&h[8], handle);
  put32(&h[16], len);
}

std::vector<uint8_t> chunk_header(uint16_t flags, uint16_t type, uint64_t handle, uint32_t len) {
  std::vector<uint8_t> h(kStructuredReplySize);
  put_chunk_header(h.data(), flags, type, handle, len);
  return h;
}
}  // namespace

void Connection::reply_structured_error(uint64_t handle, int err, uint64_t held) {
  OutMessage m;
  m.held = held;
  uint8_t* h = m.set_head(kStructuredReplySize + 6);
  put_chunk_header(h, kReplyFlagDone, kReplyError, handle, 6);
  put32(&h[kStructuredReplySize], wire_error(err));
  put16(&h[kStructuredReplySize + 4], 0);  // no message
  queue(std::move(m));
}

void Connection::queue(OutMessage m) {
  if (dead_) {
    release(m.held);
    return;
  }
  out_.push_back(std::move(m));
  if (!writing_) {
    writing_ = true;
    reactor_->spawn(writer(), &*writers_);
  }
}

namespace {
// Resumes the awaiting coroutine from the reactor's ready queue, i.e. after the completions of
// the current loop turn have all been handled.
struct Later {
  block::Reactor* r;
  bool await_ready() const noexcept { return false; }
  void await_suspend(std::coroutine_handle<> h) { r->post(h); }
  void await_resume() const noexcept {}
};
}  // namespace

Task<void> Connection::writer() {
  // The first reply of a loop turn starts the writer, but it sends only once the turn's other
  // completions have queued their replies too: one sendmsg for all of them.
  co_await Later{reactor_};
  while (!out_.empty() && !dead_) {
    std::vector<OutMessage> batch;
    std::vector<iovec> iov;
    uint64_t held = 0;
    batch.reserve(std::min<size_t>(out_.size(), kMaxBatch));
    while (!out_.empty() && batch.size() < kMaxBatch) {
      batch.push_back(std::move(out_.front()));
      out_.pop_front();
      held += batch.back().held;
    }
    for (OutMessage& m : batch) m.append_iov(iov);  // now that the messages stay put
    if (co_await sock_.write_all(std::move(iov)) < 0) {
      dead_ = true;
      for (const OutMessage& m : out_) held += m.held;
      out_.clear();
      sock_.shutdown_read();  // the reader stops too
    }
    batch.clear();  // the buffers are freed before their bytes are given back
    release(held);
  }
  writing_ = false;
}

Task<void> Connection::do_read(const Request& req, uint64_t held) {
  block::BlockDevice& dev = *export_->device;
  AlignedBuffer data(req.length);  // every byte is filled by a successful read
  int rc = co_await dev.read(req.offset, data.span());
  if (rc == 0) {
    export_->stats.reads++;
    export_->stats.bytes_read += req.length;
  }
  if (!structured_) {
    reply_simple(req.handle, rc, held, std::move(data));
    co_return;
  }
  if (rc < 0) {
    reply_structured_error(req.handle, rc, held);
    co_return;
  }
  // Large reads report zero ranges as holes, unless the client asked for one chunk.
  std::vector<block::Extent> extents;
  if (!(req.flags & kCmdFlagDf) && req.length >= 65536) {
    const int status = co_await dev.block_status(req.offset, req.length, &extents);
    if (status < 0) extents.clear();
  }
  OutMessage m;
  m.held = held;
  bool any_hole = false;
  for (const auto& e : extents) any_hole |= e.zero;
  if (!any_hole) {
    uint8_t* h = m.set_head(kStructuredReplySize + 8);
    put_chunk_header(h, kReplyFlagDone, kReplyOffsetData, req.handle, uint32_t(8 + req.length));
    put64(&h[kStructuredReplySize], req.offset);
    m.data = std::move(data);
    queue(std::move(m));
    co_return;
  }
  // Chunks point into `data`, which the message owns (its memory does not move with it).
  m.buffers.reserve(2 * extents.size() + 2);
  m.data = std::move(data);
  const uint8_t* base = m.data.data();
  struct Piece {
    size_t header;
    bool data;
    uint64_t off, len;
  };
  std::vector<Piece> pieces;
  for (size_t i = 0; i < extents.size(); ++i) {
    const auto& e = extents[i];
    const uint64_t start = std::max(e.offset, req.offset);
    const uint64_t end = std::min(e.offset + e.length, req.offset + req.length);
    if (start >= end) continue;
    const bool last = end == req.offset + req.length;
    const uint16_t flags = last ? kReplyFlagDone : 0;
    std::vector<uint8_t> hdr;
    if (e.zero) {
      hdr = chunk_header(flags, kReplyOffsetHole, req.handle, 12);
      hdr.resize(hdr.size() + 12);
      put64(&hdr[20], start);
      put32(&hdr[28], uint32_t(end - start));
    } else {
      hdr = chunk_header(flags, kReplyOffsetData, req.handle, uint32_t(8 + end - start));
      hdr.resize(hdr.size() + 8);
      put64(&hdr[20], start);
    }
    m.buffers.push_back(std::move(hdr));
    pieces.push_back({m.buffers.size() - 1, !e.zero, start - req.offset, end - start});
  }
  for (const Piece& p : pieces) {
    m.iov.push_back({m.buffers[p.header].data(), m.buffers[p.header].size()});
    if (p.data) m.iov.push_back({const_cast<uint8_t*>(base) + p.off, p.len});
  }
  queue(std::move(m));
}

Task<void> Connection::do_block_status(const Request& req, uint64_t held) {
  block::BlockDevice& dev = *export_->device;
  if (!structured_) {
    // Without structured replies the only legal answer is a simple error reply.
    reply_simple(req.handle, EINVAL, held);
    co_return;
  }
  if ((!ctx_allocation_ && !ctx_depth_) || req.length == 0) {
    reply_structured_error(req.handle, EINVAL, held);
    co_return;
  }
  std::vector<block::Extent> extents;
  const uint64_t want = std::min<uint64_t>(req.length, dev.size() - req.offset);
  if (int rc = co_await dev.block_status(req.offset, want, &extents); rc < 0 || extents.empty()) {
    reply_structured_error(req.handle, rc < 0 ? rc : EIO, held);
    co_return;
  }
  const bool one = req.flags & kCmdFlagReqOne;
  OutMessage m;
  m.held = held;
  auto emit = [&](uint32_t id, auto&& value_of, bool last) {
    std::vector<std::pair<uint64_t, uint32_t>> d;  // (length, flags), merged
    for (const auto& e : extents) {
      const uint32_t v = value_of(e);
      if (!d.empty() && d.back().second == v && d.back().first + e.length < (1ull << 32))
        d.back().first += e.length;
      else
        d.emplace_back(std::min<uint64_t>(e.length, 0xfffff000u), v);
      if (one || d.size() >= kMaxDescriptors) break;
    }
    if (one) d.resize(1);
    std::vector<uint8_t> h = chunk_header(last ? kReplyFlagDone : 0, kReplyBlockStatus, req.handle,
                                          uint32_t(4 + 8 * d.size()));
    h.resize(h.size() + 4 + 8 * d.size());
    put32(&h[20], id);
    for (size_t i = 0; i < d.size(); ++i) {
      put32(&h[24 + 8 * i], uint32_t(d[i].first));
      put32(&h[28 + 8 * i], d[i].second);
    }
    m.buffers.push_back(std::move(h));
  };
  if (ctx_allocation_)
    emit(
        ctx_allocation_,
        [](const block::Extent& e) {
          return (e.data ? 0 : kStateHole) | (e.zero ? kStateZero : 0);
        },
        !ctx_depth_);
  if (ctx_depth_)
    emit(
        ctx_depth_, [](const block::Extent& e) { return e.present ? e.depth + 1 : 0u; }, true);
  queue(std::move(m));
}

Task<void> Connection::handle(Request req, AlignedBuffer payload, uint64_t held) {
  Export& ex = *export_;
  co_await ex.gate->enter();  // waits while a live snapshot or commit switches the device
  block::BlockDevice& dev = *ex.device;
  ex.stats.requests++;
  const uint64_t size = dev.size();
  const bool past_end = req.offset > size || req.length > size - req.offset;
  const bool writes = req.type == kCmdWrite || req.type == kCmdTrim || req.type == kCmdWriteZeroes;
  int rc = 0;
  bool replied = false;

  if (req.type > kCmdBlockStatus) {
    rc = -EINVAL;
  } else if (writes && ex.config.read_only) {
    rc = -EPERM;
  } else if (past_end && req.type != kCmdFlush) {
    rc = writes ? -ENOSPC : -EINVAL;
  } else if (req.type == kCmdRead && req.length > server_.options().max_block) {
    rc = (req.flags & kCmdFlagDf) ? -EOVERFLOW : -EINVAL;
  } else {
    const auto cache = ex.config.cache;
    const bool want_fua = cache == ExportConfig::Cache::kWritethrough ||
                          (cache == ExportConfig::Cache::kWriteback && (req.flags & kCmdFlagFua));
    const unsigned fua = want_fua ? unsigned(block::kWriteFua) : 0u;
    switch (req.type) {
      case kCmdRead:
        co_await do_read(req, held);
        replied = true;
        break;
      case kCmdWrite:
        rc = co_await dev.write(req.offset, payload.span(), fua);
        if (rc == 0) {
          ex.stats.writes++;
          ex.stats.bytes_written += req.length;
        }
        break;
      case kCmdFlush:
        if (cache != ExportConfig::Cache::kUnsafe) rc = co_await dev.flush();
        break;
      case kCmdTrim:
        if (ex.config.discard) rc = co_await dev.discard(req.offset, req.length);
        if (rc == 0 && fua) rc = co_await dev.flush();
        break;
      case kCmdWriteZeroes: {
        unsigned f = fua;
        if (req.flags & kCmdFlagNoHole) f |= block::kWriteNoUnmap;
        if (req.flags & kCmdFlagFastZero) f |= block::kWriteFastZero;
        rc = co_await dev.write_zeroes(req.offset, req.length, f);
        break;
      }
      case kCmdCache:
        break;  // the page cache already serves reads; nothing to prefetch into
      case kCmdBlockStatus:
        co_await do_block_status(req, held);
        replied = true;
        break;
      default:
        rc = -EINVAL;
    }
  }
  if (rc < 0) {
    ex.stats.errors++;
    logf(LogLevel::kDebug, "%s: request type=%u failed: %s", peer_.c_str(), req.type,
         strerror(-rc));
  }
  // A live commit (commit.cpp): a write that reached the top goes to the base too; anything
  // else that may have changed the top (a trim, a failed write) is copied again later.
  const bool mirror = rc == 0 && ex.dirty && ex.dirty->mirror &&
                      (req.type == kCmdWrite || req.type == kCmdWriteZeroes);
  if (mirror)
    co_await mirror_write(*ex.dirty, req.type == kCmdWriteZeroes, req.offset, req.length,
                          payload.span());
  else if (writes && ex.dirty)
    ex.dirty->mark(req.offset, req.length);
  ex.gate->leave();
  if (!replied) {
    payload.release();  // the payload is not held for the reply's sake
    if (structured_ && rc < 0)
      reply_structured_error(req.handle, rc, held);
    else
      reply_simple(req.handle, rc, held);
  }
  --in_flight_;
  room_.wake();
}

}  // namespace kiln::nbd
