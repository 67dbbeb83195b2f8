// The fixed newstyle negotiation. Every option gets a reply, unknown ones NBD_REP_ERR_UNSUP;
// malformed or oversized ones an error reply — the connection is only dropped where the
// protocol leaves no way to answer (a bad magic, NBD_OPT_EXPORT_NAME of an unknown export).
#include <algorithm>
#include <cerrno>

#include "connection.h"
#include "kiln/nbd/protocol.h"
#include "log.h"
#include "wire.h"

namespace kiln::nbd {

using block::Task;

namespace {

// Reads a length-prefixed string from `data` at `*pos`; false if it does not fit.
bool take_string(const std::vector<uint8_t>& data, size_t* pos, std::string* out) {
  if (data.size() - *pos < 4) return false;
  const uint32_t len = get32(&data[*pos]);
  *pos += 4;
  if (len > kMaxStringLength || data.size() - *pos < len) return false;
  out->assign(reinterpret_cast<const char*>(&data[*pos]), len);
  *pos += len;
  return true;
}

}  // namespace

uint16_t Connection::transmission_flags(const Export& e) const {
  uint16_t f = kFlagHasFlags | kFlagSendFlush | kFlagSendFua | kFlagSendCache;
  if (server_.multi_conn(e)) f |= kFlagCanMultiConn;
  if (e.config.read_only)
    f |= kFlagReadOnly;
  else
    f |= kFlagSendTrim | kFlagSendWriteZeroes | kFlagSendFastZero;
  if (structured_) f |= kFlagSendDf;
  return f;
}

ExportView Connection::view(const Export& e) const {
  const auto& caps = e.device->caps();
  return {e.id,
          e.config.name,
          e.config.description,
          e.device->size(),
          transmission_flags(e),
          caps.preferred_block,
          std::min(caps.max_block, server_.options().max_block)};
}

bool Connection::may_see(const Export& e) const {
  // An export kept for one tenant is unknown to everybody else, not refused: other clients
  // cannot even learn that it exists.
  if (e.config.tls_identity.empty()) return true;
  return sock_.tls() && sock_.tls()->peer_identity() == e.config.tls_identity;
}

Export* Connection::lookup(const std::string& name, std::string* resolved) {
  Export* e;
  if (!scope_) {
    if (resolved) *resolved = name;
    e = server_.find_export(name);
  } else {
    // A per-export socket shows its one export, under its name or as the default export; any
    // other name is unknown, as if no other export existed.
    if (!name.empty() && name != scope_->name) return nullptr;
    if (resolved) *resolved = scope_->name;
    e = server_.find_export(scope_->name);
    if (e && e->id != scope_->id) e = nullptr;
  }
  return e && may_see(*e) ? e : nullptr;
}

Task<int> Connection::reply_option(uint32_t option, uint32_t type,
                                   const std::vector<uint8_t>& data) {
  Builder b;
  b.u64(kRepMagic).u32(option).u32(type).u32(uint32_t(data.size()));
  b.bytes().insert(b.bytes().end(), data.begin(), data.end());
  co_return co_await sock_.write_all(b.bytes());
}

Task<int> Connection::reply_error(uint32_t option, uint32_t type, const std::string& message) {
  logf(LogLevel::kDebug, "%s: option %u refused: %s", peer_.c_str(), option, message.c_str());
  co_return co_await reply_option(option, type,
                                  std::vector<uint8_t>(message.begin(), message.end()));
}

Task<int> Connection::handle_info(uint32_t option, const std::vector<uint8_t>& data, bool* go) {
  *go = false;
  size_t pos = 0;
  std::string name;
  if (!take_string(data, &pos, &name) || data.size() - pos < 2)
    co_return co_await reply_error(option, kRepErrInvalid, "malformed request");
  const uint16_t count = get16(&data[pos]);
  pos += 2;
  if (data.size() - pos != size_t(count) * 2)
    co_return co_await reply_error(option, kRepErrInvalid, "malformed information request list");
  bool want_name = false, want_description = false;
  for (uint16_t i = 0; i < count; ++i) {
    const uint16_t type = get16(&data[pos + 2 * i]);
    want_name |= type == kInfoName;
    want_description |= type == kInfoDescription;
  }
  std::string resolved;
  Export* e = lookup(name, &resolved);
  if (!e) co_return co_await reply_error(option, kRepErrUnknown, "no export named '" + name + "'");
  if (server_.stopping())
    co_return co_await reply_error(option, kRepErrShutdown, "server is shutting down");
  if (option == kOptGo && !server_.accepting_clients())
    co_return co_await reply_error(option, kRepErrPolicy, "too many clients");

  // The replies below may wait for a slow client; the export may be removed meanwhile, so
  // they are built from a copy, and GO looks the export up again at the end.
  const ExportView v = view(*e);
  e = nullptr;
  Builder info;
  info.u16(kInfoExport).u64(v.size).u16(v.flags);
  if (int rc = co_await reply_option(option, kRepInfo, info.bytes()); rc < 0) co_return rc;
  if (want_name) {
    Builder b;
    b.u16(kInfoName).str(v.name);
    if (int rc = co_await reply_option(option, kRepInfo, b.bytes()); rc < 0) co_return rc;
  }
  if (want_description && !v.description.empty()) {
    Builder b;
    b.u16(kInfoDescription).str(v.description);
    if (int rc = co_await reply_option(option, kRepInfo, b.bytes()); rc < 0) co_return rc;
  }
  Builder bs;
  bs.u16(kInfoBlockSize).u32(1).u32(v.preferred_block).u32(v.max_block);
  if (int rc = co_await reply_option(option, kRepInfo, bs.bytes()); rc < 0) co_return rc;
  if (int rc = co_await reply_option(option, kRepAck, {}); rc < 0) co_return rc;
  if (option == kOptGo) {
    Export* now = server_.find_export(resolved);
    if (!now || now->id != v.id) {
      // Removed (or replaced) while the reply was on its way: the client was told it may
      // start, and there is nothing left to serve.
      logf(LogLevel::kInfo, "%s: export '%s' went away during the handshake, closing",
           peer_.c_str(), resolved.c_str());
      co_return -ENOENT;
    }
    export_ = now;
    if (ctx_export_ != resolved) ctx_allocation_ = ctx_depth_ = 0;
    *go = true;
  }
  co_return 0;
}

Task<int> Connection::handle_list(uint32_t option, uint32_t length) {
  if (length) co_return co_await reply_error(option, kRepErrInvalid, "LIST takes no data");
  // Names and descriptions are copied first: exports may come and go while the replies wait
  // for a slow client.
  std::vector<std::pair<std::string, std::string>> list;
  if (scope_) {
    if (Export* e = lookup(scope_->name)) list.emplace_back(e->config.name, e->config.description);
  } else {
    for (const auto& [name, e] : server_.exports())
      if (e->usable() && may_see(*e)) list.emplace_back(name, e->config.description);
  }
  for (const auto& [name, description] : list) {
    Builder b;
    b.u32(uint32_t(name.size())).str(name).str(description);
    if (int rc = co_await reply_option(option, kRepServer, b.bytes()); rc < 0) co_return rc;
  }
  co_return co_await reply_option(option, kRepAck, {});
}

Task<int> Connection::handle_meta_context(uint32_t option, const std::vector<uint8_t>& data) {
  if (!structured_)
    co_return co_await reply_error(option, kRepErrInvalid, "structured replies not negotiated");
  size_t pos = 0;
  std::string name;
  if (!take_string(data, &pos, &name) || data.size() - pos < 4)
    co_return co_await reply_error(option, kRepErrInvalid, "malformed request");
  const uint32_t count = get32(&data[pos]);
  pos += 4;
  std::vector<std::string> queries;
  for (uint32_t i = 0; i < count; ++i) {
    std::string q;
    if (!take_string(data, &pos, &q))
      co_return co_await reply_error(option, kRepErrInvalid, "malformed query");
    queries.push_back(std::move(q));
  }
  if (pos != data.size())
    co_return co_await reply_error(option, kRepErrInvalid, "trailing bytes in request");
  std::string resolved;
  if (!lookup(name, &resolved))
    co_return co_await reply_error(option, kRepErrUnknown, "no export named '" + name + "'");

  const bool list = option == kOptListMetaContext;
  bool base = false, depth = false;
  if (list && queries.empty()) base = depth = true;
  for (const std::string& q : queries) {
    if (q == kContextBaseAllocation || (list && q == "base:")) base = true;
    if (q == kContextAllocationDepth || (list && q == "qemu:")) depth = true;
  }
  if (!list) {
    ctx_allocation_ = base ? 1 : 0;
    ctx_depth_ = depth ? 2 : 0;
    ctx_export_ = resolved;
  }
  auto send = [&](uint32_t id, const char* ctx) -> Task<int> {
    Builder b;
    b.u32(list ? 0 : id).str(ctx);
    co_return co_await reply_option(option, kRepMetaContext, b.bytes());
  };
  if (base)
    if (int rc = co_await send(1, kContextBaseAllocation); rc < 0) co_return rc;
  if (depth)
    if (int rc = co_await send(2, kContextAllocationDepth); rc < 0) co_return rc;
  co_return co_await reply_option(option, kRepAck, {});
}

Task<bool> Connection::start_tls() {
  // Anything the client sent after STARTTLS and before our reply was sent in the clear and
  // could have been injected on the way: refuse to carry it into the session.
  if (sock_.buffered()) {
    logf(LogLevel::kWarn, "%s: data after NBD_OPT_STARTTLS before its reply, closing",
         peer_.c_str());
    co_return false;
  }
  if (co_await reply_option(kOptStartTls, kRepAck, {}) < 0) co_return false;
  std::string error;
  if (co_await sock_.start_tls(server_.options().tls, &error) < 0) {
    logf(LogLevel::kInfo, "%s: TLS handshake failed: %s", peer_.c_str(), error.c_str());
    co_return false;
  }
  logf(LogLevel::kInfo, "%s: TLS on (%s)", peer_.c_str(), sock_.tls()->describe().c_str());
  // Nothing negotiated in the clear carries over into the session.
  structured_ = false;
  ctx_allocation_ = ctx_depth_ = 0;
  ctx_export_.clear();
  co_return true;
}

Task<bool> Connection::negotiate() {
  {
    Builder b;
    b.u64(kNbdMagic).u64(kOptMagic).u16(kFlagFixedNewstyle | kFlagNoZeroes);
    if (co_await sock_.write_all(b.bytes()) < 0) co_return false;
  }
  uint8_t cf[4];
  if (co_await sock_.read_exact(cf) < 0) co_return false;
  const uint32_t client_flags = get32(cf);
  if (client_flags & ~(kClientFixedNewstyle | kClientNoZeroes)) {
    logf(LogLevel::kInfo, "%s: unknown client flags %#x, closing", peer_.c_str(), client_flags);
    co_return false;
  }
  no_zeroes_ = client_flags & kClientNoZeroes;

  for (uint32_t n = 0; n < kMaxOptionsPerConnection; ++n) {
    uint8_t hdr[16];
    if (co_await sock_.read_exact(hdr) < 0) co_return false;
    if (get64(hdr) != kOptMagic) {
      logf(LogLevel::kInfo, "%s: bad option magic, closing", peer_.c_str());
      co_return false;
    }
    const uint32_t option = get32(hdr + 8);
    const uint32_t length = get32(hdr + 12);
    if (length > kMaxOptionLength) {
      if (option == kOptExportName || length > (64u << 20)) co_return false;
      if (co_await sock_.skip(length) < 0) co_return false;
      if (co_await reply_error(option, kRepErrTooBig, "option too long") < 0) co_return false;
      continue;
    }
    std::vector<uint8_t> data(length);
    if (co_await sock_.read_exact(data) < 0) co_return false;

    int rc = 0;
    // With TLS required, only STARTTLS and ABORT are answered in the clear (as qemu-nbd and
    // nbdkit do); NBD_OPT_EXPORT_NAME has no error reply, so it ends the connection.
    if (server_.options().tls_mode == TlsMode::kRequire && !sock_.tls() && option != kOptStartTls &&
        option != kOptAbort) {
      if (option == kOptExportName) {
        logf(LogLevel::kInfo, "%s: NBD_OPT_EXPORT_NAME without TLS, closing", peer_.c_str());
        co_return false;
      }
      if (co_await reply_error(option, kRepErrTlsReqd, "TLS is required") < 0) co_return false;
      continue;
    }
    switch (option) {
      case kOptStartTls:
        if (length)
          rc = co_await reply_error(option, kRepErrInvalid, "STARTTLS takes no data");
        else if (server_.options().tls_mode == TlsMode::kOff)
          rc = co_await reply_error(option, kRepErrPolicy, "TLS is not enabled on this server");
        else if (sock_.tls())
          rc = co_await reply_error(option, kRepErrInvalid, "TLS is already on");
        else {
          const bool on = co_await start_tls();
          if (!on) co_return false;
        }
        break;
      case kOptExportName: {
        std::string name(data.begin(), data.end()), resolved;
        Export* e = lookup(name, &resolved);
        if (!e || server_.stopping() || !server_.accepting_clients()) {
          logf(LogLevel::kInfo, "%s: export '%s' refused, closing", peer_.c_str(), name.c_str());
          co_return false;
        }
        const ExportView v = view(*e);
        Builder b;
        b.u64(v.size).u16(v.flags);
        if (!no_zeroes_) b.zeros(124);
        ctx_allocation_ = ctx_depth_ = 0;  // no way to have negotiated them for this name
        if (co_await sock_.write_all(b.bytes()) < 0) co_return false;
        e = server_.find_export(resolved);
        if (!e || e->id != v.id) {
          logf(LogLevel::kInfo, "%s: export '%s' went away during the handshake, closing",
               peer_.c_str(), resolved.c_str());
          co_return false;
        }
        export_ = e;
        co_return true;
      }
      case kOptAbort:
        co_await reply_option(option, kRepAck, {});
        co_return false;
      case kOptList:
        rc = co_await handle_list(option, length);
        break;
      case kOptStructuredReply:
        if (length) {
          rc = co_await reply_error(option, kRepErrInvalid, "STRUCTURED_REPLY takes no data");
        } else {
          structured_ = true;
          rc = co_await reply_option(option, kRepAck, {});
        }
        break;
      case kOptInfo:
      case kOptGo: {
        bool go = false;
        rc = co_await handle_info(option, data, &go);
        if (rc == 0 && go) co_return true;
        break;
      }
      case kOptListMetaContext:
      case kOptSetMetaContext:
        rc = co_await handle_meta_context(option, data);
        break;
      default:
        rc = co_await reply_error(option, kRepErrUnsup, "option not supported");
        break;
    }
    if (rc < 0) co_return false;
  }
  logf(LogLevel::kInfo, "%s: too many options, closing", peer_.c_str());
  co_return false;
}

}  // namespace kiln::nbd
