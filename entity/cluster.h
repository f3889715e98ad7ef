// ClusterNode: one node of a multi-node cluster. Wraps the Engine with the partition map,
// the authenticated TCP transport to the other nodes, the request handlers for clients and
// tandemctl, and the Prometheus metrics endpoint.
//
// The partition map lives in the metadata store. `embedded` (the default): with the controller
// (the node with the lowest id) in its `meta` column family; the other nodes fetch it from the
// controller at start and keep a copy in their own `meta`. `etcd://...`: in etcd (EtcdMeta),
// where every node watches it and the controller is whichever node holds the etcd controller
// key; each commit is fenced by the node's etcd lease. An envelope or client call for an entity this
// node does not own is answered `unavailable: moved owner=N epoch=E`, and the sender re-routes.
#pragma once

#include <atomic>
#include <initializer_list>
#include <map>
#include <optional>
#include <set>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <tandem/core/env.h>
#include <tandem/core/net.h>
#include <tandem/entity/entity.h>
#include <tandem/entity/node.h>
#include <tandem/messaging/session.h>
#include <tandem/partition/partition_map.h>

#include "engine.h"
#include "etcd_meta.h"

namespace tandem::entity {

class ClusterNode {
 public:
  // `env` and `registry` are borrowed and must outlive this object.
  ClusterNode(Env& env, const Registry& registry, partition::ClusterConfig config, uint32_t node_id,
              NodeOptions base);
  ~ClusterNode();
  // Loads or fetches the partition map, opens the store, starts serving.
  Status start();
  // Makes a start() running on another thread give up its waits (for the store's lock, the
  // controller's map, etcd) within a moment and fail with `unavailable`; safe from any thread
  // (a node's signal thread calls it). stop() must still be called after start() returned.
  void interrupt() { stopping_ = true; }
  void stop();
  const partition::NodeInfo& self() const { return self_; }
  // Where the store comes from (the simulator's in-memory disks). Call before start().
  void set_store_opener(StoreOpener open) { open_store_ = std::move(open); }

 private:
  class PeerTransport;
  Status load_map();
  // Fetches the map from the controller in the background (at most every 200 ms) and adopts it
  // when its epoch is newer: called when a peer answers `moved`.
  void refresh_map_async();
  // Embedded metadata, nodes other than the controller: ask for the map every kMapCheckMs, so
  // a node that missed a change's announcement (down or cut off then) converges even when no
  // message of its reaches a moved partition.
  static constexpr int64_t kMapCheckMs = 2'000;
  void check_map_periodically();
  // A move aborted while its source did not take the unfreeze: retried after the answer, on
  // ctl_exec_, until the source takes it (or this node stops being the controller).
  std::optional<std::pair<uint32_t, uint32_t>> unfreeze_pending_;  // ctl_exec_ only: (partition, source)
  void finish_abort();
  bool owns(const EntityRef& ref) const;
  bool frozen(const EntityRef& ref) const;
  // ---- moves and splits ----
  // Blocking request to a node (handled in-process when it is this node).
  Result<std::string> call_node(uint32_t id, const std::string& method, std::string body);
  // Waits for `h` for up to `limit_ms`, in 100 ms steps so that a stop cuts the wait short:
  // nullopt when the time ran out or the node is stopping.
  template <class T>
  std::optional<T> await(const Handoff<T>& h, int limit_ms) const;
  // Partition requests a node serves (blocking; run on part_exec_ or the caller's thread).
  Result<std::string> handle_partition_request(const std::string& method, std::string body);
  // Controller operations (run on ctl_exec_).
  Result<std::string> move(uint32_t pid, uint32_t to);
  Result<std::string> split(uint32_t pid, const std::string& at);
  Result<std::string> merge(uint32_t a, uint32_t b);
  Result<std::string> drain(uint32_t node);
  Result<std::string> add_node(uint32_t id, const std::string& addrs);
  // A node's address: from the map (nodes added at run time), else from the config.
  std::optional<net::Endpoint> node_addr(uint32_t id) const;
  Result<std::string> rebalance(bool dry_run);
  // The other nodes that do not answer a status request now; `said` gets a line for each.
  std::set<uint32_t> not_answering(std::string& said);
  Result<std::string> run_plan(const std::vector<std::pair<uint32_t, uint32_t>>& plan);
  Status adopt_map(partition::PartitionMap next);  // newer map: adopt arrived partitions, release gone ones
  Status persist_map(const partition::PartitionMap& m);
  // The commit point of a map change made by the controller: etcd's compare-and-swap, or the
  // controller's own store (embedded).
  Status commit_map(const partition::PartitionMap& next);
  // This node just became the controller: make every node hold the authoritative map.
  void take_control();
  // The commit fence (Engine::set_fence).
  Status fence(const std::vector<EntityRef>& touched);
  std::vector<partition::KeyRange> ranges_of(const std::vector<uint32_t>& pids) const;
  partition::PartitionMap map_copy() const;
  // Under map_mu_: the newer of this node's map and `newest` (a map from the store this node
  // has not adopted yet), which is what ownership is judged by.
  const partition::PartitionMap& newest_locked(const std::shared_ptr<const partition::PartitionMap>& newest) const;
  // The partitions of the current map this node does not own.
  Status forget_frozen(const std::vector<uint32_t>& pids);  // their frozen markers leave the store
  std::vector<partition::KeyRange> owned_ranges(const partition::PartitionMap& m) const;
  std::vector<uint32_t> not_mine() const;
  // Sends `m` to every other node except `skip` (best effort).
  void announce(const partition::PartitionMap& m, std::initializer_list<uint32_t> skip);
  std::string moved_message(const EntityRef& ref) const;
  // Handlers for a session whose peer authenticated as `role` (deliveries only from nodes).
  messaging::SessionHandlers session_handlers(const std::string& role);
  void on_request(const std::string& role, const std::string& method, std::string body, messaging::RespondFn respond);
  std::string status_text();
  std::string metrics_text();
  void serve_metrics(std::shared_ptr<net::Connection> c);

