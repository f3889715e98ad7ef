// The delivery seam. A Transport carries envelopes to whoever hosts the receiver; the
// receiving side is an Inbound. The in-process transport, the fault-injecting wrapper and (in
// the cluster) the TCP transport all implement Transport.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <mutex>

#include <tandem/core/env.h>
#include <tandem/messaging/envelope.h>

namespace tandem::messaging {

// Called once the receiver has committed the envelope's effect or recognised it as a duplicate
// (ok), or could not take it now (not ok: the sender retries later). May be called on any thread,
// more than once for duplicated deliveries, or never for a lost one.
using AckFn = std::function<void(Status)>;

class Inbound {
 public:
  virtual ~Inbound() = default;
  // Thread-safe.
  virtual void deliver(Envelope env, AckFn ack) = 0;
};

class Transport {
 public:
  virtual ~Transport() = default;
  // Thread-safe. Never blocks.
  virtual void send(const Envelope& env, AckFn ack) = 0;
};

// Delivers straight to one Inbound in this process.
class LocalTransport final : public Transport {
 public:
  explicit LocalTransport(Inbound& inbound) : inbound_(inbound) {}
  void send(const Envelope& env, AckFn ack) override { inbound_.deliver(env, std::move(ack)); }

 private:
  Inbound& inbound_;
};

struct FaultOptions {
  double duplicate = 0;       // probability that an envelope is delivered more than once
  int max_copies = 3;         // copies delivered when an envelope is duplicated
  double drop = 0;            // probability that one delivery is lost (its ack never comes)
  double delay = 0;           // probability that one delivery is delayed
  int64_t max_delay_us = 0;   // delays are uniform in [0, max_delay_us]: this also reorders
  uint64_t seed = 1;
  bool any() const { return duplicate > 0 || drop > 0 || (delay > 0 && max_delay_us > 0); }
};

// Wraps a Transport and duplicates, drops, delays and so reorders what passes through it.
// Delayed deliveries run on `timers`, which must outlive this object. Thread-safe.
class FaultyTransport final : public Transport {
 public:
  FaultyTransport(Transport& inner, Executor& timers, FaultOptions opts);
  void send(const Envelope& env, AckFn ack) override;
  struct Counters {
    uint64_t sent = 0, duplicated = 0, dropped = 0, delayed = 0;
  };
  Counters counters() const;
  // Delayed copies not yet handed to the inner transport: a node counting only its own
  // queues would look idle while one of these is still to arrive.
  uint64_t in_flight() const { return in_flight_.load(std::memory_order_acquire); }

 private:
  Transport& inner_;
  Executor& timers_;
  FaultOptions opts_;
  mutable std::mutex mu_;
  Random random_;
  Counters counters_;
  std::atomic<uint64_t> in_flight_{0};
};

}  // namespace tandem::messaging
