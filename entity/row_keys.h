// Key layout of the rows the entity runtime writes (docs/storage_layout.md). Every key in
// state, activity, outbox and timer starts with the entity's placement prefix.
#pragma once

#include <string>
#include <string_view>

#include <tandem/core/ids.h>
#include <tandem/core/key_codec.h>

namespace tandem::entity::rows {

inline std::string state(const std::string& prefix) { return prefix + 's'; }
inline std::string kv(const std::string& prefix, std::string_view key) {
  std::string k = prefix + 'k';
  keys::append_bytes(k, key);
  return k;
}
inline std::string runtime(const std::string& prefix) { return prefix + 'r'; }
inline std::string partner(const std::string& prefix, const EntityRef& p) {
  std::string k = prefix + 'p';
  keys::append_bytes(k, p.type);
  keys::append_bytes(k, p.key);
  return k;
}
inline std::string dedup(const std::string& partner_base) { return partner_base + 'd'; }
inline std::string provider_op(const std::string& partner_base, uint64_t op) {
  std::string k = partner_base + 'o';
  keys::append_u64(k, op);
  return k;
}
inline std::string requester_op(const std::string& partner_base, uint64_t op) {
  std::string k = partner_base + 'q';
  keys::append_u64(k, op);
  return k;
}
inline std::string client_reply(const std::string& partner_base, std::string_view idem) {
  std::string k = partner_base + 'r';
  keys::append_bytes(k, idem);
  return k;
}
inline std::string group(const std::string& prefix, uint64_t id) {
  std::string k = prefix + 'g';
  keys::append_u64(k, id);
  return k;
}
inline std::string outbox(const std::string& from_prefix, const EntityRef& to, uint64_t seq) {
  std::string k = from_prefix;
  keys::append_bytes(k, to.type);
  keys::append_bytes(k, to.key);
  keys::append_u64(k, seq);
  return k;
}
inline std::string timer(const std::string& prefix, int64_t due_ms, uint64_t id) {
  std::string k = prefix;
  keys::append_u64(k, static_cast<uint64_t>(due_ms));
  keys::append_u64(k, id);
  return k;
}
inline constexpr std::string_view kParkedPrefix = "parked/";

}  // namespace tandem::entity::rows
