// Placement: where an entity's rows live in the key space. Every row of an entity in the
// state, activity, outbox and timer column families starts with its placement prefix, so one
// partition (a slot range of a hash type, a key range of a range type) is one contiguous key
// range in each family. Layout: docs/storage_layout.md.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>

#include <tandem/core/ids.h>

namespace tandem::partition {

struct TypeScheme {
  enum class Kind : uint8_t { kHash, kRange };
  Kind kind = Kind::kHash;
  uint16_t slots = 256;  // hash only: slot = stable_hash(key) mod slots
};

// Thread-safe for reads once configured.
class Placement {
 public:
  void set_scheme(const std::string& type, TypeScheme scheme) { schemes_[type] = scheme; }
  const TypeScheme& scheme(std::string_view type) const;
  uint16_t slot_of(std::string_view type, std::string_view key) const;
  // escaped(type) | [slot u16 for hash types] | escaped(key)
  std::string entity_prefix(const EntityRef& ref) const;
  // The prefix shared by every entity of `type` (range scans over one type).
  static std::string type_prefix(std::string_view type);
  // Decodes an entity prefix at the start of `key`; the remainder is left in `rest`.
  bool decode_entity(std::string_view key, EntityRef& ref, std::string_view& rest) const;

 private:
  std::map<std::string, TypeScheme, std::less<>> schemes_;
  TypeScheme default_;
};

}  // namespace tandem::partition
