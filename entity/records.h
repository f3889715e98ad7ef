// The runtime's own durable records (operations, escrow groups, client replies, timers,
// parked messages). Each starts with a version byte. Layout: docs/storage_layout.md.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <tandem/core/bytes.h>
#include <tandem/core/ids.h>
#include <tandem/entity/context.h>

namespace tandem::entity {

inline constexpr uint8_t kRecordV1 = 1;

// Provider side of one operation.
struct ProviderOp {
  OpStatus status = OpStatus::kPending;
  uint64_t payload_type = 0;
  std::string payload;
  int64_t deadline_ms = 0;
  std::string expiry_timer;  // the expiry timer's row key, deleted once the operation is decided
  std::string encode() const {
    return ByteWriter().u8(kRecordV1).u8(static_cast<uint8_t>(status)).varint(payload_type).bytes(payload)
        .i64(deadline_ms).bytes(expiry_timer).take();
  }
  static std::optional<ProviderOp> decode(std::string_view b) {
    ByteReader r(b);
    ProviderOp o;
    auto v = r.u8(); auto s = r.u8(); auto t = r.varint(); auto p = r.bytes(); auto d = r.i64(); auto k = r.bytes();
    if (!v || *v != kRecordV1 || !s || !t || !p || !d || !k) return std::nullopt;
    o.status = static_cast<OpStatus>(*s); o.payload_type = *t; o.payload = std::move(*p); o.deadline_ms = *d;
    o.expiry_timer = std::move(*k);
    return o;
  }
};

// Requester side: which escrow group an operation belongs to.
struct RequesterOp {
  uint64_t group = 0;
  std::string encode() const { return ByteWriter().u8(kRecordV1).varint(group).take(); }
  static std::optional<RequesterOp> decode(std::string_view b) {
    ByteReader r(b);
    auto v = r.u8(); auto g = r.varint();
    if (!v || *v != kRecordV1 || !g) return std::nullopt;
    return RequesterOp{*g};
  }
};

struct EscrowGroup {
  enum class State : uint8_t { kOpen = 0, kConfirming = 1, kConfirmed = 2, kCancelled = 3, kBroken = 4 };
  struct Op {
    EntityRef provider;
    uint64_t id = 0;
    OpStatus status = OpStatus::kPending;
  };
  State state = State::kOpen;
  int64_t deadline_ms = 0;
  std::string deadline_timer;  // row key of the deadline timer, deleted once the group is decided
  std::vector<Op> ops;

  std::string encode() const {
    ByteWriter w;
    w.u8(kRecordV1).u8(static_cast<uint8_t>(state)).i64(deadline_ms).bytes(deadline_timer).varint(ops.size());
    for (auto& o : ops) w.bytes(o.provider.type).bytes(o.provider.key).varint(o.id).u8(static_cast<uint8_t>(o.status));
    return w.take();
  }
  static std::optional<EscrowGroup> decode(std::string_view b) {
    ByteReader r(b);
    EscrowGroup g;
    auto v = r.u8(); auto s = r.u8(); auto d = r.i64(); auto k = r.bytes(); auto n = r.varint();
    if (!v || *v != kRecordV1 || !s || !d || !k || !n) return std::nullopt;
    g.state = static_cast<State>(*s); g.deadline_ms = *d; g.deadline_timer = std::move(*k);
    for (uint64_t i = 0; i < *n; ++i) {
      auto t = r.bytes(); auto k = r.bytes(); auto id = r.varint(); auto st = r.u8();
      if (!t || !k || !id || !st) return std::nullopt;
      g.ops.push_back({EntityRef{std::move(*t), std::move(*k)}, *id, static_cast<OpStatus>(*st)});
    }
    return g;
  }
};

// A client request's stored reply (or its pending marker) for idempotent retries.
struct ReplyRow {
  uint64_t request_hash = 0;  // of (payload type, payload): a reused key with other bytes is refused
  int64_t expires_ms = 0;
  bool done = false;
  uint32_t code = 0;  // tandem::Code of a refused request
  uint64_t payload_type = 0;
  std::string payload;
  std::string encode() const {
    return ByteWriter().u8(kRecordV1).varint(request_hash).i64(expires_ms).u8(done ? 1 : 0).varint(code)
        .varint(payload_type).bytes(payload).take();
  }
  static std::optional<ReplyRow> decode(std::string_view b) {
    ByteReader r(b);
    ReplyRow o;
    auto v = r.u8(); auto h = r.varint(); auto e = r.i64(); auto d = r.u8(); auto c = r.varint();
    auto t = r.varint(); auto p = r.bytes();
    if (!v || *v != kRecordV1 || !h || !e || !d || !c || !t || !p) return std::nullopt;
    o.request_hash = *h; o.expires_ms = *e; o.done = *d != 0; o.code = static_cast<uint32_t>(*c);
    o.payload_type = *t; o.payload = std::move(*p);
    return o;
  }
};

struct TimerRow {
  int64_t due_ms = 0;
  std::string envelope;  // encoded messaging::Envelope
  std::string encode() const { return ByteWriter().u8(kRecordV1).i64(due_ms).bytes(envelope).take(); }
  static std::optional<TimerRow> decode(std::string_view b) {
    ByteReader r(b);
    auto v = r.u8(); auto d = r.i64(); auto e = r.bytes();
    if (!v || *v != kRecordV1 || !d || !e) return std::nullopt;
    return TimerRow{*d, std::move(*e)};
  }
};

struct ParkedRow {
  std::string envelope;
  std::string reason;
  std::string encode() const { return ByteWriter().u8(kRecordV1).bytes(envelope).bytes(reason).take(); }
  static std::optional<ParkedRow> decode(std::string_view b) {
    ByteReader r(b);
    auto v = r.u8(); auto e = r.bytes(); auto why = r.bytes();
    if (!v || *v != kRecordV1 || !e || !why) return std::nullopt;
    return ParkedRow{std::move(*e), std::move(*why)};
  }
};

}  // namespace tandem::entity
