#include <tandem/core/ids.h>

#include <functional>

namespace tandem {

std::string EntityRef::to_string() const {
  std::string s = type;
  s += '/';
  static constexpr char kHex[] = "0123456789abcdef";
  for (unsigned char c : key) {
    if (c >= 0x20 && c < 0x7F && c != '\\') {
      s.push_back(static_cast<char>(c));
    } else {
      s += "\\x";
      s.push_back(kHex[c >> 4]);
      s.push_back(kHex[c & 0xF]);
    }
  }
  return s;
}

Status validate_ref(const EntityRef& ref) {
  if (ref.type.empty()) return Status::invalid_argument("entity type is empty");
  if (ref.type.size() > kMaxTypeNameBytes)
    return Status::invalid_argument("entity type name too long (" + std::to_string(ref.type.size()) + " > " +
                                    std::to_string(kMaxTypeNameBytes) + " bytes)");
  if (ref.key.size() > kMaxEntityKeyBytes)
    return Status::invalid_argument("entity key too long (" + std::to_string(ref.key.size()) + " > " +
                                    std::to_string(kMaxEntityKeyBytes) + " bytes)");
  return Status::ok();
}

size_t EntityRefHash::operator()(const EntityRef& r) const noexcept {
  size_t h = std::hash<std::string>{}(r.type);
  return h * 31 + std::hash<std::string>{}(r.key);
}

}  // namespace tandem
