// Tentative operations at the provider, driven envelope by envelope, and the escrow helper.
#include <doctest/doctest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <future>
#include <mutex>
#include <set>
#include <vector>

#include "engine.h"
#include "node_fixture.h"

using namespace tt;
using tandem::entity::Engine;
using tandem::entity::OpStatus;
using tandem::messaging::Envelope;
using tandem::messaging::Kind;

namespace {

// Captures what the engine sends to entity types it does not host, and acks it.
class Capture final : public tandem::messaging::Transport {
 public:
  void send(const Envelope& env, tandem::messaging::AckFn ack) override {
    {
      std::lock_guard lock(mu);
      if (seen.insert(env.seq).second) got.push_back(env);
    }
    ack(tandem::Status::ok());
  }
  std::vector<Envelope> snapshot() {
    std::lock_guard lock(mu);
    return got;
  }
  std::optional<Envelope> answer_for(uint64_t op, size_t nth = 0) {
    for (auto& e : snapshot())
      if (e.kind == Kind::kOpResult && e.correlation == op && nth-- == 0) return e;
    return std::nullopt;
  }
  std::mutex mu;
  std::set<uint64_t> seen;
  std::vector<Envelope> got;
};

struct EngineFixture : NodeFixture {
  Capture capture;
  std::unique_ptr<Engine> engine;
  uint64_t seq = 0;
  EntityRef buyer{"remote-buyer", "b1"};
  EntityRef stock{"stock", "s1"};

