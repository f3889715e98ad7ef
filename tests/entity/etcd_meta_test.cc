#include <doctest/doctest.h>

#include <atomic>
#include <future>
#include <thread>

#include <tandem/core/env.h>

#include "etcd_meta.h"
#include "etcd_server.h"

using namespace std::chrono_literals;

namespace tandem::entity {

// stop() used to null the keeper before its executor waited for the running tick, which then
// re-posted itself through the null pointer (seen as a UBSan report in a paused-source test).
TEST_CASE("etcd metadata: stop() during a tick waits for it, and no hook runs after stop() returned") {
  testing::EtcdServer server;
  REQUIRE_MESSAGE(server.ok(), "etcd did not start (is etcd-server installed?)");
  auto env = make_real_env();
  auto addr = *EtcdAddress::parse(server.url());

  EtcdMeta first(*env, addr, 1);
  REQUIRE(first.start({}).is_ok());  // node 1 holds the controller role

  EtcdMeta second(*env, addr, 2);
  std::promise<void> in_hook;
  std::atomic<bool> took{false}, stopped{false};
  std::atomic<int> after_stop{0};
  EtcdMeta::Hooks hooks;
  hooks.on_controller = [&](uint32_t c) {
    if (stopped) ++after_stop;
    if (c != 2 || took.exchange(true)) return;
    in_hook.set_value();
    std::this_thread::sleep_for(300ms);  // the test thread calls stop() meanwhile; the tick goes on after this
  };
  REQUIRE(second.start(hooks).is_ok());
  first.release();  // the role passes to node 2 at its next tick, inside which the hook runs
  REQUIRE(in_hook.get_future().wait_for(10s) == std::future_status::ready);
  second.stop();
  stopped = true;
  std::this_thread::sleep_for(1200ms);  // more than two ticks
  CHECK(took);
  CHECK(after_stop == 0);
}

}  // namespace tandem::entity
