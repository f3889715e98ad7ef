#include <tandem/messaging/relay.h>

#include <atomic>
#include <doctest/doctest.h>
#include <mutex>
#include <vector>

#include "test_util.h"

using namespace tandem;
using namespace tandem::messaging;

namespace {

// A transport whose behaviour the test scripts: answer, refuse, or stay silent.
class ScriptedTransport final : public Transport {
 public:
  enum class Mode { kAck, kNack, kSilent, kAckTwice };
  void send(const Envelope& env, AckFn ack) override {
    std::lock_guard lock(mu);
    sends.push_back(env.seq);
    sent_at.push_back(std::chrono::steady_clock::now());
    switch (mode) {
      case Mode::kAck: ack(Status::ok()); break;
      case Mode::kNack: ack(Status::unavailable("busy")); break;
      case Mode::kSilent: break;
      case Mode::kAckTwice:
        ack(Status::ok());
        ack(Status::ok());
        break;
    }
  }
  size_t count() {
    std::lock_guard lock(mu);
    return sends.size();
  }
  // Gaps between consecutive sends, in ms.
  std::vector<double> gaps_ms() {
    std::lock_guard lock(mu);
    std::vector<double> g;
    for (size_t i = 1; i < sent_at.size(); ++i)
      g.push_back(std::chrono::duration<double, std::milli>(sent_at[i] - sent_at[i - 1]).count());
    return g;
  }
  std::mutex mu;
  std::vector<uint64_t> sends;
  std::vector<std::chrono::steady_clock::time_point> sent_at;
  std::atomic<Mode> mode{Mode::kAck};
};

struct Fixture {
  std::unique_ptr<Env> env = make_real_env();
  std::unique_ptr<Executor> exec = env->make_executor("relay-test");
  ScriptedTransport transport;
  std::mutex mu;
  std::vector<std::string> acked;
  RelayOptions opts;
  std::unique_ptr<Relay> relay;
  explicit Fixture(RelayOptions o = {50'000, 1'000, 20'000}) : opts(o) {
    relay = std::make_unique<Relay>(*exec, transport, env->clock(), 1, opts, [this](const std::string& k) {
      std::lock_guard lock(mu);
      acked.push_back(k);
    });
  }
  ~Fixture() {
    relay->stop();
    exec.reset();
  }
  void add(const std::string& key, uint64_t seq) {
    Envelope e;
    e.seq = seq;
    exec->post([this, key, e] { relay->add(key, e); });
  }
  size_t acked_count() {
    std::lock_guard lock(mu);
    return acked.size();
  }
};

}  // namespace

TEST_CASE("an acknowledged row is reported once, even when the ack comes twice") {
  Fixture f;
  f.transport.mode = ScriptedTransport::Mode::kAckTwice;
  f.add("row-1", 1);
  REQUIRE(testing::wait_until([&] { return f.acked_count() == 1; }));
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  CHECK(f.acked_count() == 1);
  CHECK(f.transport.count() == 1);
}

TEST_CASE("a refused delivery is retried with backoff until it is acknowledged") {
  Fixture f;
  f.transport.mode = ScriptedTransport::Mode::kNack;
  f.add("row-1", 1);
  REQUIRE(testing::wait_until([&] { return f.transport.count() >= 3; }));
  CHECK(f.acked_count() == 0);
  f.transport.mode = ScriptedTransport::Mode::kAck;
  REQUIRE(testing::wait_until([&] { return f.acked_count() == 1; }));
}

TEST_CASE("a delivery that is never answered is sent again after the ack timeout") {
  Fixture f;
  f.transport.mode = ScriptedTransport::Mode::kSilent;
  f.add("row-1", 1);
  REQUIRE(testing::wait_until([&] { return f.transport.count() >= 2; }, std::chrono::seconds(5)));
  f.transport.mode = ScriptedTransport::Mode::kAck;
  REQUIRE(testing::wait_until([&] { return f.acked_count() == 1; }));
}

TEST_CASE("an unanswered row is sent again no sooner than its ack timeout, a refused one after its backoff") {
  SUBCASE("silent") {
    Fixture f;  // ack timeout 50 ms
    f.transport.mode = ScriptedTransport::Mode::kSilent;
    f.add("row-1", 1);
    REQUIRE(testing::wait_until([&] { return f.transport.count() >= 3; }, std::chrono::seconds(5)));
    for (double g : f.transport.gaps_ms()) CHECK(g >= 49.0);
  }
  SUBCASE("refused, with a backoff longer than the ack timeout") {
    Fixture f(RelayOptions{20'000, 150'000, 150'000});  // backoff 75-150 ms
    f.transport.mode = ScriptedTransport::Mode::kNack;
    f.add("row-1", 1);
    REQUIRE(testing::wait_until([&] { return f.transport.count() >= 3; }, std::chrono::seconds(5)));
    for (double g : f.transport.gaps_ms()) CHECK(g >= 74.0);  // the ack-timeout sweep left it alone
  }
}

TEST_CASE("acknowledged rows are not sent again when their ack deadline passes") {
  Fixture f;
  for (uint64_t i = 0; i < 100; ++i) f.add("row-" + std::to_string(i), i);
  REQUIRE(testing::wait_until([&] { return f.acked_count() == 100; }));
  std::this_thread::sleep_for(std::chrono::milliseconds(200));  // four ack timeouts
  CHECK(f.transport.count() == 100);
  f.transport.mode = ScriptedTransport::Mode::kSilent;
  f.add("row-late", 1000);
  REQUIRE(testing::wait_until([&] { return f.transport.count() >= 102; }, std::chrono::seconds(5)));
  CHECK(f.acked_count() == 100);
}

TEST_CASE("a delayed copy counts as in flight until the inner transport has it") {
  auto env = make_real_env();
  auto timers = env->make_executor("fault-timers");
  ScriptedTransport inner;
  FaultOptions fo;
  fo.duplicate = 1;  // every envelope three times
  fo.delay = 1;      // every copy delayed
  fo.max_delay_us = 200'000;
  FaultyTransport faulty(inner, *timers, fo);
  Envelope e;
  e.seq = 1;
  std::atomic<int> acks{0};
  faulty.send(e, [&](Status) { acks++; });
  // Every copy is counted somewhere: still in flight, or already with the inner transport (a
  // copy handed over between the two reads counts twice, never zero times).
  uint64_t pending = faulty.in_flight();
  CHECK(pending + inner.count() >= 3);
  CHECK(pending >= 1);
  REQUIRE(tandem::testing::wait_until([&] { return inner.count() == 3; }));
  CHECK(faulty.in_flight() == 0);
  CHECK(acks.load() == 3);
  timers.reset();
}
