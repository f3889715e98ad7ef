// Transition: one message applied to one entity in one transaction. It is the Context the
// handler sees; it stages every effect in a partition::Txn and, when the handler returns,
// finishes the transaction (dedup marks, sequence numbers, outbox rows or in-memory handoffs).
#pragma once

#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <capnp/serialize.h>

#include <tandem/entity/context.h>
#include <tandem/entity/entity.h>
#include <tandem/entity/node.h>
#include <tandem/messaging/envelope.h>
#include <tandem/partition/store.h>

#include "records.h"

namespace tandem::entity {

class Engine;

class Transition final : public Context {
 public:
  enum class Result : uint8_t { kApplied, kDuplicate, kFailed, kPark, kRefused };

  Transition(Engine& engine, const Registry::Type& type, const messaging::Envelope& env, int64_t now_ms);
  ~Transition() override;

  // Runs the message. On kApplied / kDuplicate the caller applies txn(); on kFailed / kPark
  // it discards it; `reason()` says why. kRefused: a client request refused without effect.
  Result run();
  partition::Txn& txn() { return txn_; }
  const std::string& reason() const { return reason_; }
  // Envelopes this transition sends (seq assigned) and the client replies it produced.
  std::vector<messaging::Envelope>& outputs() { return outputs_; }
  struct ClientOut {
    std::string client_id, idem;
    ClientReply reply;
  };
  std::vector<ClientOut>& client_outputs() { return client_outputs_; }
  struct TimerOut {
    int64_t due_ms;
    std::string key;
  };
  std::vector<TimerOut>& timers() { return timers_out_; }
  // Timer rows this transition deleted before they fired.
  std::vector<TimerOut>& cancelled_timers() { return timers_cancelled_; }

  // Context
  const EntityRef& self() const override { return env_.to; }
  const EntityRef& sender() const override { return env_.from; }
  int64_t now_ms() const override { return now_ms_; }
  void delete_state() override;
  std::optional<std::string> kv_get(std::string_view key) override;
  void kv_put(std::string_view key, std::string_view value) override;
  void kv_del(std::string_view key) override;
  std::string defer_reply() override;
  uint64_t begin_escrow(int64_t deadline_ms) override;
  ActivityInfo activity(const EntityRef& partner) override;
  std::optional<std::string_view> raw_state() override;
  void put_state(std::string bytes) override;
  void send_raw(const EntityRef& to, uint64_t type, std::string payload) override;
  void reply_raw(const std::string& token, uint64_t type, std::string payload) override;
  void schedule_raw(int64_t delay_ms, uint64_t type, std::string payload) override;
  void try_raw(uint64_t group, const EntityRef& provider, uint64_t type, std::string payload) override;
  std::string current_reply_token() override;

 protected:
  capnp::MessageReader& reader_for(std::optional<std::string_view> bytes) override;

 private:
  Result run_client_request();
  Result run_entity_message();
  Result run_internal();
  void run_try();
  void run_confirm_or_cancel(bool confirm);
  void run_op_result();
  void run_op_expire();
  void run_escrow_deadline();

  messaging::Dedup& dedup(const EntityRef& partner);
  EscrowGroup* group(uint64_t id);
  void send_env(const EntityRef& to, messaging::Kind kind, uint64_t correlation, uint64_t type,
                std::string payload, uint32_t status = 0, int64_t deadline_ms = 0);
  // Returns the timer's row key.
  std::string schedule_internal(int64_t due_ms, messaging::Kind kind, uint64_t type, std::string payload);
  void cancel_timer(std::string& key);
  void decide_group(uint64_t id, EscrowGroup& g);
  void cancel_group(uint64_t id, EscrowGroup& g, const std::string& reason);
  void finish_group(uint64_t id, EscrowResult::Outcome outcome, const std::string& reason);
  std::optional<std::string> get(partition::Cf cf, const std::string& key);
  void flush();

  Engine& engine_;
  const Registry::Type& type_;
  const messaging::Envelope& env_;
  int64_t now_ms_;
  std::string prefix_;  // the entity's placement prefix
  partition::Txn txn_;
  std::string reason_;

  std::map<std::string, messaging::Dedup> dedups_;  // by row key, written at flush
  std::map<uint64_t, EscrowGroup> groups_;          // by group id, written at flush
  std::optional<std::optional<std::string>> state_;
  bool state_dirty_ = false;
  std::deque<std::pair<kj::Array<capnp::word>, std::unique_ptr<capnp::FlatArrayMessageReader>>> readers_;
  std::vector<messaging::Envelope> outputs_;
  std::vector<ClientOut> client_outputs_;
  std::vector<TimerOut> timers_out_;
  std::vector<TimerOut> timers_cancelled_;
  bool replied_to_client_ = false;
};

}  // namespace tandem::entity
