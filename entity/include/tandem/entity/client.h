// Client: an external client of a Tandem cluster over the network. It fetches the partition
// map, sends each call to the node that owns the entity, and retries (same idempotency key)
// when the node is unreachable or the entity has moved, until the call's deadline.
// Thread-safe; callbacks run on the client's network thread.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <tandem/core/env.h>
#include <tandem/core/histogram.h>
#include <tandem/entity/gateway.h>

namespace tandem::entity {

class Client final : public Gateway {
 public:
  struct Options {
    std::string config_path;       // the cluster config: node addresses and the secret file
    std::string role = "client";   // "admin" for tandemctl
    int64_t call_deadline_ms = 120'000;
    int64_t connect_timeout_ms = 30'000;  // keep trying the nodes this long before giving up
    Env* env = nullptr;  // borrowed; unset: the client's own real Env (threads, clocks, sockets)
  };
  // Connects to the first node that answers (trying them in turn for up to connect_timeout_ms)
  // and fetches the partition map.
  // kInvalidArgument for a bad config or a wrong secret; kUnavailable when no node answers.
  static Result<std::unique_ptr<Client>> connect(const Options& opts);
  ~Client() override;

  using Gateway::call;
  void call(const EntityRef& to, uint64_t payload_type, std::string payload, const std::string& client_id,
            const std::string& idempotency_key, std::function<void(ClientReply)> done) override;
  Status for_each_state(const std::string& type,
                        const std::function<void(const std::string& key, Payload&)>& fn) override;
  Result<bool> quiescent() override;
  Result<uint64_t> parked_count() override;
  Result<uint64_t> pending_timers() override;
  size_t nodes() const override;

  // One request to one node (tandemctl). Blocks up to `timeout_ms`.
  Result<std::string> request(uint32_t node, const std::string& method, std::string body, int64_t timeout_ms = 10'000);
  // The same without waiting: `done` runs on the client's network thread with the answer.
  void request_async(uint32_t node, const std::string& method, std::string body,
                     std::function<void(Result<std::string>)> done);
  // Where messages spent their time on `node` since it started (NodeStats::stages), in order.
  Result<std::vector<std::pair<std::string, Histogram::Snapshot>>> stages(uint32_t node);
  // Fetches the map again (after a move or split).
  void refresh();
  // Counters from the partition map's history.
  struct MapSummary {
    uint64_t epoch = 0, moves = 0, splits = 0, partitions = 0;
  };
  MapSummary map_summary() const;
  std::vector<uint32_t> node_ids() const;
  // The node holding the controller role (the lowest id with the embedded metadata store, the
  // holder of the etcd controller key otherwise), as a node that says so itself confirms. Tries
  // for about 10 s while the role passes from a node that stopped to another.
  Result<uint32_t> controller();
  // The node that owns `ref` per the current map (0 for an unknown type).
  uint32_t owner_of(const EntityRef& ref) const;
  // The encoded partition map (partition::PartitionMap::decode reads it).
  std::string map_bytes() const;
  // The cluster's durability setting, from its config.
  std::string durability() const;

  struct Impl;

 private:
  explicit Client(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace tandem::entity