  void start_engine() {
    opts.inline_local = false;
    engine = std::make_unique<Engine>(*env, registry, opts);
    engine->set_remote_transport(&capture);
    auto s = engine->start();
    REQUIRE_MESSAGE(s.is_ok(), s.to_string());
    engine->call(stock, capnp::typeId<Add>(), tandem::entity::build<Add>([](Add::Builder b) { b.setN(10); }), "c",
                 "setup", [](tandem::entity::ClientReply) {});
  }
  // Delivers one envelope from the remote buyer as the relay would.
  void send(Kind kind, uint64_t op, uint64_t s, int64_t deadline_ms = 0) {
    Envelope e;
    e.from = buyer;
    e.to = stock;
    e.seq = s;
    e.kind = kind;
    e.correlation = op;
    e.payload_type = capnp::typeId<Hold>();
    if (kind == Kind::kTry) e.payload = tandem::entity::build<Hold>([](Hold::Builder b) { b.setQty(3); });
    e.deadline_ms = deadline_ms;
    engine->deliver(e, [](tandem::Status) {});
  }
  OpStatus await_answer(uint64_t op, size_t nth = 0) {
    std::optional<Envelope> a;
    REQUIRE(tandem::testing::wait_until([&] { return (a = capture.answer_for(op, nth)).has_value(); }));
    return static_cast<OpStatus>(a->status);
  }
  int64_t stock_left() {
    int64_t v = -1;
    tandem::testing::wait_until([&] { return engine->quiescent(); });
    auto prefix = engine->placement().entity_prefix(stock) + 's';
    auto row = engine->store().get(tandem::partition::Cf::kState, prefix);
    REQUIRE(row.is_ok());
    if (row->has_value()) {
      tandem::entity::Payload p(**row);
      v = p.get<StockState>().getStock();
    }
    return v;
  }
  int64_t far() { return env->clock().wall_ms() + 60'000; }
};

}  // namespace

TEST_CASE_FIXTURE(EngineFixture, "provider: try is accepted, a confirm after a cancel answers already-cancelled") {
  start_engine();
  send(Kind::kTry, 1, 1, far());
  CHECK(await_answer(1) == OpStatus::kAccepted);
  CHECK(stock_left() == 7);
  send(Kind::kCancel, 1, 2);
  CHECK(await_answer(1, 1) == OpStatus::kCancelled);
  CHECK(stock_left() == 10);
  send(Kind::kConfirm, 1, 3);
  CHECK(await_answer(1, 2) == OpStatus::kAlreadyCancelled);
  send(Kind::kConfirm, 1, 4);  // repeats answer the same
  CHECK(await_answer(1, 3) == OpStatus::kAlreadyCancelled);
  CHECK(stock_left() == 10);
}

TEST_CASE_FIXTURE(EngineFixture, "provider: a cancel after a confirm answers already-confirmed, on_confirm runs once") {
  start_engine();
  send(Kind::kTry, 5, 5, far());
  CHECK(await_answer(5) == OpStatus::kAccepted);
  send(Kind::kConfirm, 5, 6);
  CHECK(await_answer(5, 1) == OpStatus::kConfirmed);
  send(Kind::kCancel, 5, 7);
  CHECK(await_answer(5, 2) == OpStatus::kAlreadyConfirmed);
  send(Kind::kConfirm, 5, 8);
  CHECK(await_answer(5, 3) == OpStatus::kConfirmed);
  send(Kind::kConfirm, 5, 6);  // a duplicate delivery of the first confirm: dropped, no answer
  tandem::testing::wait_until([&] { return engine->quiescent(); });
  CHECK_FALSE(capture.answer_for(5, 4).has_value());
  CHECK(stock_left() == 7);
  CHECK(engine->stats().duplicates >= 1);
}

TEST_CASE_FIXTURE(EngineFixture, "provider: a cancel that overtakes its try makes the try answer already-cancelled") {
  start_engine();
  send(Kind::kCancel, 11, 12);
  CHECK(await_answer(11) == OpStatus::kCancelled);
  send(Kind::kTry, 11, 11, far());
  CHECK(await_answer(11, 1) == OpStatus::kAlreadyCancelled);
  CHECK(stock_left() == 10);  // on_try never ran
}

TEST_CASE_FIXTURE(EngineFixture, "provider: an accepted operation expires after deadline + grace and stock returns") {
  opts.op_grace_ms = 100;
  start_engine();
  send(Kind::kTry, 13, 13, env->clock().wall_ms() + 100);
  CHECK(await_answer(13) == OpStatus::kAccepted);
  CHECK(stock_left() == 7);
  CHECK(await_answer(13, 1) == OpStatus::kCancelled);  // sent by the expiry timer
  CHECK(stock_left() == 10);
  send(Kind::kConfirm, 13, 14);  // the requester's late confirm
  CHECK(await_answer(13, 2) == OpStatus::kAlreadyCancelled);
}

TEST_CASE_FIXTURE(EngineFixture, "provider: a try that arrives after its deadline is rejected") {
  start_engine();
  send(Kind::kTry, 21, 21, env->clock().wall_ms() - 1);
  CHECK(await_answer(21) == OpStatus::kRejected);
  CHECK(stock_left() == 10);
}

TEST_CASE_FIXTURE(NodeFixture, "escrow: all accepted -> all confirmed, one rejected -> accepted ones cancelled") {
  start();
  for (auto s : {"s1", "s2", "s3"})
    REQUIRE(call<Add>({"stock", s}, std::string("setup-") + s, [](Add::Builder b) { b.setN(5); }).status.is_ok());
  auto buy = [&](const std::string& idem, std::vector<std::string> providers, uint32_t qty) {
    auto r = call<Buy>({"buyer", idem}, idem, [&](Buy::Builder b) {
      auto l = b.initProviders(static_cast<unsigned>(providers.size()));
      for (unsigned i = 0; i < providers.size(); ++i) l.set(i, providers[i]);
      b.setQty(qty);
      b.setDeadlineMs(10'000);
    });
    REQUIRE(r.status.is_ok());
    tandem::entity::Payload p(r.payload);
    return static_cast<EscrowResult::Outcome>(p.get<Total>().getValue());
  };
  auto stock_of = [&](const std::string& key) {
    int64_t v = -1, held = -1;
    REQUIRE(tandem::testing::wait_until([&] { return node->idle(); }));
    REQUIRE(node->for_each_state("stock", [&](const std::string& k, tandem::entity::Payload& p) {
      if (k == key) {
        v = p.get<StockState>().getStock();
        held = p.get<StockState>().getHeld();
      }
    }).is_ok());
    CHECK(held == 0);
    return v;
  };
  CHECK(buy("b1", {"s1", "s2"}, 2) == EscrowResult::Outcome::kConfirmed);
  CHECK(stock_of("s1") == 3);
  CHECK(stock_of("s2") == 3);
  CHECK(buy("b2", {"s1", "s2", "s3"}, 4) == EscrowResult::Outcome::kCancelled);  // s1, s2 short
  CHECK(stock_of("s1") == 3);
  CHECK(stock_of("s2") == 3);
  CHECK(stock_of("s3") == 5);  // s3 accepted, then was cancelled
}

TEST_CASE_FIXTURE(EngineFixture, "escrow: when the deadline passes first every operation is cancelled") {
  start_engine();
  // The provider type is not hosted here: its try goes to the capture, which never answers.
  std::promise<tandem::entity::ClientReply> p;
  auto f = p.get_future();
  engine->call({"buyer", "late"}, capnp::typeId<Buy>(), tandem::entity::build<Buy>([](Buy::Builder b) {
                 b.initProviders(1).set(0, "far-away");
                 b.setProviderType("remote-stock");
                 b.setQty(1);
                 b.setDeadlineMs(150);
               }),
               "c", "late", [&](tandem::entity::ClientReply r) { p.set_value(std::move(r)); });
  REQUIRE(f.wait_for(std::chrono::seconds(10)) == std::future_status::ready);
  auto r = f.get();
  REQUIRE(r.status.is_ok());
  tandem::entity::Payload pl(r.payload);
  CHECK(static_cast<EscrowResult::Outcome>(pl.get<Total>().getValue()) == EscrowResult::Outcome::kCancelled);
  bool cancel_sent = false;
  REQUIRE(tandem::testing::wait_until([&] {
    for (auto& e : capture.snapshot()) cancel_sent |= e.kind == Kind::kCancel && e.to.type == "remote-stock";
    return cancel_sent;
  }));
}

TEST_CASE_FIXTURE(NodeFixture, "a group commit the fence refuses is not written, and the process stops (crash-only)") {
  pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    // The child: an engine whose fence refuses any group that writes counter "theirs".
    auto child_env = tandem::make_real_env();
    Engine e(*child_env, registry, opts);
    e.set_fence([](const std::vector<EntityRef>& touched) {
      for (auto& r : touched)
        if (r.key == "theirs") return tandem::Status::conflict("counter/theirs is owned by another node");
      return tandem::Status::ok();
    });
    if (!e.start()) std::_Exit(2);
    auto call = [&](const std::string& key) {
      std::promise<bool> done;
      e.call({"counter", key}, capnp::typeId<Add>(), tandem::entity::build<Add>([](Add::Builder b) { b.setN(1); }), "c",
             key, [&](tandem::entity::ClientReply r) { done.set_value(r.status.is_ok()); });
      return done.get_future().wait_for(std::chrono::seconds(10)) == std::future_status::ready;
    };
    if (!call("mine")) std::_Exit(3);
    call("theirs");  // the process stops inside this commit
    std::_Exit(4);
  }
  int st = 0;
  REQUIRE(waitpid(pid, &st, 0) == pid);
  REQUIRE(WIFEXITED(st));
  CHECK(WEXITSTATUS(st) == tandem::entity::kFencedExitCode);
  start();
  CHECK(counter("mine") == 1);
  CHECK(counter("theirs") == -1);  // nothing of the refused group reached the store
}
