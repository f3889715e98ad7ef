// The reservation demo's entities. Item holds stock and provides one Reserve operation per
// order line; Order tries every line, confirms all once all are accepted, and cancels the
// accepted ones when any is rejected or its deadline passes (the escrow helper does both).
#pragma once

#include <string>

#include <tandem/entity/entity.h>

#include "reservation.capnp.h"

namespace reservation {

class Item final : public tandem::entity::Entity {
 public:
  static constexpr std::string_view kType = "item";
  void handlers(tandem::entity::Handlers& h) override {
    using tandem::entity::Context;
    using tandem::entity::Decision;
    h.on<SetupItem>([](Context& ctx, SetupItem::Reader m) {
      if (!ctx.has_state()) {
        ctx.set_state<ItemState>([&](ItemState::Builder s) {
          s.setInitial(m.getStock());
          s.setStock(m.getStock());
        });
      }
      auto stock = ctx.state<ItemState>().getInitial();
      ctx.reply<SetupDone>([&](SetupDone::Builder b) { b.setStock(stock); });
    });
    h.on_try<Reserve>([](Context& ctx, Reserve::Reader m) {
      if (!ctx.has_state()) return Decision::reject("no such item");
      auto s = ctx.state<ItemState>();
      if (s.getStock() < m.getQty()) return Decision::reject("out of stock");
      ctx.update_state<ItemState>([&](ItemState::Builder b) {
        b.setStock(b.getStock() - m.getQty());
        b.setReserved(b.getReserved() + m.getQty());
      });
      return Decision::accept();
    });
    h.on_confirm<Reserve>([](Context& ctx, Reserve::Reader m) {
      ctx.update_state<ItemState>([&](ItemState::Builder b) {
        b.setReserved(b.getReserved() - m.getQty());
        b.setSold(b.getSold() + m.getQty());
      });
    });
    h.on_cancel<Reserve>([](Context& ctx, Reserve::Reader m) {
      ctx.update_state<ItemState>([&](ItemState::Builder b) {
        b.setReserved(b.getReserved() - m.getQty());
        b.setStock(b.getStock() + m.getQty());
      });
    });
  }
};

class Order final : public tandem::entity::Entity {
 public:
  static constexpr std::string_view kType = "order";
  void handlers(tandem::entity::Handlers& h) override {
    using tandem::entity::Context;
    using tandem::entity::EscrowResult;
    h.on<PlaceOrder>([](Context& ctx, PlaceOrder::Reader m) {
      if (ctx.has_state()) {
        // The order exists (placed under another idempotency key): answer with where it is.
        auto s = ctx.state<OrderState>();
        auto status = s.getStatus();
        ctx.reply<OrderResult>([&](OrderResult::Builder r) {
          r.setStatus(status);
          r.setReason("order already placed");
        });
        return;
      }
      if (m.getLines().size() == 0) {
        ctx.reply<OrderResult>([](OrderResult::Builder r) {
          r.setStatus(OrderStatus::CANCELLED);
          r.setReason("an order needs at least one line");
        });
        return;
      }
      uint64_t group = ctx.begin_escrow(m.getDeadlineMs() > 0 ? m.getDeadlineMs() : 10'000);
      for (auto line : m.getLines()) {
        std::string item(line.getItem().cStr(), line.getItem().size());
        ctx.try_op<Reserve>(group, tandem::EntityRef{"item", item},
                            [&](Reserve::Builder r) { r.setQty(line.getQty()); });
      }
      std::string token = ctx.defer_reply();
      ctx.set_state<OrderState>([&](OrderState::Builder s) {
        s.setStatus(OrderStatus::PENDING);
        s.setLines(m.getLines());
        s.setGroup(group);
        s.setReplyToken(capnp::Data::Reader(reinterpret_cast<const kj::byte*>(token.data()), token.size()));
      });
    });
    h.on_escrow_done([](Context& ctx, const EscrowResult& r) {
      OrderStatus status = r.outcome == EscrowResult::Outcome::kConfirmed   ? OrderStatus::CONFIRMED
                           : r.outcome == EscrowResult::Outcome::kCancelled ? OrderStatus::CANCELLED
                                                                            : OrderStatus::BROKEN;
      std::string token;
      ctx.update_state<OrderState>([&](OrderState::Builder s) {
        s.setStatus(status);
        s.setReason(r.reason);
        auto t = s.getReplyToken();
        token.assign(reinterpret_cast<const char*>(t.begin()), t.size());
      });
      ctx.reply_to<OrderResult>(token, [&](OrderResult::Builder b) {
        b.setStatus(status);
        b.setReason(r.reason);
      });
    });
  }
};

}  // namespace reservation
