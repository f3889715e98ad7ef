// Engine: the node runtime behind Node. One serial executor runs every transition of the
// node's entities; a second one commits sealed groups, so the next group is built while the
// previous one is being written (and fsynced in strict durability). A small group with no other
// commit in flight is written on the first executor itself (NodeOptions::inline_commit_max):
// that saves the two thread hand-offs; except on a loop the engine shares with its network (a
// cluster node, set_executor), which must not stop reading and writing for an fsync.
//
// The path of one message:
//   handler calls ctx.send -> the envelope gets the next seq of the (sender, receiver) pair
//   -> if the receiver is hosted here and the open group has room, it is queued in memory and
//      runs inside the same group commit (no outbox row: both transitions commit or neither)
//   -> otherwise (group full at seal, inline off, remote receiver) it is written as an outbox
//      row in the sender's transition; after the commit the relay delivers it through the
//      transport; the receiver dedups it against its activity record, runs it, commits, acks;
//      the ack deletes the row in a later group (one that commits anyway: a delete alone starts
//      no commit until NodeOptions::ack_delete_linger_ms has passed).
#pragma once

#include <atomic>
#include <deque>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include <tandem/core/env.h>
#include <tandem/core/histogram.h>
#include <tandem/entity/entity.h>
#include <tandem/entity/node.h>
#include <tandem/messaging/envelope.h>
#include <tandem/messaging/relay.h>
#include <tandem/messaging/transport.h>
#include <tandem/partition/partition_map.h>
#include <tandem/partition/placement.h>
#include <tandem/partition/store.h>

namespace tandem::entity {

// Internal timer payload types (kind kInternal).
inline constexpr uint64_t kOpExpire = 1;
inline constexpr uint64_t kEscrowDeadline = 2;

// A group this large is sealed even while another commit is in flight.
inline constexpr size_t kEagerSeal = 256;
// The exit code of a process stopped by its fence (see set_fence).
inline constexpr int kFencedExitCode = 75;

// Opens a node's store. The default opener is RocksDB at so.path (creating the directory);
// the simulator supplies an in-memory one.
using StoreOpener = std::function<Result<std::unique_ptr<partition::Store>>(const partition::StoreOptions&)>;
Result<std::unique_ptr<partition::Store>> open_rocks_store(const partition::StoreOptions& so);

// True for an activity row that is a client request's reply, answered, and past its retention
// at `now_ms`: reads already treat it as absent, so a compaction may drop it (without this the
// replies of every client request ever made would stay on disk).
bool expired_client_reply(const partition::Placement& placement, std::string_view key, std::string_view value,
                          int64_t now_ms);
// The compaction hook a node installs: drops expired client replies from the activity family,
// judged at *now_ms (the engine keeps it at its wall clock; the hook runs on RocksDB's threads).
partition::DropFn expired_reply_dropper(const partition::Placement& placement,
                                        std::shared_ptr<const std::atomic<int64_t>> now_ms);
// Where the registry's types put their rows (a cluster node may set another: Engine::set_placement).
partition::Placement placement_of(const Registry& registry);

class Engine final : public messaging::Inbound {
 public:
  Engine(Env& env, const Registry& registry, NodeOptions opts);
  ~Engine() override;
  Status start();
  void stop();

  // Inbound: thread-safe.
  void deliver(messaging::Envelope env, messaging::AckFn ack) override;
  void call(const EntityRef& to, uint64_t payload_type, std::string payload, const std::string& client_id,
            const std::string& idem, std::function<void(ClientReply)> done);

