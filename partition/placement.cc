#include <tandem/partition/placement.h>

#include <tandem/core/key_codec.h>

namespace tandem::partition {

const TypeScheme& Placement::scheme(std::string_view type) const {
  auto it = schemes_.find(type);
  return it == schemes_.end() ? default_ : it->second;
}

uint16_t Placement::slot_of(std::string_view type, std::string_view key) const {
  const auto& s = scheme(type);
  return static_cast<uint16_t>(keys::stable_hash(key) % (s.slots ? s.slots : 1));
}

std::string Placement::type_prefix(std::string_view type) {
  std::string out;
  keys::append_bytes(out, type);
  return out;
}

std::string Placement::entity_prefix(const EntityRef& ref) const {
  std::string out;
  out.reserve(ref.type.size() + ref.key.size() + 8);
  keys::append_bytes(out, ref.type);
  if (scheme(ref.type).kind == TypeScheme::Kind::kHash) keys::append_u16(out, slot_of(ref.type, ref.key));
  keys::append_bytes(out, ref.key);
  return out;
}

bool Placement::decode_entity(std::string_view key, EntityRef& ref, std::string_view& rest) const {
  keys::Reader r(key);
  auto type = r.bytes();
  if (!type) return false;
  if (scheme(*type).kind == TypeScheme::Kind::kHash && !r.u16()) return false;
  auto k = r.bytes();
  if (!k) return false;
  ref.type = std::move(*type);
  ref.key = std::move(*k);
  rest = r.rest();
  return true;
}

}  // namespace tandem::partition
