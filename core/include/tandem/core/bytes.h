// A small versioned binary record codec for the runtime's own durable rows (operation,
// escrow-group, client-reply, timer and parked records). Little-endian varints and
// length-prefixed byte strings; readers return nullopt on truncated or malformed input.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace tandem {

class ByteWriter {
 public:
  ByteWriter& u8(uint8_t v) { out_.push_back(static_cast<char>(v)); return *this; }
  ByteWriter& varint(uint64_t v) {
    while (v >= 0x80) { out_.push_back(static_cast<char>((v & 0x7F) | 0x80)); v >>= 7; }
    out_.push_back(static_cast<char>(v));
    return *this;
  }
  ByteWriter& i64(int64_t v) { return varint(static_cast<uint64_t>(v)); }
  ByteWriter& bytes(std::string_view b) { varint(b.size()); out_.append(b); return *this; }
  std::string take() { return std::move(out_); }

 private:
  std::string out_;
};

class ByteReader {
 public:
  explicit ByteReader(std::string_view in) : in_(in) {}
  std::optional<uint8_t> u8() {
    if (in_.empty()) return std::nullopt;
    auto v = static_cast<uint8_t>(in_[0]);
    in_.remove_prefix(1);
    return v;
  }
  std::optional<uint64_t> varint() {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (in_.empty()) return std::nullopt;
      auto b = static_cast<uint8_t>(in_[0]);
      in_.remove_prefix(1);
      if (shift == 63 && b > 1) return std::nullopt;  // a 10th byte beyond bit 63: more than 64 bits
      v |= static_cast<uint64_t>(b & 0x7F) << shift;
      if (!(b & 0x80)) return v;
    }
    return std::nullopt;
  }
  // A varint that must fit 32 bits (node and partition ids): a larger value is malformed,
  // never cut down to one that names something else.
  std::optional<uint32_t> u32() {
    auto v = varint();
    if (!v || *v > UINT32_MAX) return std::nullopt;
    return static_cast<uint32_t>(*v);
  }
  std::optional<uint16_t> u16() {
    auto v = varint();
    if (!v || *v > UINT16_MAX) return std::nullopt;
    return static_cast<uint16_t>(*v);
  }
  std::optional<int64_t> i64() {
    auto v = varint();
    if (!v) return std::nullopt;
    return static_cast<int64_t>(*v);
  }
  std::optional<std::string> bytes() {
    auto n = varint();
    if (!n || *n > in_.size()) return std::nullopt;
    std::string s(in_.substr(0, *n));
    in_.remove_prefix(*n);
    return s;
  }
  bool done() const { return in_.empty(); }

 private:
  std::string_view in_;
};

}  // namespace tandem
