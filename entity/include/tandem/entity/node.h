// Node: hosts the registered entity types on one process with one store. It runs each
// message of an entity in one local transaction, packs many transitions into one group commit,
// delivers messages at least once and applies each exactly once. Also the in-process client
// gateway and the admin surface (stats, inspect, parked messages).
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <tandem/core/env.h>
#include <tandem/core/histogram.h>
#include <tandem/core/ids.h>
#include <tandem/core/status.h>
#include <tandem/entity/entity.h>
#include <tandem/entity/gateway.h>

namespace tandem::entity {

class Engine;

struct NodeOptions {
  std::string data_dir;
  std::string durability = "strict";  // "strict" (fsync per group commit) or "relaxed"
  size_t cache_entries = 200'000;     // bounded cache of hot state and activity rows
  size_t max_batch = 2048;            // most transitions packed into one group commit
  // Run a message for an entity on this node inside the sender's group commit when it fits,
  // so it needs no outbox row. Off: every message goes through outbox, relay and transport.
  bool inline_local = true;
  // A group of at most this many transitions, with no other commit in flight, is written (and
  // fsynced, in strict durability) on the engine thread: that saves the two thread hand-offs
  // to and from the commit thread. Larger groups go to the commit thread, so the next group
  // fills meanwhile. 0: every group goes to the commit thread.
  size_t inline_commit_max = 32;
  int max_attempts = 5;                        // a message whose handler failed this often is parked
  int64_t op_grace_ms = 30'000;                // provider expiry = requester deadline + grace
  int64_t reply_retention_ms = 24 * 3600'000;  // client replies kept for retries this long, then dropped at compaction
  int64_t relay_ack_timeout_ms = 2'000;
  // The delete of an acknowledged outbox row is not urgent (a row written again after a crash
  // is resent and dropped as a duplicate), so it does not start a group commit of its own: it
  // rides in the next group that commits anyway, or is written after this long on a node
  // with nothing else to commit. 0: acknowledged rows are deleted in a group of their own.
  int64_t ack_delete_linger_ms = 50;
  int64_t relay_backoff_min_ms = 5;
  int64_t relay_backoff_max_ms = 2'000;
  // Backpressure. A new client call is answered `overloaded` (busy) while this many calls wait
  // for replies or this many outbox rows wait for acks (a slow or stopped receiver); a delivery
  // from another node is refused (`unavailable`, its relay retries with backoff) while this
  // many messages wait to run.
  size_t max_pending_calls = 100'000;
  size_t max_outbox = 200'000;
  size_t max_inbox = 100'000;
  // A state scan (Client::for_each_state) answers in pages of about this many bytes.
  size_t scan_page_bytes = 4 << 20;
  // Fault injection on the delivery path (tests): every outbox delivery may be duplicated,
  // dropped, delayed (and so reordered).
  struct Faults {
    double duplicate = 0, drop = 0, delay = 0;
    int max_copies = 3;
    int64_t max_delay_us = 0;
    uint64_t seed = 1;
  } faults;
};

struct NodeStats {
  uint64_t applied = 0;        // transitions committed (messages, timers, operations)
  uint64_t duplicates = 0;     // deliveries recognised as already applied
  uint64_t parked = 0;         // messages parked since start
  uint64_t failures = 0;       // handler failures (each retried or parked)
  uint64_t commits = 0;        // group commits
  uint64_t outbox_depth = 0;   // outbox rows not yet acknowledged
  uint64_t relay_retries = 0;
  uint64_t ready = 0;          // messages queued for processing
  uint64_t timers = 0;         // durable timers pending
  uint64_t inflight_calls = 0; // client calls waiting for a reply
  uint64_t busy = 0;           // calls and deliveries refused at a cap since start
  double commit_ms_avg = 0;
  uint64_t transitions_per_commit_max = 0;
  // Where a message's time goes on this node, since start (microseconds):
  //   queue    arrival at the engine (delivered, called, or sent by an entity here) -> its transition runs
  //   durable  the transition runs -> its group is durable (waiting for the seal and the commit included)
  //   commit   a group's write (and fsync in strict durability)
  //   handoff  the write done -> the engine acts on it (acks, replies, relay)
  //   relay    an outbox row's first send -> its ack (the network and the receiver's commit included)
  std::vector<std::pair<std::string, Histogram::Snapshot>> stages;
};

struct ParkedMessage {
  std::string id;  // pass to redrive()
  EntityRef to, from;
  std::string kind;
  std::string reason;
};

class Node final : public Gateway {
 public:
  // `env` and `registry` are borrowed and must outlive the Node.
  Node(Env& env, const Registry& registry, NodeOptions opts);
  ~Node() override;
  // Opens the store, recovers outbox rows and timers, starts processing.
  // kInvalidArgument for bad options; kInternal when the store cannot be opened.
  Status start();
  // Finishes in-flight commits and stops. Idempotent. Safe while other threads call this node:
  // it waits for the calls under way to leave (call() only queues, so that is short), and every
  // call and admin method after it answers `unavailable` (calls still waiting for a reply get
  // `unavailable` too, and the client retries). Not from inside this node's own callbacks (a
  // reply's `done`, a scan's `fn`): it would wait for itself.
  void stop();

  using Gateway::call;
  void call(const EntityRef& to, uint64_t payload_type, std::string payload, const std::string& client_id,
            const std::string& idempotency_key, std::function<void(ClientReply)> done) override;

  // Admin surface. Reads committed data; thread-safe.
  NodeStats stats() const;
  Status for_each_state(const std::string& type,
                        const std::function<void(const std::string& key, Payload&)>& fn) override;
  Result<std::vector<ActivityInfo>> activities(const EntityRef& ref);
  Result<std::vector<ParkedMessage>> parked();
  Status redrive(const std::string& parked_id);
  // True when nothing is queued, committing or waiting for an ack.
  bool idle() const;
  Result<bool> quiescent() override { return idle(); }
  Result<uint64_t> parked_count() override;
  Result<uint64_t> pending_timers() override { return stats().timers; }
  size_t nodes() const override { return 1; }

 private:
  class Entry;  // one thread inside a call into the engine (node.cc)
  Env& env_;
  std::unique_ptr<Engine> engine_;
  mutable std::atomic<int> entered_{0};
  std::atomic<bool> closed_{false};  // stop() began: no new entry reaches the engine
};

}  // namespace tandem::entity
