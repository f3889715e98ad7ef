// The demo driver as a library, against an in-process node: replies that come after the driver
// has stopped waiting for them must find nothing to touch.
#include <doctest/doctest.h>

#include <mutex>
#include <set>
#include <vector>

#include <tandem/core/env.h>
#include <tandem/entity/node.h>

#include "driver.h"
#include "entities.h"
#include "test_util.h"

// Under ASan, a callback that reaches a returned function's frame is reported (GCC's ASan keeps
// such frames on a fake stack only when asked to).
extern "C" const char* __asan_default_options() { return "detect_stack_use_after_return=1"; }

namespace {

using tandem::entity::ClientReply;

// Forwards to a node, but holds back the answer of every repeated call (the driver's retries,
// same idempotency key) until release(): the second answer of a retried order, late.
class LateRepeats final : public tandem::entity::Gateway {
 public:
  explicit LateRepeats(tandem::entity::Gateway& inner) : inner_(inner) {}
  void call(const tandem::EntityRef& to, uint64_t type, std::string payload, const std::string& client_id,
            const std::string& key, std::function<void(ClientReply)> done) override {
    bool repeat = false;
    {
      std::lock_guard lock(mu_);
      repeat = !seen_.insert(key).second && key != "setup";
    }
    if (!repeat) return inner_.call(to, type, std::move(payload), client_id, key, std::move(done));
    inner_.call(to, type, std::move(payload), client_id, key, [this, done = std::move(done)](ClientReply r) {
      std::lock_guard lock(mu_);
      held_.emplace_back(std::move(done), std::move(r));
    });
  }
  // Runs the held callbacks on this thread; returns how many.
  size_t release() {
    std::vector<std::pair<std::function<void(ClientReply)>, ClientReply>> held;
    {
      std::lock_guard lock(mu_);
      held.swap(held_);
    }
    for (auto& [done, r] : held) done(std::move(r));
    return held.size();
  }
  tandem::Status for_each_state(const std::string& type,
                                const std::function<void(const std::string&, tandem::entity::Payload&)>& fn) override {
    return inner_.for_each_state(type, fn);
  }
  tandem::Result<bool> quiescent() override { return inner_.quiescent(); }
  tandem::Result<uint64_t> parked_count() override { return inner_.parked_count(); }
  tandem::Result<uint64_t> pending_timers() override { return inner_.pending_timers(); }
  size_t nodes() const override { return inner_.nodes(); }

 private:
  tandem::entity::Gateway& inner_;
  std::mutex mu_;
  std::set<std::string> seen_;
  std::vector<std::pair<std::function<void(ClientReply)>, ClientReply>> held_;
};

}  // namespace

TEST_CASE("a retried order's second answer after the driver returned is ignored") {
  tandem::testing::TempDir dir("driver");
  auto env = tandem::make_real_env();
  tandem::entity::Registry reg;
  reg.add<reservation::Order>();
  reg.add<reservation::Item>();
  tandem::entity::NodeOptions no;
  no.data_dir = dir.sub("data");
  tandem::entity::Node node(*env, reg, no);
  REQUIRE(node.start());
  LateRepeats gw(node);

  reservation::DemoOptions o;
  o.orders = 300;
  o.items = 20;
  o.concurrency = 32;
  o.reply_timeout_ms = 1;  // retries galore: most orders are placed at least twice
  o.quiesce_timeout_ms = 60'000;
  o.progress = false;
  size_t held = 0;
  {
    auto r = reservation::run_demo(gw, env->clock(), o);
    CHECK(r.invariant == "ok");
    CHECK(r.retries > 0);
    // The driver's stack frame is gone: the held answers must not reach it (ASan runs this test
    // with detect_stack_use_after_return=1).
    held = gw.release();
  }
  CHECK(held > 0);
  node.stop();
}