  // Where envelopes for entity types this node does not host go (the cluster transport; a
  // capturing transport in tests). Unset: they are delivered locally and parked as unknown.
  // Call before start(); `t` must outlive the Engine.
  void set_remote_transport(messaging::Transport* t) { remote_transport_ = t; }
  // In a cluster: whether this node owns the entity (from the partition map), and the
  // placement schemes of the map. Call before start(); `hosts` must be thread-safe.
  void set_router(std::function<bool(const EntityRef&)> hosts) { hosts_ = std::move(hosts); }
  void set_placement(partition::Placement p) { placement_ = std::move(p); }
  // Entities whose partition is being moved away: their messages are not run here (deliveries
  // are refused for a later retry, local ones go to the outbox, client calls are answered
  // `unavailable`). Call before start(); `frozen` must be thread-safe.
  void set_frozen(std::function<bool(const EntityRef&)> frozen) { frozen_ = std::move(frozen); }
  // Fencing: called before every group commit with the entities whose transitions it holds
  // (consecutive repeats removed); a non-ok answer means this node may no longer write them,
  // and the process stops without writing the group (crash-only: the senders retry, and the
  // restarted node learns the current map). Call before start(); `fence` must be thread-safe.
  void set_fence(std::function<Status(const std::vector<EntityRef>&)> fence) { fence_ = std::move(fence); }
  // Where the store comes from. Call before start().
  void set_store_opener(StoreOpener open) { open_store_ = std::move(open); }
  // Runs the engine on `loop` (an executor of the same Env, borrowed; it must outlive the
  // Engine) instead of a thread of its own. A cluster node shares it with its network, so a
  // delivery runs where it was read and an ack is written where it was produced. Groups are
  // then always committed on the commit thread (never inline: the loop must not wait for an
  // fsync). Tasks the engine left queued there do nothing once stop() returned. Call before
  // start().
  void set_executor(Executor* loop) { loop_ = loop; }

  // ---- partition moves (blocking; call from a thread that is not the engine's) ----
  // Waits until every transition that ran before this call is committed.
  void flush();
  // The ranges arrived in the store (ingested): drop stale cache entries, start delivering
  // their outbox rows and arm their timers.
  Status adopt(const std::vector<partition::KeyRange>& ranges);
  // The ranges left: forget their relay rows and timers, delete them from the store.
  Status release(const std::vector<partition::KeyRange>& ranges);
  // A move was aborted: re-arm the timers of the ranges (they were skipped while frozen).
  Status rearm(const std::vector<partition::KeyRange>& ranges);

  NodeStats stats() const;
  bool quiescent() const;
  bool running() const { return running_; }
  partition::Store& store() { return *store_; }
  const partition::Placement& placement() const { return placement_; }
  Result<std::vector<ParkedMessage>> parked();
  Status redrive(const std::string& id);

 private:
  friend class Transition;

  struct Work {
    messaging::Envelope env;
    messaging::AckFn ack;   // delivered by a transport: acknowledge after the commit
    std::string row_key;    // a local outbox row this transition consumes (deleted in its txn)
    std::string timer_key;  // the durable timer row this transition fires
    bool inline_msg = false;  // produced in the open group; has no row yet
    int64_t arrived_us = 0;   // when it reached the engine (the queue stage starts)
  };
  struct TimerEntry {
    int64_t due_ms;
    std::string key;
    auto operator<=>(const TimerEntry&) const = default;
  };
  struct Actions {  // run once the group that holds them is durable
    std::vector<messaging::AckFn> acks;
    std::vector<std::pair<std::string, messaging::Envelope>> relay_rows;
    std::vector<std::pair<std::string, ClientReply>> client_replies;
    std::set<TimerEntry> timers;
    std::vector<Work> retries;  // failed transitions to run again after a backoff
    std::vector<EntityRef> touched;  // entities written (kept only when a fence is set)
    std::vector<int64_t> ran_us;     // when each transition ran (the durable stage starts)
    size_t transitions = 0;
    bool empty() const {
      return transitions == 0 && acks.empty() && relay_rows.empty() && client_replies.empty() && retries.empty();
    }
  };

  void schedule_step();
  void step();
  void process(Work& w);
  void fail(Work& w, const std::string& reason, bool retryable);
  void defer_frozen(Work& w);
  Status load_timers(const std::vector<partition::KeyRange>& ranges);
  void park(Work& w, const std::string& reason);
  void seal_and_commit();
  void on_committed(uint64_t group, int64_t started_us, int64_t written_us);
  void fire_due_timers();
  void arm_timer_wakeup();
  void on_relay_acked(const std::string& row_key);
  Status recover();
  std::string work_id(const messaging::Envelope& env) const;
  static std::string call_key(const EntityRef& to, const std::string& client_id, const std::string& idem);
  void complete_call(const std::string& key, ClientReply reply);