  Env& env_;
  const Registry& registry_;
  partition::ClusterConfig config_;
  partition::NodeInfo self_;
  NodeOptions opts_;
  std::string secret_;
  mutable std::mutex map_mu_;
  partition::PartitionMap map_;
  // The node's one thread for its network and its engine (declared first: joined last, after
  // every object with tasks or sockets on it is gone).
  std::unique_ptr<Executor> loop_;
  std::unique_ptr<net::Network> net_;
  std::unique_ptr<PeerTransport> peers_;
  std::unique_ptr<Engine> engine_;
  int64_t started_ms_ = 0;
  std::atomic<int64_t> last_refresh_ms_{0};
  std::map<uint32_t, uint32_t> frozen_;      // under map_mu_: partitions being moved away -> the controller moving them
  // The controller changed (etcd): partitions frozen by a controller that no longer holds the
  // role are thawed if this node still owns them (that controller can no longer commit the move).
  void thaw_orphans(uint32_t controller);
  std::unique_ptr<Executor> ctl_exec_;        // controller operations, one at a time
  std::atomic<bool> ctl_busy_{false};         // a move or split is running
  std::atomic<int> metrics_conns_{0};         // open connections to the metrics port
  std::mutex progress_mu_;
  std::string progress_;                      // under progress_mu_: the running operation's step
  void progress(std::string step);
  std::atomic<bool> stopping_{false};
  std::unique_ptr<Executor> part_exec_;       // blocking partition requests from the controller
  // A move's copy arriving here: its chunks (`ingest`) and the `drop` of a stale or aborted
  // copy, in the order they arrive. Not on part_exec_: a node's export waits there for each
  // chunk's ingest at the target, so two exports in opposite directions between two nodes would
  // each wait for an ingest queued behind the other's export.
  std::unique_ptr<Executor> copy_exec_;
  std::atomic<uint32_t> controller_{0};
  std::unique_ptr<EtcdMeta> meta_;  // set with `meta etcd://...`
  StoreOpener open_store_ = open_rocks_store;
};

}  // namespace tandem::entity
