#include <tandem/core/key_codec.h>

namespace tandem::keys {

void append_bytes(std::string& out, std::string_view bytes) {
  for (char c : bytes) {
    out.push_back(c);
    if (c == '\0') out.push_back('\xFF');
  }
  out.push_back('\0');
  out.push_back('\x01');
}

void append_u16(std::string& out, uint16_t v) {
  out.push_back(static_cast<char>(v >> 8));
  out.push_back(static_cast<char>(v & 0xFF));
}

void append_u64(std::string& out, uint64_t v) {
  for (int shift = 56; shift >= 0; shift -= 8) out.push_back(static_cast<char>((v >> shift) & 0xFF));
}

std::optional<std::string> Reader::bytes() {
  std::string out;
  for (size_t i = 0; i < in_.size(); ++i) {
    char c = in_[i];
    if (c != '\0') {
      out.push_back(c);
      continue;
    }
    if (i + 1 >= in_.size()) return std::nullopt;
    char next = in_[i + 1];
    if (next == '\xFF') {
      out.push_back('\0');
      ++i;
    } else if (next == '\x01') {
      in_.remove_prefix(i + 2);
      return out;
    } else {
      return std::nullopt;
    }
  }
  return std::nullopt;
}

std::optional<uint16_t> Reader::u16() {
  if (in_.size() < 2) return std::nullopt;
  uint16_t v = static_cast<uint16_t>((static_cast<uint8_t>(in_[0]) << 8) | static_cast<uint8_t>(in_[1]));
  in_.remove_prefix(2);
  return v;
}

std::optional<uint64_t> Reader::u64() {
  if (in_.size() < 8) return std::nullopt;
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = (v << 8) | static_cast<uint8_t>(in_[i]);
  in_.remove_prefix(8);
  return v;
}

std::optional<uint8_t> Reader::u8() {
  if (in_.empty()) return std::nullopt;
  uint8_t v = static_cast<uint8_t>(in_[0]);
  in_.remove_prefix(1);
  return v;
}

std::string prefix_successor(std::string_view prefix) {
  std::string s(prefix);
  while (!s.empty()) {
    auto last = static_cast<uint8_t>(s.back());
    if (last != 0xFF) {
      s.back() = static_cast<char>(last + 1);
      return s;
    }
    s.pop_back();
  }
  return s;
}

uint64_t stable_hash(std::string_view bytes) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : bytes) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

}  // namespace tandem::keys
