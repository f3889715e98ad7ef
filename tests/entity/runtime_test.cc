#include <doctest/doctest.h>

#include <thread>

#include <tandem/partition/placement.h>
#include <tandem/partition/store.h>

#include "engine.h"
#include "node_fixture.h"
#include "records.h"
#include "row_keys.h"

using namespace tt;
using tandem::Code;
using tandem::entity::Payload;

namespace {
int64_t total_of(const tandem::entity::ClientReply& r) {
  REQUIRE_MESSAGE(r.status.is_ok(), r.status.to_string());
  Payload p(r.payload);
  return p.get<Total>().getValue();
}
// Adds n to counter "a", which forwards it to counter "b"; returns a's total.
int64_t add_forwarded(NodeFixture& f, int64_t n, const std::string& idem) {
  return total_of(f.call<Add>({"counter", "a"}, idem, [n](Add::Builder b) {
    b.setN(n);
    b.setForwardTo("b");
  }));
}
}  // namespace

TEST_CASE_FIXTURE(NodeFixture, "a client request is applied and answered, and a chained message reaches its entity") {
  start();
  CHECK(total_of(call<Add>({"counter", "a"}, "k1", [](Add::Builder b) {
          b.setN(5);
          b.setForwardTo("b");
        })) == 5);
  REQUIRE(tandem::testing::wait_until([&] { return node->idle(); }));
  CHECK(counter("a") == 5);
  CHECK(counter("b") == 5);
}

TEST_CASE_FIXTURE(NodeFixture, "a stopped node answers calls and the admin surface with unavailable") {
  start();
  CHECK(total_of(call<Add>({"counter", "a"}, "k1", [](Add::Builder b) { b.setN(2); })) == 2);
  node->stop();
  node->stop();  // idempotent
  auto r = call<Add>({"counter", "a"}, "k2", [](Add::Builder b) { b.setN(1); });
  CHECK(r.status.code() == tandem::Code::kUnavailable);
  CHECK(node->parked().status().code() == tandem::Code::kUnavailable);
  CHECK(node->parked_count().status().code() == tandem::Code::kUnavailable);
  CHECK(node->redrive("00").code() == tandem::Code::kUnavailable);
  CHECK(node->activities({"counter", "a"}).status().code() == tandem::Code::kUnavailable);
  CHECK(node->for_each_state("counter", [](const std::string&, tandem::entity::Payload&) {}).code() ==
        tandem::Code::kUnavailable);
  CHECK(node->idle());
  CHECK(node->stats().applied >= 1);
  restart();  // and nothing committed was lost
  CHECK(counter("a") == 2);
}

TEST_CASE_FIXTURE(NodeFixture, "stop() while other threads call the node and its admin surface: every call answered, no crash") {
  start();
  constexpr int kThreads = 3, kMaxCalls = 200'000;  // each caller runs until told to stop (bounded)
  std::atomic<bool> done{false};
  std::atomic<int> issued{0}, answered{0}, ok{0}, after_stop{0};
  std::atomic<int> odd{0};  // answers other than ok and unavailable
  std::atomic<bool> stopped{false};
  std::vector<std::atomic<int>> oks(kThreads);
  std::vector<std::thread> callers;
  for (int t = 0; t < kThreads; ++t)
    callers.emplace_back([&, t] {
      std::string key = "c" + std::to_string(t);
      for (int i = 0; i < kMaxCalls && !done; ++i) {
        if (stopped) ++after_stop;
        ++issued;
        node->call<Add>({"counter", key}, "test-client", key + "-" + std::to_string(i), [](Add::Builder b) { b.setN(1); },
                        [&, t](tandem::entity::ClientReply r) {
                          if (r.status.is_ok()) ++ok, ++oks[t];
                          else if (r.status.code() != Code::kUnavailable) ++odd;
                          ++answered;
                        });
        if (i % 16 == 0) {
          (void)node->idle();
          (void)node->parked_count();
          (void)node->activities({"counter", key});
          (void)node->for_each_state("counter", [](const std::string&, Payload&) {});
        }
      }
    });
  bool busy = tandem::testing::wait_until([&] { return ok >= 300; }, std::chrono::seconds(30));
  node->stop();
  stopped = true;
  // The callers go on against the stopped node for a while, then stop.
  tandem::testing::wait_until([&] { return after_stop >= 300; }, std::chrono::seconds(10));
  done = true;
  for (auto& c : callers) c.join();
  REQUIRE(busy);
  CHECK(after_stop >= 300);
  CHECK(answered == issued);  // the ones waiting at stop() were answered unavailable
  CHECK(odd == 0);
  CHECK(node->parked().status().code() == Code::kUnavailable);
  restart();  // every call answered ok was applied (one answered unavailable may have been too)
  for (int t = 0; t < kThreads; ++t) CHECK(counter("c" + std::to_string(t)) >= oks[t]);
}