  Env& env_;
  const Registry& registry_;
  NodeOptions opts_;
  partition::Durability durability_ = partition::Durability::kStrict;
  partition::Placement placement_;
  std::unique_ptr<partition::Store> store_;
  std::unique_ptr<partition::View> view_;
  class Gated;
  Executor* loop_ = nullptr;             // borrowed (set_executor), or own_exec_
  std::unique_ptr<Executor> own_exec_;
  std::unique_ptr<Gated> exec_;          // loop_ behind a gate that stop() closes
  std::unique_ptr<Executor> commit_exec_;
  std::unique_ptr<Executor> fault_exec_;
  std::unique_ptr<messaging::LocalTransport> local_transport_;
  std::unique_ptr<messaging::FaultyTransport> faulty_transport_, faulty_remote_;
  messaging::Transport* transport_ = nullptr;  // local delivery, possibly through faults
  messaging::Transport* remote_transport_ = nullptr;
  std::function<bool(const EntityRef&)> hosts_;  // unset: this node hosts every registered type
  std::function<bool(const EntityRef&)> frozen_;
  std::function<Status(const std::vector<EntityRef>&)> fence_;
  StoreOpener open_store_ = open_rocks_store;
  void touch(const EntityRef& ref) {
    if (fence_ && (open_.touched.empty() || !(open_.touched.back() == ref))) open_.touched.push_back(ref);
  }
  void check_fence(const std::vector<EntityRef>& touched);
  uint64_t sealed_groups_ = 0, committed_groups_ = 0;  // executor thread
  bool is_local(const EntityRef& ref) const { return registry_.find(ref.type) && (!hosts_ || hosts_(ref)); }
  class RoutingTransport;
  std::unique_ptr<RoutingTransport> routing_;
  std::unique_ptr<messaging::Relay> relay_;
  std::unique_ptr<Random> random_;
  // The engine's wall clock as of its last step, for the compaction filter's threads.
  std::shared_ptr<std::atomic<int64_t>> compaction_now_ms_ = std::make_shared<std::atomic<int64_t>>(0);

  mutable std::mutex inbox_mu_;
  std::vector<Work> inbox_;
  bool inbox_wake_ = false;

  // Executor thread only.
  std::deque<Work> ready_;
  std::set<TimerEntry> timers_;  // pending durable timers by due time
  int64_t timer_wakeup_at_ = 0;
  Actions open_;
  std::unordered_map<uint64_t, Actions> committing_;
  int inflight_commits_ = 0;
  bool step_scheduled_ = false;
  // Deletes of acknowledged outbox rows in the open group (see NodeOptions::ack_delete_linger_ms):
  // alone they do not seal it; the linger timer does.
  size_t lazy_writes_ = 0;
  bool linger_armed_ = false;
  bool group_wanted() const { return !open_.empty() || view_->open_writes() > lazy_writes_; }
  void arm_linger();
  bool stopped_ = false;
  std::unordered_map<std::string, int> attempts_;
  uint64_t timer_ids_ = 0;
  // Key ranges that arrived by a move since start (for the simulator's "sometimes" counts).
  std::vector<partition::KeyRange> arrived_;
  bool arrived_by_move(const EntityRef& ref) const;

  std::atomic<bool> running_{false};  // calls are refused outside start() .. stop()
  mutable std::mutex calls_mu_;
  struct Waiting {
    std::string prefix;  // the placement prefix of the entity called
    std::function<void(ClientReply)> done;
  };
  std::unordered_map<std::string, Waiting> calls_;

  struct Counters {
    std::atomic<uint64_t> applied{0}, duplicates{0}, parked{0}, failures{0}, commits{0},
        max_per_commit{0}, outbox_depth{0}, relay_retries{0}, ready{0}, timers{0}, busy{0}, inbox{0};
    std::atomic<int> inflight{0};
    // Where a message's time goes (see NodeStats::stages).
    Histogram queue, durable, commit, handoff, relay;
  };
  mutable Counters c_;
};

}  // namespace tandem::entity
