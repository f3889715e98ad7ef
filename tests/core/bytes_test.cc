#include <doctest/doctest.h>

#include <tandem/core/bytes.h>

using tandem::ByteReader;
using tandem::ByteWriter;

TEST_CASE("32- and 16-bit reads refuse a varint that does not fit, instead of cutting it down") {
  auto enc = ByteWriter().varint(UINT32_MAX).varint(uint64_t{UINT32_MAX} + 8).varint(UINT16_MAX).varint(UINT16_MAX + 1).take();
  ByteReader r(enc);
  CHECK(r.u32() == UINT32_MAX);
  CHECK_FALSE(r.u32().has_value());  // 2^32 + 7 would otherwise read as 7
  CHECK(r.u16() == UINT16_MAX);
  CHECK_FALSE(r.u16().has_value());
  CHECK(r.done());
  ByteReader empty("");
  CHECK_FALSE(empty.u32().has_value());
}

TEST_CASE("a varint of more than 64 bits is malformed, not wrapped") {
  const std::string wide("\x87\x80\x80\x80\x80\x80\x80\x80\x80\x02", 10);  // 2^64 + 7
  CHECK_FALSE(ByteReader(wide).varint().has_value());
  CHECK_FALSE(ByteReader(wide).u32().has_value());  // not 7
  auto max = ByteWriter().varint(UINT64_MAX).take();
  CHECK(ByteReader(max).varint() == UINT64_MAX);
}