TEST_CASE_FIXTURE(NodeFixture, "every delivery duplicated 3 times and reordered: each effect is applied once") {
  opts.inline_local = false;  // every message through outbox, relay and the faulty transport
  opts.faults.duplicate = 1.0;
  opts.faults.max_copies = 3;
  opts.faults.delay = 0.7;
  opts.faults.max_delay_us = 5000;
  start();
  constexpr int kN = 300;
  std::atomic<int> answered{0};
  for (int i = 0; i < kN; ++i) {
    node->call<Add>({"counter", "a"}, "test-client", "req-" + std::to_string(i),
                    [](Add::Builder b) {
                      b.setN(1);
                      b.setForwardTo("b");
                    },
                    [&](tandem::entity::ClientReply r) {
                      CHECK(r.status.is_ok());
                      ++answered;
                    });
  }
  REQUIRE(tandem::testing::wait_until([&] { return answered == kN; }, std::chrono::seconds(30)));
  REQUIRE(tandem::testing::wait_until([&] { return node->idle(); }, std::chrono::seconds(30)));
  CHECK(counter("a") == kN);
  CHECK(counter("b") == kN);
  auto st = node->stats();
  CHECK(st.duplicates >= kN);  // at least one extra copy of each forwarded message was refused
  CHECK(st.outbox_depth == 0);
  auto acts = node->activities({"counter", "b"});
  REQUIRE(acts.is_ok());
  REQUIRE(acts->size() == 1);
  CHECK(acts->front().partner == EntityRef{"counter", "a"});
  CHECK(acts->front().applied_watermark == kN);
}

TEST_CASE_FIXTURE(NodeFixture, "a client retry with the same idempotency key gets the same reply, applied once") {
  start();
  CHECK(total_of(call<Add>({"counter", "c"}, "same", [](Add::Builder b) { b.setN(5); })) == 5);
  CHECK(total_of(call<Add>({"counter", "c"}, "same", [](Add::Builder b) { b.setN(5); })) == 5);
  CHECK(total_of(call<Add>({"counter", "c"}, "other", [](Add::Builder b) { b.setN(1); })) == 6);
  restart();  // the stored reply survives a restart
  CHECK(total_of(call<Add>({"counter", "c"}, "same", [](Add::Builder b) { b.setN(5); })) == 5);
  CHECK(counter("c") == 6);
}

TEST_CASE_FIXTURE(NodeFixture, "the same idempotency key sent to different entities is two requests, each answered") {
  start();
  std::promise<int64_t> a, b;
  node->call<Add>({"counter", "ka"}, "test-client", "shared-key", [](Add::Builder m) { m.setN(5); },
                  [&](tandem::entity::ClientReply r) { a.set_value(total_of(r)); });
  node->call<Add>({"counter", "kb"}, "test-client", "shared-key", [](Add::Builder m) { m.setN(7); },
                  [&](tandem::entity::ClientReply r) { b.set_value(total_of(r)); });
  CHECK(a.get_future().get() == 5);
  CHECK(b.get_future().get() == 7);
  CHECK(counter("ka") == 5);
  CHECK(counter("kb") == 7);
}

TEST_CASE_FIXTURE(NodeFixture, "a reused idempotency key with a different payload is refused and changes nothing") {
  start();
  CHECK(total_of(call<Add>({"counter", "d"}, "k", [](Add::Builder b) { b.setN(5); })) == 5);
  auto r = call<Add>({"counter", "d"}, "k", [](Add::Builder b) { b.setN(7); });
  CHECK(r.status.code() == Code::kInvalidArgument);
  CHECK(r.status.message().find("already used with a different request") != std::string::npos);
  CHECK(counter("d") == 5);
}

