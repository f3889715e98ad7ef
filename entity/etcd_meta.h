// EtcdMeta: a cluster node's view of the etcd metadata store (`meta etcd://...`).
//
//   PREFIX/map         the partition map (PartitionMap::encode); written only by the controller,
//                      compare-and-swap on its mod revision and on the controller key
//   PREFIX/controller  the controller's node id, bound to its lease: the node that creates it
//                      holds the role until its lease expires
//   PREFIX/nodes/<id>  "up", bound to the node's lease (who is alive, for operators)
//
// Every node holds one lease (TTL kLeaseTtlS) and renews it every third of the TTL. The lease
// is also the node's fence: `lease_valid()` is true only while the last renewal, measured from
// when it was sent, is younger than the TTL etcd granted; after a lapse (a pause, etcd down) the
// node takes a new lease and re-reads the map before it is valid again.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <mutex>

#include <tandem/core/env.h>
#include <tandem/core/etcd.h>
#include <tandem/partition/partition_map.h>

namespace tandem::entity {

inline constexpr int kLeaseTtlS = 3;

class EtcdMeta {
 public:
  struct Hooks {
    std::function<void(partition::PartitionMap)> on_map;  // a map newer than any seen before
    std::function<void(uint32_t)> on_controller;          // the controller changed (0: none)
  };
  // `interrupted` (borrowed, may be null): once true, load_or_create() and start() stop retrying
  // and fail with `unavailable` (a node stopped while it waits for etcd).
  EtcdMeta(Env& env, EtcdAddress addr, uint32_t node_id, const std::atomic<bool>* interrupted = nullptr);
  ~EtcdMeta();

  // The map in etcd; when there is none, `initial` is stored (the first node to get there wins).
  // Retries for up to `wait_ms` while etcd is unreachable.
  Result<partition::PartitionMap> load_or_create(const partition::PartitionMap& initial, int wait_ms);
  // Takes the lease, registers, campaigns once (on_controller has run on return), then keeps
  // all of it up in the background and watches the map.
  Status start(Hooks hooks);
  // Stops renewing, campaigning and watching (no hook runs after this returns); the lease stays
  // valid until its TTL runs out, so the node can finish its last commits.
  void stop();
  // Gives the lease back (the controller role passes at once). Call after the last commit.
  void release();

  // Writes `next` (epoch = newest().epoch + 1) if the map in etcd is still the newest this node
  // has seen and this node still holds the controller key.
  Status commit(const partition::PartitionMap& next);
  bool lease_valid() const;
  // Waits up to `limit_ms` for a valid lease.
  bool wait_lease(int limit_ms) const;
  std::shared_ptr<const partition::PartitionMap> newest() const;

 private:
  void tick(Executor& keeper);  // keeper: renew, campaign, poll the map; re-posts itself
  bool renew();
  bool interrupted() const;
  void campaign();
  void poll_map();
  void watch_loop(Executor& watcher);
  // Records a map read from etcd at `rev`; calls on_map when it is newer.
  void saw(const EtcdValue& v);

  Env& env_;
  EtcdClient client_;
  uint32_t id_;
  Hooks hooks_;
  std::unique_ptr<Executor> keeper_, watcher_;
  std::atomic<bool> stop_{false};
  const std::atomic<bool>* interrupted_;
  std::atomic<bool> watching_{false};  // a watch call is running (it resumes from newest_rev_ + 1)
  std::atomic<int64_t> lease_{0};
  std::atomic<int64_t> valid_until_us_{0};
  std::atomic<uint32_t> controller_{0};
  mutable std::mutex mu_;
  std::shared_ptr<const partition::PartitionMap> newest_;  // under mu_
  int64_t newest_rev_ = 0;                                 // under mu_
};

}  // namespace tandem::entity
