// Order-preserving, prefix-free byte encodings for keys. Every stored key in Tandem is a
// concatenation of these pieces, so memcmp order of encoded keys equals tuple order of the
// decoded parts, and no encoded part is a prefix of another. Format: docs/storage_layout.md.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace tandem::keys {

// Appends `bytes` escaped: 0x00 -> 0x00 0xFF, terminated by 0x00 0x01.
void append_bytes(std::string& out, std::string_view bytes);
// Appends big-endian fixed-width integers.
void append_u16(std::string& out, uint16_t v);
void append_u64(std::string& out, uint64_t v);

// A cursor over an encoded key. Each read returns nullopt on malformed input.
class Reader {
 public:
  explicit Reader(std::string_view in) : in_(in) {}
  std::optional<std::string> bytes();
  std::optional<uint16_t> u16();
  std::optional<uint64_t> u64();
  std::optional<uint8_t> u8();
  std::string_view rest() const { return in_; }
  bool done() const { return in_.empty(); }

 private:
  std::string_view in_;
};

// The smallest key greater than every key starting with `prefix` ("" if none exists).
std::string prefix_successor(std::string_view prefix);

// 64-bit FNV-1a; stable across builds and platforms (it decides placement on disk).
uint64_t stable_hash(std::string_view bytes);

}  // namespace tandem::keys