TEST_CASE_FIXTURE(NodeFixture, "a throwing handler writes nothing, is retried, parked after N attempts, and re-driven") {
  opts.max_attempts = 3;
  start();
  g_boom = 1;
  auto r = call<Boom>({"counter", "e"}, "boom-1", [](Boom::Builder b) { b.setN(1000); });
  CHECK_FALSE(r.status.is_ok());
  CHECK(r.status.message().find("parked") != std::string::npos);
  CHECK(counter("e") == -1);  // nothing written: the state update happened before the throw
  CHECK(node->stats().failures == 3);
  auto parked = node->parked();
  REQUIRE(parked.is_ok());
  REQUIRE(parked->size() == 1);
  CHECK(parked->front().to == EntityRef{"counter", "e"});
  CHECK(parked->front().reason.find("boom") != std::string::npos);
  g_boom = 0;
  REQUIRE(node->redrive(parked->front().id).is_ok());
  REQUIRE(tandem::testing::wait_until([&] { return counter("e") == 1000; }));
  CHECK(node->parked()->empty());
  CHECK(node->redrive(parked->front().id).code() == Code::kNotFound);
  CHECK(node->redrive("zz-not-an-id").code() == Code::kInvalidArgument);
}

TEST_CASE_FIXTURE(NodeFixture, "bad input: unknown type, unknown message, long key, malformed payload") {
  start();
  auto r1 = call<Add>({"ghost", "x"}, "b1", [](Add::Builder b) { b.setN(1); });
  CHECK(r1.status.code() == Code::kInvalidArgument);
  CHECK(r1.status.message() == "unknown entity type 'ghost'");

  auto r2 = call<Unhandled>({"counter", "x"}, "b2", [](Unhandled::Builder b) { b.setX(1); });
  CHECK(r2.status.code() == Code::kInvalidArgument);
  CHECK(r2.status.message().find("has no handler for message type") != std::string::npos);

  auto r3 = call<Add>({"counter", std::string(5000, 'k')}, "b3", [](Add::Builder b) { b.setN(1); });
  CHECK(r3.status.code() == Code::kInvalidArgument);
  CHECK(r3.status.message().find("key too long") != std::string::npos);

  auto r4 = call_raw({"counter", "x"}, "b4", capnp::typeId<Add>(), "garbage!");
  CHECK_FALSE(r4.status.is_ok());
  CHECK(r4.status.message().find("malformed payload") != std::string::npos);

  // An entity that sends to an unknown type: its own effect commits, the message is parked.
  CHECK(total_of(call<Add>({"counter", "y"}, "b5", [](Add::Builder b) {
          b.setN(2);
          b.setForwardTo("z");
          b.setForwardType("ghost");
        })) == 2);
  REQUIRE(tandem::testing::wait_until([&] { return node->parked()->size() == 2; }));
  bool found = false;
  auto parked = node->parked();
  REQUIRE(parked.is_ok());
  for (auto& p : *parked) found |= p.reason == "unknown entity type 'ghost'";
  CHECK(found);
  CHECK(counter("x") == -1);
  CHECK(counter("y") == 2);
}

TEST_CASE_FIXTURE(NodeFixture, "a durable timer fires after a restart") {
  start();
  // Due far enough ahead that a slow restart (a sanitizer build) still finds it pending.
  CHECK(call<Schedule>({"counter", "t"}, "s1", [](Schedule::Builder b) {
          b.setDelayMs(1500);
          b.setN(7);
        }).status.is_ok());
  restart();
  CHECK(node->stats().timers == 1);
  REQUIRE(tandem::testing::wait_until([&] { return counter("t") == 7; }));
  restart();
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  CHECK(counter("t") == 7);  // fired once, not again after another restart
  CHECK(node->stats().timers == 0);
}

TEST_CASE_FIXTURE(NodeFixture, "a call to a node that is not running is answered unavailable, not left hanging") {
  node = std::make_unique<tandem::entity::Node>(*env, registry, opts);
  auto r = call<Add>({"counter", "a"}, "k", [](Add::Builder b) { b.setN(1); });
  CHECK(r.status.code() == Code::kUnavailable);
  start();
  node->stop();
  r = call<Add>({"counter", "a"}, "k", [](Add::Builder b) { b.setN(1); });
  CHECK(r.status.code() == Code::kUnavailable);
}

