// The relay: delivers committed outbox rows through a Transport until each is acknowledged,
// retrying with exponential backoff and jitter, then reports the ack so the row can be deleted.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>

#include <tandem/core/env.h>
#include <tandem/core/histogram.h>
#include <tandem/messaging/envelope.h>
#include <tandem/messaging/transport.h>

namespace tandem::messaging {

struct RelayOptions {
  int64_t ack_timeout_us = 2'000'000;  // resend when no ack arrived in this time
  int64_t backoff_min_us = 5'000;
  int64_t backoff_max_us = 2'000'000;
  // Where to record each row's time from its first send to its ack (the network and the
  // receiver's commit included); borrowed, may be null.
  Histogram* ack_latency = nullptr;
};

// Single-threaded: every method runs on `exec`, which must outlive the Relay's callbacks
// (stop() closes the gate that late acks check). `transport`, `clock` borrowed.
class Relay {
 public:
  using AckedFn = std::function<void(const std::string& row_key)>;
  Relay(Executor& exec, Transport& transport, const Clock& clock, uint64_t seed, RelayOptions opts,
        AckedFn on_acked);
  ~Relay();
  // Starts delivering a committed outbox row. A row already pending is left as it is.
  void add(const std::string& row_key, Envelope env);
  // Forgets a row without delivering it (its partition moved away).
  void forget(const std::string& row_key) { pending_.erase(row_key); }
  // Forgets every row with a key in [begin, end).
  void forget_range(const std::string& begin, const std::string& end) {
    pending_.erase(pending_.lower_bound(begin), pending_.lower_bound(end));
  }
  size_t depth() const { return pending_.size(); }
  uint64_t retries() const { return retries_; }
  void stop();

 private:
  struct Pending {
    Envelope env;
    uint32_t attempts = 0;
    uint64_t generation = 0;
    int64_t added_us = 0;    // steady clock
    int64_t sent_us = 0;     // the latest send
    bool awaiting = false;   // sent and neither acked nor failed: the ack timeout runs
  };
  struct Gate;
  void send(const std::string& key);
  // One timer, every timeout/4 while rows are pending, resends the rows whose ack is overdue.
  // It walks the pending rows, not a record per send: at steady load few rows are unacked at
  // any moment, while a record per send would hold every row sent in the last timeout.
  void arm_sweep();
  void sweep();
  void on_ack(const std::string& key, uint64_t generation, Status s);
  void retry_later(const std::string& key, uint64_t generation);
  int64_t backoff_us(uint32_t attempts);

  Executor& exec_;
  Transport& transport_;
  const Clock& clock_;
  Random random_;
  RelayOptions opts_;
  AckedFn on_acked_;
  std::map<std::string, Pending> pending_;
  bool sweep_armed_ = false;
  std::shared_ptr<Gate> gate_;
  uint64_t next_generation_ = 1;
  uint64_t retries_ = 0;
};

}  // namespace tandem::messaging
