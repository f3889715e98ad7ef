// Entities used by the runtime tests.
#pragma once

#include <atomic>
#include <stdexcept>
#include <string>

#include <tandem/entity/entity.h>

#include "test_messages.capnp.h"

namespace tt {

using tandem::EntityRef;
using tandem::entity::Context;
using tandem::entity::Decision;
using tandem::entity::EscrowResult;

inline std::atomic<int> g_boom{0};  // while > 0, Boom handlers throw

inline std::string text(capnp::Text::Reader t) { return std::string(t.cStr(), t.size()); }

class Counter final : public tandem::entity::Entity {
 public:
  static constexpr std::string_view kType = "counter";
  void handlers(tandem::entity::Handlers& h) override {
    h.on<Add>([](Context& ctx, Add::Reader m) {
      ctx.update_state<CounterState>([&](CounterState::Builder s) { s.setValue(s.getValue() + m.getN()); });
      if (m.getForwardTo().size() > 0) {
        std::string type = m.getForwardType().size() ? text(m.getForwardType()) : "counter";
        ctx.send<Add>(EntityRef{type, text(m.getForwardTo())}, [&](Add::Builder b) { b.setN(m.getN()); });
      }
      if (tandem::is_client(ctx.sender())) {
        auto v = ctx.state<CounterState>().getValue();
        ctx.reply<Total>([&](Total::Builder t) { t.setValue(v); });
      }
    });
    h.on<Boom>([](Context& ctx, Boom::Reader m) {
      ctx.update_state<CounterState>([&](CounterState::Builder s) { s.setValue(s.getValue() + m.getN()); });
      if (g_boom > 0) throw std::runtime_error("boom");
      ctx.reply<Total>([&](Total::Builder t) { t.setValue(m.getN()); });
    });
    h.on<Schedule>([](Context& ctx, Schedule::Reader m) {
      ctx.schedule<Tick>(m.getDelayMs(), [&](Tick::Builder t) { t.setN(m.getN()); });
      ctx.reply<Total>([](Total::Builder) {});
    });
    h.on<Tick>([](Context& ctx, Tick::Reader m) {
      ctx.update_state<CounterState>([&](CounterState::Builder s) { s.setValue(s.getValue() + m.getN()); });
    });
  }
};

class Stock final : public tandem::entity::Entity {
 public:
  static constexpr std::string_view kType = "stock";
  void handlers(tandem::entity::Handlers& h) override {
    h.on<Add>([](Context& ctx, Add::Reader m) {
      ctx.update_state<StockState>([&](StockState::Builder s) { s.setStock(s.getStock() + m.getN()); });
      ctx.reply<Total>([](Total::Builder) {});
    });
    h.on_try<Hold>([](Context& ctx, Hold::Reader m) {
      if (ctx.state<StockState>().getStock() < m.getQty()) return Decision::reject("short");
      ctx.update_state<StockState>([&](StockState::Builder s) {
        s.setStock(s.getStock() - m.getQty());
        s.setHeld(s.getHeld() + m.getQty());
      });
      return Decision::accept();
    });
    h.on_confirm<Hold>([](Context& ctx, Hold::Reader m) {
      ctx.update_state<StockState>([&](StockState::Builder s) {
        s.setHeld(s.getHeld() - m.getQty());
        s.setConfirmed(s.getConfirmed() + m.getQty());
      });
    });
    h.on_cancel<Hold>([](Context& ctx, Hold::Reader m) {
      ctx.update_state<StockState>([&](StockState::Builder s) {
        s.setHeld(s.getHeld() - m.getQty());
        s.setStock(s.getStock() + m.getQty());
      });
    });
  }
};

class Buyer final : public tandem::entity::Entity {
 public:
  static constexpr std::string_view kType = "buyer";
  void handlers(tandem::entity::Handlers& h) override {
    h.on<Buy>([](Context& ctx, Buy::Reader m) {
      uint64_t g = ctx.begin_escrow(m.getDeadlineMs());
      std::string type = m.getProviderType().size() ? text(m.getProviderType()) : "stock";
      for (auto p : m.getProviders())
        ctx.try_op<Hold>(g, EntityRef{type, text(p)}, [&](Hold::Builder b) { b.setQty(m.getQty()); });
      auto token = ctx.defer_reply();
      ctx.set_state<BuyState>([&](BuyState::Builder s) {
        s.setToken(capnp::Data::Reader(reinterpret_cast<const kj::byte*>(token.data()), token.size()));
      });
    });
    h.on_escrow_done([](Context& ctx, const EscrowResult& r) {
      std::string token;
      ctx.update_state<BuyState>([&](BuyState::Builder s) {
        s.setOutcome(static_cast<uint8_t>(r.outcome));
        s.setReason(r.reason);
        s.setDone(true);
        auto t = s.getToken();
        token.assign(reinterpret_cast<const char*>(t.begin()), t.size());
      });
      ctx.reply_to<Total>(token, [&](Total::Builder t) { t.setValue(static_cast<int64_t>(r.outcome)); });
    });
  }
};

}  // namespace tt
