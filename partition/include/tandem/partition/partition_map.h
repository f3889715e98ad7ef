// The partition map: which node owns which partition of each entity type, versioned by a
// cluster-wide epoch; and the cluster config it is first built from. Knows nothing of messages.
#pragma once

#include <cstdint>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <tandem/core/ids.h>
#include <tandem/core/net.h>
#include <tandem/core/status.h>
#include <tandem/partition/placement.h>

namespace tandem::partition {

struct NodeInfo {
  uint32_t id = 0;
  net::Endpoint addr;    // node-to-node, client and admin protocol
  net::Endpoint admin;   // HTTP: Prometheus metrics
  std::string data_dir;  // relative paths are relative to the config file's folder
};

struct TypeSpec {
  std::string name;
  TypeScheme scheme;
  uint32_t partitions = 0;              // hash: how many partitions the slots are grouped into
  std::vector<std::string> split_keys;  // range: partition boundaries, sorted
};

struct PartitionInfo {
  uint32_t id = 0;
  std::string type;
  uint16_t slot_begin = 0, slot_end = 0;  // hash: slots [begin, end)
  std::string key_begin, key_end;         // range: keys [begin, end); an empty end is unbounded
  uint32_t owner = 0;
};

using KeyRange = std::pair<std::string, std::string>;  // [begin, end) of placement-prefixed keys

// The parts of `ranges` that no range of `minus` covers (empty pieces dropped).
std::vector<KeyRange> subtract_ranges(const std::vector<KeyRange>& ranges, const std::vector<KeyRange>& minus);

class PartitionMap {
 public:
  uint64_t epoch = 0;
  uint64_t moves = 0;   // how many moves and splits the map's history holds
  uint64_t splits = 0;
  std::vector<uint32_t> draining;  // nodes being emptied: no partition may move to them
  std::vector<NodeInfo> nodes;
  std::vector<TypeSpec> types;
  std::vector<PartitionInfo> partitions;

  // Spreads every type's partitions over the nodes round-robin, at epoch 1.
  static PartitionMap initial(std::vector<NodeInfo> nodes, std::vector<TypeSpec> types);
  // The partition that holds `ref`; nullptr for a type the map does not know.
  const PartitionInfo* find(const EntityRef& ref) const;
  const NodeInfo* node(uint32_t id) const;
  const TypeSpec* type(std::string_view name) const;
  PartitionInfo* partition(uint32_t id);
  const PartitionInfo* partition(uint32_t id) const { return const_cast<PartitionMap*>(this)->partition(id); }
  Placement placement() const;
  // The keys of a partition's entities in the state, activity, outbox and timer families.
  KeyRange key_range(const PartitionInfo& p) const;
  // The same map one epoch later with partition `id` owned by `to`.
  Result<PartitionMap> with_move(uint32_t id, uint32_t to) const;
  // The same map one epoch later with partition `id` split in two at `at` (hash: a slot number;
  // range: a key); `at` empty splits a hash partition at its middle slot. The new half keeps the
  // owner and gets a fresh id.
  Result<PartitionMap> with_split(uint32_t id, const std::string& at) const;
  // The same map one epoch later with adjacent partitions `a` and `b` (same type, same owner)
  // joined into `a`.
  Result<PartitionMap> with_merge(uint32_t a, uint32_t b) const;
  bool is_draining(uint32_t node) const;
  // The same map one epoch later with one more node (owning nothing yet).
  Result<PartitionMap> with_node(const NodeInfo& n) const;
  // Moves (partition id, target node) that even out partition counts over the nodes that are
  // not draining, and empty the draining ones. Each move is planned against the map as the
  // moves before it leave it. Nodes in `down` (not answering) take part in no move: their
  // partitions stay where they are and none moves to them.
  std::vector<std::pair<uint32_t, uint32_t>> rebalance_plan(const std::set<uint32_t>& down = {}) const;

  std::string encode() const;
  static Result<PartitionMap> decode(std::string_view bytes);
};

// The secret of an `insecure-dev` cluster: public, so anyone who can reach a node can talk to it.
inline constexpr std::string_view kInsecureDevSecret = "tandem-insecure-dev-secret-do-not-use";

struct ClusterConfig {
  std::string dir;  // the folder of the config file
  std::string secret_file;
  bool insecure_dev = false;  // `insecure-dev`: no secret file; kInsecureDevSecret for a throwaway local cluster
  std::string durability = "strict";
  std::string meta = "embedded";  // the metadata store: embedded, or etcd://HOST:PORT[/PREFIX]
  // Backpressure caps (`limits calls=N outbox=N inbox=N`); 0 keeps the node's default.
  uint64_t max_pending_calls = 0, max_outbox = 0, max_inbox = 0;
  std::vector<NodeInfo> nodes;
  std::vector<TypeSpec> types;

  // Reads the line-based config format (docs/cluster_config.md). kInvalidArgument names the
  // line and what is wrong with it.
  static Result<ClusterConfig> load(const std::string& path);
  static Result<ClusterConfig> parse(std::string_view text, const std::string& dir);
  Result<std::string> read_secret() const;
  const NodeInfo* node(uint32_t id) const;
  NodeInfo* node(uint32_t id) { return const_cast<NodeInfo*>(std::as_const(*this).node(id)); }
};

// A node's entry: from the map (nodes added at run time), else from the config.
const NodeInfo* find_node(const PartitionMap& map, const ClusterConfig& config, uint32_t id);

}  // namespace tandem::partition
