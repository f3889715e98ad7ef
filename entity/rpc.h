// Bodies of the requests between clients, tools and nodes (carried in messaging Rpc frames).
#pragma once

#include <optional>
#include <string>
#include <vector>

#include <tandem/core/bytes.h>
#include <tandem/core/ids.h>

namespace tandem::entity::rpc {

inline constexpr uint8_t kV1 = 1;

struct Call {
  EntityRef to;
  uint64_t payload_type = 0;
  std::string payload;
  std::string client_id;
  std::string idempotency_key;
  std::string encode() const {
    return ByteWriter().u8(kV1).bytes(to.type).bytes(to.key).varint(payload_type).bytes(payload).bytes(client_id)
        .bytes(idempotency_key).take();
  }
  static std::optional<Call> decode(std::string_view b) {
    ByteReader r(b);
    auto v = r.u8(); auto t = r.bytes(); auto k = r.bytes(); auto pt = r.varint(); auto p = r.bytes();
    auto c = r.bytes(); auto i = r.bytes();
    if (!v || *v != kV1 || !t || !k || !pt || !p || !c || !i) return std::nullopt;
    return Call{{*t, *k}, *pt, *p, *c, *i};
  }
};

struct Reply {
  uint64_t payload_type = 0;
  std::string payload;
  std::string encode() const { return ByteWriter().u8(kV1).varint(payload_type).bytes(payload).take(); }
  static std::optional<Reply> decode(std::string_view b) {
    ByteReader r(b);
    auto v = r.u8(); auto t = r.varint(); auto p = r.bytes();
    if (!v || *v != kV1 || !t || !p) return std::nullopt;
    return Reply{*t, *p};
  }
};

// A list of byte strings (scan results, parked lists, key/value tables).
inline std::string encode_list(const std::vector<std::string>& items) {
  ByteWriter w;
  w.u8(kV1).varint(items.size());
  for (auto& i : items) w.bytes(i);
  return w.take();
}
inline std::optional<std::vector<std::string>> decode_list(std::string_view b) {
  ByteReader r(b);
  auto v = r.u8();
  auto n = r.varint();
  if (!v || *v != kV1 || !n) return std::nullopt;
  std::vector<std::string> out;
  for (uint64_t i = 0; i < *n; ++i) {
    auto s = r.bytes();
    if (!s) return std::nullopt;
    out.push_back(std::move(*s));
  }
  return out;
}

}  // namespace tandem::entity::rpc