TEST_CASE_FIXTURE(NodeFixture, "bad options are refused at start") {
  opts.durability = "fast";
  node = std::make_unique<tandem::entity::Node>(*env, registry, opts);
  auto s = node->start();
  CHECK(s.code() == Code::kInvalidArgument);
  CHECK(s.message().find("unknown durability") != std::string::npos);
}

TEST_CASE_FIXTURE(NodeFixture, "backpressure: at the outbox cap new calls get an explicit busy answer, after recovery they go through") {
  opts.inline_local = false;
  opts.faults.drop = 1.0;  // no delivery arrives: every forwarded message stays in the outbox
  opts.max_outbox = 10;
  start();
  int accepted = 0, busy = 0;
  for (int i = 0; i < 40; ++i) {
    auto r = call<Add>({"counter", "src-" + std::to_string(i)}, "bp-" + std::to_string(i), [](Add::Builder b) {
      b.setN(1);
      b.setForwardTo("dst");
    });
    if (r.status.is_ok()) {
      ++accepted;
    } else {
      CHECK(r.status.code() == Code::kOverloaded);
      CHECK(r.status.message().find("busy") != std::string::npos);
      ++busy;
    }
  }
  CHECK(accepted >= 10);
  CHECK(accepted <= 12);  // the cap is checked at admission: one call in flight may pass it
  CHECK(busy == 40 - accepted);
  CHECK(node->stats().busy == static_cast<uint64_t>(busy));
  CHECK(node->stats().outbox_depth <= 12);
  // The receiver recovers (here: the faults go away with a restart); the outbox drains and new
  // calls are accepted again; nothing accepted was lost.
  opts.faults.drop = 0;
  restart();
  REQUIRE(tandem::testing::wait_until([&] { return node->idle(); }, std::chrono::seconds(20)));
  CHECK(counter("dst") == accepted);
  auto again = call<Add>({"counter", "src-late"}, "bp-late", [](Add::Builder b) { b.setN(1); });
  CHECK(again.status.is_ok());
}

TEST_CASE("expired_client_reply names answered client replies past their retention, and no other row") {
  tandem::partition::Placement pl;
  pl.set_scheme("counter", {tandem::partition::TypeScheme::Kind::kHash, 256});
  std::string prefix = pl.entity_prefix({"counter", "c1"});
  std::string client_base = tandem::entity::rows::partner(prefix, {std::string(tandem::kClientType), "app"});
  std::string reply_key = tandem::entity::rows::client_reply(client_base, "idem-1");
  tandem::entity::ReplyRow done;
  done.done = true;
  done.expires_ms = 1000;
  tandem::entity::ReplyRow pending = done;
  pending.done = false;
  using tandem::entity::expired_client_reply;
  CHECK(expired_client_reply(pl, reply_key, done.encode(), 1000));
  CHECK(expired_client_reply(pl, reply_key, done.encode(), 5000));
  CHECK_FALSE(expired_client_reply(pl, reply_key, done.encode(), 999));      // still retained
  CHECK_FALSE(expired_client_reply(pl, reply_key, pending.encode(), 5000));  // not answered yet
  CHECK_FALSE(expired_client_reply(pl, reply_key, "garbage", 5000));
  // The same shape under an entity partner is not a client reply, nor is a dedup record.
  std::string entity_base = tandem::entity::rows::partner(prefix, {"counter", "app"});
  CHECK_FALSE(expired_client_reply(pl, tandem::entity::rows::client_reply(entity_base, "idem-1"), done.encode(), 5000));
  CHECK_FALSE(expired_client_reply(pl, tandem::entity::rows::dedup(client_base), done.encode(), 5000));
  CHECK_FALSE(expired_client_reply(pl, tandem::entity::rows::state(prefix), done.encode(), 5000));
  CHECK_FALSE(expired_client_reply(pl, "", done.encode(), 5000));
}

