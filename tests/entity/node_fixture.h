// A node with the test entities on a scratch directory, and a synchronous client call.
#pragma once

#include <future>
#include <memory>

#include <doctest/doctest.h>

#include <tandem/entity/node.h>

#include "test_entities.h"
#include "test_util.h"

namespace tt {

struct NodeFixture {
  tandem::testing::TempDir dir{"node"};
  std::unique_ptr<tandem::Env> env = tandem::make_real_env();
  tandem::entity::Registry registry;
  tandem::entity::NodeOptions opts;
  std::unique_ptr<tandem::entity::Node> node;

  NodeFixture() {
    registry.add<Counter>();
    registry.add<Stock>();
    registry.add<Buyer>({tandem::entity::Placement::Kind::kRange, 0});
    opts.data_dir = dir.str();
    opts.durability = "relaxed";
    opts.relay_backoff_min_ms = 1;
    opts.relay_backoff_max_ms = 20;
  }
  void start() {
    node = std::make_unique<tandem::entity::Node>(*env, registry, opts);
    auto s = node->start();
    REQUIRE_MESSAGE(s.is_ok(), s.to_string());
  }
  void restart() {
    node.reset();
    start();
  }

  template <class M, class F>
  tandem::entity::ClientReply call(const EntityRef& to, const std::string& idem, F&& fill) {
    return call_raw(to, idem, capnp::typeId<M>(), tandem::entity::build<M>(std::forward<F>(fill)));
  }
  tandem::entity::ClientReply call_raw(const EntityRef& to, const std::string& idem, uint64_t type,
                                       std::string payload) {
    auto p = std::make_shared<std::promise<tandem::entity::ClientReply>>();
    auto f = p->get_future();
    node->call(to, type, std::move(payload), "test-client", idem,
               [p](tandem::entity::ClientReply r) { p->set_value(std::move(r)); });
    REQUIRE(f.wait_for(std::chrono::seconds(20)) == std::future_status::ready);
    return f.get();
  }
  int64_t counter(const std::string& key) {
    int64_t v = -1;
    auto s = node->for_each_state("counter", [&](const std::string& k, tandem::entity::Payload& p) {
      if (k == key) v = p.get<CounterState>().getValue();
    });
    REQUIRE(s.is_ok());
    return v;
  }

};

}  // namespace tt
