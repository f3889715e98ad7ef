// Entity references: (entity type, entity key). Keys are byte strings, types short names.
#pragma once

#include <compare>
#include <cstdint>
#include <string>
#include <string_view>

#include <tandem/core/status.h>

namespace tandem {

inline constexpr size_t kMaxTypeNameBytes = 64;
inline constexpr size_t kMaxEntityKeyBytes = 1024;

struct EntityRef {
  std::string type;
  std::string key;

  auto operator<=>(const EntityRef&) const = default;
  bool operator==(const EntityRef&) const = default;
  // "item/sku-9" with non-printable key bytes hex-escaped; for logs and the CLI.
  std::string to_string() const;
};

// kInvalidArgument when the type is empty or too long, or the key is too long.
Status validate_ref(const EntityRef& ref);

// The partner name used for external clients: ("$client", client id).
inline constexpr std::string_view kClientType = "$client";
inline bool is_client(const EntityRef& ref) { return ref.type == kClientType; }

struct EntityRefHash {
  size_t operator()(const EntityRef& r) const noexcept;
};

}  // namespace tandem
