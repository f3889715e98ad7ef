// Context: everything a handler may do. All of it becomes one atomic local transaction when
// the handler returns; if the handler throws, none of it happened and the message is retried.
// No I/O, no clocks, no globals: a handler sees only its own entity and its messages.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <capnp/message.h>
#include <tandem/core/ids.h>
#include <tandem/entity/payload.h>

namespace tandem::entity {

// The state of one tentative operation, as either partner sees it.
enum class OpStatus : uint8_t {
  kPending = 0,           // requester: try sent, no answer yet
  kAccepted = 1,          // provider reserved; requester may confirm or cancel
  kRejected = 2,
  kConfirmed = 3,
  kCancelled = 4,         // cancelled by the requester, or expired at the provider
  kAlreadyCancelled = 5,  // answer to a confirm that came after a cancel or expiry
  kAlreadyConfirmed = 6,  // answer to a cancel that came after a confirm
};
std::string_view op_status_name(OpStatus s);

// What this entity remembers about one partner (read-only view for handlers and tools).
struct ActivityInfo {
  EntityRef partner;
  uint64_t applied_watermark = 0;  // every seq up to here from the partner was applied
  uint64_t applied_above = 0;      // applied seqs above the watermark
  uint64_t last_sent_seq = 0;
  struct Op {
    uint64_t id;
    bool provider;  // true: this entity provides the operation; false: it requested it
    OpStatus status;
  };
  std::vector<Op> ops;
};

class Context {
 public:
  virtual ~Context() = default;

  virtual const EntityRef& self() const = 0;
  // The sender of the message being handled (a client partner for client requests).
  virtual const EntityRef& sender() const = 0;
  // The time at which this transition started (ms since the epoch), from the node's clock.
  virtual int64_t now_ms() const = 0;

  // ---- typed state: one Cap'n Proto struct per entity ----
  // The stored state, or a default (all-zero) struct when the entity has none yet.
  template <class S>
  typename S::Reader state() {
    return reader_for(raw_state()).template getRoot<S>();
  }
  bool has_state() { return raw_state().has_value(); }
  // Replaces the state with what `fill(S::Builder)` builds.
  template <class S, class F>
  void set_state(F&& fill) {
    put_state(build<S>(std::forward<F>(fill)));
  }
  // Copies the current state into a builder, lets `fn` change it, stores the result.
  template <class S, class F>
  void update_state(F&& fn) {
    capnp::MallocMessageBuilder mb(64);
    mb.setRoot(state<S>());
    fn(mb.getRoot<S>());
    put_state(to_bytes(mb));
  }
  virtual void delete_state() = 0;

  // ---- private key-value space of this entity ----
  virtual std::optional<std::string> kv_get(std::string_view key) = 0;
  virtual void kv_put(std::string_view key, std::string_view value) = 0;
  virtual void kv_del(std::string_view key) = 0;

  // ---- messages ----
  template <class M, class F>
  void send(const EntityRef& to, F&& fill) {
    send_raw(to, capnp::typeId<M>(), build<M>(std::forward<F>(fill)));
  }
  // Replies to the sender of the current request (entity or client).
  template <class M, class F>
  void reply(F&& fill) {
    reply_raw(current_reply_token(), capnp::typeId<M>(), build<M>(std::forward<F>(fill)));
  }
  // A token to reply to the current request later, from another transition of this entity.
  virtual std::string defer_reply() = 0;
  template <class M, class F>
  void reply_to(const std::string& token, F&& fill) {
    reply_raw(token, capnp::typeId<M>(), build<M>(std::forward<F>(fill)));
  }
  // Delivers M to this entity after `delay_ms` (a durable timer: it survives restarts).
  template <class M, class F>
  void schedule(int64_t delay_ms, F&& fill) {
    schedule_raw(delay_ms, capnp::typeId<M>(), build<M>(std::forward<F>(fill)));
  }

  // ---- tentative operations, all-or-nothing over several partners (escrow) ----
  // Starts a group that must be decided within `deadline_ms` from now. Returns its id.
  virtual uint64_t begin_escrow(int64_t deadline_ms) = 0;
  // Asks `provider` to tentatively accept M as part of `group`. Once every try of the group is
  // accepted the runtime confirms them all; when any is rejected, or the deadline passes first,
  // it cancels every one. The outcome reaches the entity's on_escrow_done handler.
  template <class M, class F>
  void try_op(uint64_t group, const EntityRef& provider, F&& fill) {
    try_raw(group, provider, capnp::typeId<M>(), build<M>(std::forward<F>(fill)));
  }

  // ---- activities ----
  virtual ActivityInfo activity(const EntityRef& partner) = 0;

  // ---- untyped forms (used by the templates above) ----
  virtual std::optional<std::string_view> raw_state() = 0;
  virtual void put_state(std::string bytes) = 0;
  virtual void send_raw(const EntityRef& to, uint64_t type, std::string payload) = 0;
  virtual void reply_raw(const std::string& token, uint64_t type, std::string payload) = 0;
  virtual void schedule_raw(int64_t delay_ms, uint64_t type, std::string payload) = 0;
  virtual void try_raw(uint64_t group, const EntityRef& provider, uint64_t type, std::string payload) = 0;
  virtual std::string current_reply_token() = 0;

 protected:
  // A reader over `bytes` (or an empty message) that lives until the handler returns.
  virtual capnp::MessageReader& reader_for(std::optional<std::string_view> bytes) = 0;
};

}  // namespace tandem::entity
