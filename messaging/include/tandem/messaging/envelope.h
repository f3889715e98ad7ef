// Envelope: one message between entities (or an entity and an external client), and the
// per-partner dedup record. Plain structs in memory; Cap'n Proto on disk and on the wire.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <tandem/core/ids.h>
#include <tandem/core/status.h>

namespace tandem::messaging {

enum class Kind : uint8_t {
  kRequest, kReply, kTry, kConfirm, kCancel, kOpResult, kTimer, kClientRequest, kClientReply, kInternal,
};
std::string_view kind_name(Kind k);

inline constexpr size_t kMaxPayloadBytes = 1 << 20;

struct Envelope {
  EntityRef from;
  EntityRef to;
  uint64_t seq = 0;  // per (from -> to) pair, from 1; 0 for client requests and timers
  Kind kind = Kind::kRequest;
  uint64_t correlation = 0;
  uint64_t payload_type = 0;
  std::string payload;
  uint64_t trace_id = 0;
  int64_t sent_at_ms = 0;
  std::string idempotency_key;
  uint32_t status = 0;
  int64_t deadline_ms = 0;
};

std::string encode(const Envelope& env);
// kCorruption when `bytes` is not an envelope (or exceeds traversal limits).
Result<Envelope> decode_envelope(std::string_view bytes);

// Per-partner dedup: a contiguous watermark plus a bounded sparse set of applied seqs above it.
class Dedup {
 public:
  static constexpr size_t kMaxAbove = 4096;
  bool applied(uint64_t seq) const;
  // Records seq as applied. False when the sparse set is full (the message must be retried later).
  bool mark(uint64_t seq);
  uint64_t watermark() const { return watermark_; }
  size_t above_count() const { return above_.size(); }
  uint64_t next_out_seq() { return ++next_out_; }
  uint64_t last_out_seq() const { return next_out_; }

  std::string encode() const;
  static Result<Dedup> decode(std::string_view bytes);

 private:
  uint64_t watermark_ = 0;
  std::vector<uint64_t> above_;  // sorted
  uint64_t next_out_ = 0;
};

}  // namespace tandem::messaging