// The rows a real node writes, compacted with the hook a node installs.
TEST_CASE_FIXTURE(NodeFixture, "a compaction drops the client replies a node wrote once their retention has passed") {
  // The compaction's clock is chosen between the old replies' expiry and the fresh one's, so
  // the test does not depend on how long anything takes.
  const int64_t retention = 3600'000;
  opts.reply_retention_ms = retention;
  auto wall_ms = [] {
    return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
        .count();
  };
  start();
  for (int i = 0; i < 5; ++i)
    CHECK(total_of(call<Add>({"counter", "r"}, "old-" + std::to_string(i), [](Add::Builder b) { b.setN(1); })) == i + 1);
  int64_t old_done = wall_ms();
  std::this_thread::sleep_for(std::chrono::milliseconds(5));
  int64_t fresh_sent = wall_ms();
  REQUIRE(fresh_sent - old_done >= 2);
  CHECK(total_of(call<Add>({"counter", "r"}, "fresh", [](Add::Builder b) { b.setN(1); })) == 6);
  node.reset();

  auto pl = tandem::entity::placement_of(registry);
  auto count_replies = [&](tandem::partition::Store& st) {
    int n = 0;
    REQUIRE(st.scan(tandem::partition::Cf::kActivity, "", "", [&](std::string_view k, std::string_view v) {
                if (tandem::entity::expired_client_reply(pl, k, v, INT64_MAX)) ++n;  // every answered reply
                return true;
              }).is_ok());
    return n;
  };
  tandem::partition::StoreOptions so{dir.str(), tandem::partition::Durability::kStrict};
  // The hook a node installs, its clock past every old reply's expiry and before the fresh one's.
  so.drop_on_compaction = tandem::entity::expired_reply_dropper(
      pl, std::make_shared<std::atomic<int64_t>>(fresh_sent + retention - 1));
  {
    auto st = tandem::partition::Store::open(so);
    REQUIRE(st.is_ok());
    CHECK(count_replies(**st) == 6);
    REQUIRE((*st)->compact(tandem::partition::Cf::kActivity).is_ok());
    CHECK(count_replies(**st) == 1);  // the fresh one stays
  }
  start();  // the node reads the same state back; the fresh reply still answers its retry
  CHECK(counter("r") == 6);
  CHECK(total_of(call<Add>({"counter", "r"}, "fresh", [](Add::Builder b) { b.setN(1); })) == 6);
}

TEST_CASE_FIXTURE(NodeFixture, "an acknowledged outbox row's delete waits for the next group instead of a commit of its own") {
  opts.inline_local = false;           // the forwarded message goes through an outbox row
  opts.ack_delete_linger_ms = 60'000;  // longer than the test: only other groups write the delete
  start();
  CHECK(add_forwarded(*this, 5, "k1") == 5);
  REQUIRE(tandem::testing::wait_until([&] { return counter("b") == 5 && node->stats().outbox_depth == 0; }));
  uint64_t commits = node->stats().commits;
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  CHECK(node->stats().commits == commits);  // the ack alone wrote nothing
  CHECK_FALSE(node->idle());                // the delete waits in the open group

  // The next transition's group takes the delete along: one commit, and nothing is pending.
  CHECK(total_of(call<Add>({"counter", "c"}, "k2", [](Add::Builder b) { b.setN(1); })) == 1);
  REQUIRE(tandem::testing::wait_until([&] { return node->idle(); }));
  CHECK(node->stats().commits == commits + 1);
  restart();
  REQUIRE(tandem::testing::wait_until([&] { return node->idle(); }));
  CHECK(node->stats().duplicates == 0);  // the row was gone: nothing sent again
  CHECK(counter("b") == 5);
}

TEST_CASE_FIXTURE(NodeFixture, "deletes of acknowledged rows are written after the linger on an idle node, and at a clean stop") {
  opts.inline_local = false;
  bool stop_first = false;
  SUBCASE("the linger passes") { opts.ack_delete_linger_ms = 20; }
  SUBCASE("the node stops first") {
    opts.ack_delete_linger_ms = 60'000;
    stop_first = true;
  }
  start();
  CHECK(add_forwarded(*this, 2, "k1") == 2);
  if (stop_first) {
    REQUIRE(tandem::testing::wait_until([&] { return counter("b") == 2 && node->stats().outbox_depth == 0; }));
    CHECK_FALSE(node->idle());  // the delete waits; stop() writes it
  } else {
    REQUIRE(tandem::testing::wait_until([&] { return node->idle(); }, std::chrono::seconds(5)));
  }
  restart();
  REQUIRE(tandem::testing::wait_until([&] { return node->idle(); }));
  CHECK(node->stats().duplicates == 0);  // no row was left to send again
  CHECK(counter("b") == 2);
}
