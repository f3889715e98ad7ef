// EtcdClient against a real etcd on loopback: reads, writes, compare-and-swap, leases and watch.
#include <doctest/doctest.h>

#include <atomic>
#include <future>
#include <thread>

#include <tandem/core/etcd.h>

#include "etcd_server.h"

using namespace tandem;

TEST_CASE("base64 round-trips every length and rejects malformed input") {
  std::string all;
  for (int i = 0; i < 256; ++i) all.push_back(static_cast<char>(i));
  for (size_t n = 0; n < 20; ++n) CHECK(base64_decode(base64_encode(all.substr(0, n))) == all.substr(0, n));
  CHECK(base64_decode(base64_encode(all)) == all);
  CHECK(base64_encode("hello") == "aGVsbG8=");
  CHECK_FALSE(base64_decode("abc").has_value());
  CHECK_FALSE(base64_decode("ab=c").has_value());
  CHECK_FALSE(base64_decode("a*==").has_value());
}

TEST_CASE("etcd addresses: host, port and key prefix, mistakes are named") {
  auto a = EtcdAddress::parse("etcd://127.0.0.1:2379/x/y/");
  REQUIRE(a.is_ok());
  CHECK(a->endpoint.port == 2379);
  CHECK(a->prefix == "/x/y");
  CHECK(EtcdAddress::parse("etcd://127.0.0.1:2379")->prefix == "/tandem");
  CHECK_FALSE(EtcdAddress::parse("http://127.0.0.1:2379").is_ok());
  CHECK_FALSE(EtcdAddress::parse("etcd://127.0.0.1").is_ok());
  CHECK_FALSE(EtcdAddress::parse("etcd://127.0.0.1:2379/").is_ok());
}

TEST_CASE("etcd client: put/get, create-if-absent, compare-and-swap, leases, watch") {
  testing::EtcdServer server;
  REQUIRE_MESSAGE(server.ok(), "etcd did not start (is etcd-server installed?)");
  EtcdClient c(*EtcdAddress::parse(server.url()));
  std::string k = c.key("map");
  CHECK(k == "/tandem/map");

  auto none = c.get(k);
  REQUIRE(none.is_ok());
  CHECK_FALSE(none->has_value());

  std::string binary("a\0b\xff", 4);
  auto rev = c.put(k, binary);
  REQUIRE(rev.is_ok());
  auto got = c.get(k);
  REQUIRE(got.is_ok());
  REQUIRE(got->has_value());
  CHECK((*got)->value == binary);
  CHECK((*got)->mod_revision == *rev);

  // Compare-and-swap on the mod revision, guarded by another key's value.
  auto stale = c.put_if(k, "x", *rev - 1);
  REQUIRE(stale.is_ok());
  CHECK_FALSE(stale->has_value());
  auto held = c.grant(30);
  REQUIRE(held.is_ok());
  CHECK(c.put(c.key("controller"), "1", *held).is_ok());
  auto wrong_guard = c.put_if(k, "x", *rev, c.key("controller"), *held + 1);
  REQUIRE(wrong_guard.is_ok());
  CHECK_FALSE(wrong_guard->has_value());
  auto swapped = c.put_if(k, "x", *rev, c.key("controller"), *held);
  REQUIRE(swapped.is_ok());
  REQUIRE(swapped->has_value());
  CHECK(c.get(k)->value().value == "x");

  // Create-if-absent with a lease; the key goes away with the lease.
  auto lease = c.grant(5);
  REQUIRE(lease.is_ok());
  std::optional<EtcdValue> cur;
  auto first = c.create(c.key("leader"), "1", *lease, &cur);
  REQUIRE(first.is_ok());
  CHECK(*first);
  auto second = c.create(c.key("leader"), "2", 0, &cur);
  REQUIRE(second.is_ok());
  CHECK_FALSE(*second);
  REQUIRE(cur.has_value());
  CHECK(cur->value == "1");
  CHECK(cur->lease == *lease);
  auto ttl = c.keepalive(*lease);
  REQUIRE(ttl.is_ok());
  CHECK(*ttl > 0);
  CHECK(c.revoke(*lease).is_ok());
  CHECK_FALSE(c.get(c.key("leader"))->has_value());
  auto gone = c.keepalive(*lease);
  REQUIRE(gone.is_ok());
  CHECK(*gone == 0);

  // Watch: every later put arrives, in order, then the watcher stops when told.
  std::atomic<bool> stop{false};
  std::vector<std::string> seen;
  auto from = c.get(k)->value().mod_revision + 1;
  auto w = std::async(std::launch::async, [&] {
    return c.watch(k, from, [&](const EtcdValue& v) { seen.push_back(v.value); return seen.size() < 3; },
                   [] { return true; }, stop);
  });
  for (auto v : {"p", "q", "r"}) CHECK(c.put(k, v).is_ok());
  REQUIRE(w.wait_for(std::chrono::seconds(10)) == std::future_status::ready);
  CHECK(w.get().is_ok());
  CHECK(seen == std::vector<std::string>{"p", "q", "r"});

  auto idle = std::async(std::launch::async, [&] { return c.watch(k, 0, [](const EtcdValue&) { return true; }, [] { return true; }, stop); });
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  stop = true;
  REQUIRE(idle.wait_for(std::chrono::seconds(5)) == std::future_status::ready);
  CHECK(idle.get().is_ok());
}

TEST_CASE("etcd client: an unreachable etcd is a clear error within the timeout, not a hang") {
  EtcdClient c(*EtcdAddress::parse("etcd://127.0.0.1:1/x"), 500);
  auto r = c.get("/x/map");
  REQUIRE_FALSE(r.is_ok());
  CHECK(r.status().message().find("etcd") != std::string::npos);
}
