#include <tandem/core/key_codec.h>

#include <algorithm>
#include <doctest/doctest.h>
#include <vector>

#include <tandem/core/env.h>
#include <tandem/core/ids.h>

using namespace tandem;

namespace {
std::string enc(const std::vector<std::string>& parts) {
  std::string out;
  for (auto& p : parts) keys::append_bytes(out, p);
  return out;
}
std::string random_bytes(Random& r) {
  std::string s(r.uniform(6), '\0');
  for (auto& c : s) c = static_cast<char>(r.uniform(4) == 0 ? 0 : r.uniform(256));  // many zero bytes
  return s;
}
}  // namespace

TEST_CASE("encoded byte strings sort like the tuples they encode") {
  Random r(7);
  for (int i = 0; i < 20000; ++i) {
    std::vector<std::string> a{random_bytes(r), random_bytes(r)}, b{random_bytes(r), random_bytes(r)};
    auto ea = enc(a), eb = enc(b);
    CHECK((a < b) == (ea < eb));
    CHECK((a == b) == (ea == eb));
  }
}

TEST_CASE("no encoded byte string is a prefix of another") {
  Random r(11);
  for (int i = 0; i < 20000; ++i) {
    std::string a = random_bytes(r), b = random_bytes(r);
    if (a == b) continue;
    auto ea = enc({a}), eb = enc({b});
    CHECK(eb.rfind(ea, 0) != 0);
  }
}

TEST_CASE("a reader decodes what was appended, and refuses truncated input") {
  std::string k;
  keys::append_bytes(k, std::string("a\0b", 3));
  keys::append_u16(k, 513);
  keys::append_u64(k, 0x0102030405060708ull);
  keys::Reader r(k);
  CHECK(*r.bytes() == std::string("a\0b", 3));
  CHECK(*r.u16() == 513);
  CHECK(*r.u64() == 0x0102030405060708ull);
  CHECK(r.done());
  keys::Reader truncated(std::string_view(k).substr(0, 3));
  CHECK_FALSE(truncated.bytes().has_value());
  const std::string bad_bytes("x\0\x07", 3);  // 0x00 followed by neither 0xFF nor 0x01
  keys::Reader bad(bad_bytes);
  CHECK_FALSE(bad.bytes().has_value());
}

TEST_CASE("big-endian integers keep numeric order") {
  std::string a, b;
  keys::append_u64(a, 255);
  keys::append_u64(b, 256);
  CHECK(a < b);
}

TEST_CASE("prefix_successor bounds every key with the prefix") {
  CHECK(keys::prefix_successor("ab") == "ac");
  CHECK(keys::prefix_successor(std::string("a\xFF", 2)) == "b");
  CHECK(keys::prefix_successor(std::string("\xFF\xFF", 2)).empty());
}

TEST_CASE("entity refs are validated: empty type, long type, long key") {
  CHECK(validate_ref({"item", "k"}).is_ok());
  CHECK(validate_ref({"", "k"}).code() == Code::kInvalidArgument);
  CHECK(validate_ref({std::string(65, 't'), "k"}).code() == Code::kInvalidArgument);
  auto s = validate_ref({"item", std::string(kMaxEntityKeyBytes + 1, 'k')});
  CHECK(s.code() == Code::kInvalidArgument);
  CHECK(s.message().find("key too long") != std::string::npos);
}
