#include <tandem/messaging/envelope.h>

#include <algorithm>

#include <capnp/message.h>
#include <capnp/serialize.h>
#include <kj/exception.h>

#include "schema/envelope.capnp.h"

namespace tandem::messaging {

std::string_view kind_name(Kind k) {
  switch (k) {
    case Kind::kRequest: return "request";
    case Kind::kReply: return "reply";
    case Kind::kTry: return "try";
    case Kind::kConfirm: return "confirm";
    case Kind::kCancel: return "cancel";
    case Kind::kOpResult: return "op-result";
    case Kind::kTimer: return "timer";
    case Kind::kClientRequest: return "client-request";
    case Kind::kClientReply: return "client-reply";
    case Kind::kInternal: return "internal";
  }
  return "?";
}

namespace {

capnp::Data::Reader as_data(std::string_view s) {
  return capnp::Data::Reader(reinterpret_cast<const kj::byte*>(s.data()), s.size());
}
capnp::Text::Reader as_text(std::string_view s) { return capnp::Text::Reader(s.data(), s.size()); }

void set_ref(schema::Ref::Builder b, const EntityRef& r) {
  b.setType(as_text(r.type));
  b.setKey(as_data(r.key));
}

EntityRef get_ref(schema::Ref::Reader r) {
  auto k = r.getKey();
  return EntityRef{std::string(r.getType().cStr(), r.getType().size()),
                   std::string(reinterpret_cast<const char*>(k.begin()), k.size())};
}

std::string to_string(capnp::MessageBuilder& mb) {
  auto words = capnp::messageToFlatArray(mb);
  auto bytes = words.asBytes();
  return std::string(reinterpret_cast<const char*>(bytes.begin()), bytes.size());
}

// Cap'n Proto needs word-aligned input; stored strings are not guaranteed to be.
kj::Array<capnp::word> aligned_copy(std::string_view bytes) {
  auto words = kj::heapArray<capnp::word>(bytes.size() / sizeof(capnp::word));
  memcpy(words.begin(), bytes.data(), words.size() * sizeof(capnp::word));
  return words;
}

capnp::ReaderOptions reader_options() {
  capnp::ReaderOptions o;
  o.traversalLimitInWords = (kMaxPayloadBytes / 8) * 2 + 4096;
  o.nestingLimit = 16;
  return o;
}

}  // namespace

std::string encode(const Envelope& env) {
  capnp::MallocMessageBuilder mb(128 + env.payload.size() / 8);
  auto b = mb.initRoot<schema::Envelope>();
  set_ref(b.initFrom(), env.from);
  set_ref(b.initTo(), env.to);
  b.setSeq(env.seq);
  b.setKind(static_cast<schema::Kind>(env.kind));
  b.setCorrelation(env.correlation);
  b.setPayloadType(env.payload_type);
  b.setPayload(as_data(env.payload));
  b.setTraceId(env.trace_id);
  b.setSentAtMs(env.sent_at_ms);
  if (!env.idempotency_key.empty()) b.setIdempotencyKey(as_data(env.idempotency_key));
  b.setStatus(env.status);
  b.setDeadlineMs(env.deadline_ms);
  return to_string(mb);
}

Result<Envelope> decode_envelope(std::string_view bytes) {
  if (bytes.size() % sizeof(capnp::word) != 0 || bytes.empty())
    return Status::corruption("envelope: size " + std::to_string(bytes.size()) + " is not a whole number of words");
  try {
    auto words = aligned_copy(bytes);
    capnp::FlatArrayMessageReader mr(words, reader_options());
    auto r = mr.getRoot<schema::Envelope>();
    Envelope e;
    e.from = get_ref(r.getFrom());
    e.to = get_ref(r.getTo());
    e.seq = r.getSeq();
    auto kind = static_cast<uint16_t>(r.getKind());
    if (kind > static_cast<uint16_t>(Kind::kInternal))
      return Status::corruption("envelope: unknown kind " + std::to_string(kind));
    e.kind = static_cast<Kind>(kind);
    e.correlation = r.getCorrelation();
    e.payload_type = r.getPayloadType();
    auto p = r.getPayload();
    e.payload.assign(reinterpret_cast<const char*>(p.begin()), p.size());
    e.trace_id = r.getTraceId();
    e.sent_at_ms = r.getSentAtMs();
    auto ik = r.getIdempotencyKey();
    e.idempotency_key.assign(reinterpret_cast<const char*>(ik.begin()), ik.size());
    e.status = r.getStatus();
    e.deadline_ms = r.getDeadlineMs();
    return e;
  } catch (const kj::Exception& ex) {
    return Status::corruption(std::string("envelope: ") + ex.getDescription().cStr());
  }
}

bool Dedup::applied(uint64_t seq) const {
  return seq <= watermark_ || std::binary_search(above_.begin(), above_.end(), seq);
}

bool Dedup::mark(uint64_t seq) {
  if (applied(seq)) return true;
  if (seq == watermark_ + 1) {
    watermark_ = seq;
    auto it = above_.begin();
    while (it != above_.end() && *it == watermark_ + 1) watermark_ = *it++;
    above_.erase(above_.begin(), it);
    return true;
  }
  if (above_.size() >= kMaxAbove) return false;
  above_.insert(std::upper_bound(above_.begin(), above_.end(), seq), seq);
  return true;
}

std::string Dedup::encode() const {
  capnp::MallocMessageBuilder mb(16 + above_.size());
  auto b = mb.initRoot<schema::Dedup>();
  b.setWatermark(watermark_);
  b.setNextOutSeq(next_out_);
  if (!above_.empty()) {
    auto l = b.initAbove(static_cast<unsigned>(above_.size()));
    for (unsigned i = 0; i < above_.size(); ++i) l.set(i, above_[i]);
  }
  return to_string(mb);
}

Result<Dedup> Dedup::decode(std::string_view bytes) {
  if (bytes.size() % sizeof(capnp::word) != 0 || bytes.empty()) return Status::corruption("dedup record: bad size");
  try {
    auto words = aligned_copy(bytes);
    capnp::FlatArrayMessageReader mr(words, reader_options());
    auto r = mr.getRoot<schema::Dedup>();
    Dedup d;
    d.watermark_ = r.getWatermark();
    d.next_out_ = r.getNextOutSeq();
    for (auto s : r.getAbove()) d.above_.push_back(s);
    std::sort(d.above_.begin(), d.above_.end());
    return d;
  } catch (const kj::Exception& ex) {
    return Status::corruption(std::string("dedup record: ") + ex.getDescription().cStr());
  }
}

}  // namespace tandem::messaging
