// The NBD wire format (NetworkBlockDevice/nbd doc/proto.md is the contract), described once.
// All fields are big-endian on the wire.
#pragma once

#include <cstdint>

namespace kiln::nbd {

// Handshake.
constexpr uint64_t kNbdMagic = 0x4e42444d41474943ull;  // "NBDMAGIC"
constexpr uint64_t kOptMagic = 0x49484156454f5054ull;  // "IHAVEOPT"
constexpr uint64_t kRepMagic = 0x0003e889045565a9ull;
constexpr uint16_t kFlagFixedNewstyle = 1u << 0;
constexpr uint16_t kFlagNoZeroes = 1u << 1;
constexpr uint32_t kClientFixedNewstyle = 1u << 0;
constexpr uint32_t kClientNoZeroes = 1u << 1;

enum Option : uint32_t {
  kOptExportName = 1,
  kOptAbort = 2,
  kOptList = 3,
  kOptStartTls = 5,
  kOptInfo = 6,
  kOptGo = 7,
  kOptStructuredReply = 8,
  kOptListMetaContext = 9,
  kOptSetMetaContext = 10,
};

enum OptionReply : uint32_t {
  kRepAck = 1,
  kRepServer = 2,
  kRepInfo = 3,
  kRepMetaContext = 4,
  kRepErrUnsup = 0x80000001,
  kRepErrPolicy = 0x80000002,
  kRepErrInvalid = 0x80000003,
  kRepErrPlatform = 0x80000004,
  kRepErrTlsReqd = 0x80000005,
  kRepErrUnknown = 0x80000006,
  kRepErrShutdown = 0x80000007,
  kRepErrBlockSizeReqd = 0x80000008,
  kRepErrTooBig = 0x80000009,
};

enum Info : uint16_t {
  kInfoExport = 0,
  kInfoName = 1,
  kInfoDescription = 2,
  kInfoBlockSize = 3,
};

// Transmission flags.
constexpr uint16_t kFlagHasFlags = 1u << 0;
constexpr uint16_t kFlagReadOnly = 1u << 1;
constexpr uint16_t kFlagSendFlush = 1u << 2;
constexpr uint16_t kFlagSendFua = 1u << 3;
constexpr uint16_t kFlagRotational = 1u << 4;
constexpr uint16_t kFlagSendTrim = 1u << 5;
constexpr uint16_t kFlagSendWriteZeroes = 1u << 6;
constexpr uint16_t kFlagSendDf = 1u << 7;
constexpr uint16_t kFlagCanMultiConn = 1u << 8;
constexpr uint16_t kFlagSendCache = 1u << 10;
constexpr uint16_t kFlagSendFastZero = 1u << 11;

// Requests.
constexpr uint32_t kRequestMagic = 0x25609513;
constexpr size_t kRequestSize = 28;  // magic, flags, type, handle, offset, length
enum Command : uint16_t {
  kCmdRead = 0,
  kCmdWrite = 1,
  kCmdDisc = 2,
  kCmdFlush = 3,
  kCmdTrim = 4,
  kCmdCache = 5,
  kCmdWriteZeroes = 6,
  kCmdBlockStatus = 7,
};
constexpr uint16_t kCmdFlagFua = 1u << 0;
constexpr uint16_t kCmdFlagNoHole = 1u << 1;
constexpr uint16_t kCmdFlagDf = 1u << 2;
constexpr uint16_t kCmdFlagReqOne = 1u << 3;
constexpr uint16_t kCmdFlagFastZero = 1u << 4;

// Replies.
constexpr uint32_t kSimpleReplyMagic = 0x67446698;
constexpr size_t kSimpleReplySize = 16;  // magic, error, handle
constexpr uint32_t kStructuredReplyMagic = 0x668e33ef;
constexpr size_t kStructuredReplySize = 20;  // magic, flags, type, handle, length
constexpr uint16_t kReplyFlagDone = 1u << 0;
enum ReplyType : uint16_t {
  kReplyNone = 0,
  kReplyOffsetData = 1,
  kReplyOffsetHole = 2,
  kReplyBlockStatus = 5,
  kReplyError = 0x8001,
  kReplyErrorOffset = 0x8002,
};

// Errors on the wire.
enum WireError : uint32_t {
  kEperm = 1,
  kEio = 5,
  kEnomem = 12,
  kEinval = 22,
  kEnospc = 28,
  kEoverflow = 75,
  kEnotsup = 95,
  kEshutdown = 108,
};

// Metadata contexts Kiln offers, with the ids it hands out.
constexpr char kContextBaseAllocation[] = "base:allocation";
constexpr char kContextAllocationDepth[] = "qemu:allocation-depth";
constexpr uint32_t kStateHole = 1u << 0;
constexpr uint32_t kStateZero = 1u << 1;

// Limits on what a client may send.
constexpr uint32_t kMaxOptionLength = 64 * 1024;
constexpr uint32_t kMaxStringLength = 4096;
constexpr uint32_t kMaxOptionsPerConnection = 4096;

}  // namespace kiln::nbd
