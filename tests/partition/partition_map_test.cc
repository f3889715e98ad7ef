#include <tandem/partition/partition_map.h>

#include <doctest/doctest.h>
#include <map>

using namespace tandem;
using namespace tandem::partition;

namespace {
std::vector<NodeInfo> three_nodes() {
  return {{1, {"127.0.0.1", 1}, {"127.0.0.1", 11}, "n1"},
          {2, {"127.0.0.1", 2}, {"127.0.0.1", 12}, "n2"},
          {3, {"127.0.0.1", 3}, {"127.0.0.1", 13}, "n3"}};
}
}  // namespace

TEST_CASE("the initial map covers every hash slot and every key exactly once, spread over the nodes") {
  TypeSpec order{"order", {TypeScheme::Kind::kHash, 100}, 7, {}};
  TypeSpec item{"item", {TypeScheme::Kind::kRange, 0}, 0, {"g", "p"}};
  auto m = PartitionMap::initial(three_nodes(), {order, item});
  CHECK(m.epoch == 1);
  CHECK(m.partitions.size() == 10);
  std::vector<int> covered(100, 0);
  std::map<uint32_t, int> per_node;
  for (auto& p : m.partitions) {
    ++per_node[p.owner];
    if (p.type == "order")
      for (int s = p.slot_begin; s < p.slot_end; ++s) ++covered[s];
  }
  for (int c : covered) CHECK(c == 1);
  CHECK(per_node.size() == 3);
  CHECK(m.find({"item", "a"})->key_end == "g");
  CHECK(m.find({"item", "g"})->key_begin == "g");
  CHECK(m.find({"item", "zzz"})->key_end.empty());
  CHECK(m.find({"ghost", "x"}) == nullptr);
  for (int i = 0; i < 1000; ++i) CHECK(m.find({"order", "o" + std::to_string(i)}) != nullptr);
}

TEST_CASE("the map survives encoding, and garbage does not decode") {
  auto m = PartitionMap::initial(three_nodes(), {{"order", {TypeScheme::Kind::kHash, 256}, 6, {}}});
  m.epoch = 42;
  auto back = PartitionMap::decode(m.encode());
  REQUIRE(back.is_ok());
  CHECK(back->epoch == 42);
  CHECK(back->partitions.size() == 6);
  CHECK(back->node(2)->addr.port == 2);
  CHECK(back->find({"order", "x"})->owner == m.find({"order", "x"})->owner);
  CHECK(PartitionMap::decode("garbage").status().code() == Code::kCorruption);
  CHECK(PartitionMap::decode("").status().code() == Code::kCorruption);
}

TEST_CASE("the cluster config parses, and each mistake names its line") {
  auto c = ClusterConfig::parse(
      "# comment\nsecret-file s\ndurability relaxed\nnode 1 127.0.0.1:7001 admin 127.0.0.1:7101 data d1\n"
      "type order hash slots=64 partitions=4\ntype item range splits=b,m\n",
      "/tmp");
  REQUIRE_MESSAGE(c.is_ok(), c.status().to_string());
  CHECK(c->durability == "relaxed");
  CHECK(c->types[0].scheme.slots == 64);
  CHECK(c->types[1].split_keys.size() == 2);
  struct Bad {
    std::string text, expect;
  };
  for (auto& b : std::vector<Bad>{
           {"secret-file s\nnode 1 127.0.0.1 admin 127.0.0.1:1 data d\n", "line 2: address '127.0.0.1' is not host:port"},
           {"secret-file s\nnode 0 127.0.0.1:1 admin 127.0.0.1:2 data d\n", "line 2: node id must be a positive integer"},
           {"secret-file s\nnode 1 127.0.0.1:1\n", "line 2: expected: node <id>"},
           {"secret-file s\nnode 1 127.0.0.1:1 admin 127.0.0.1:2 data d\nnode 1 127.0.0.1:3 admin 127.0.0.1:4 data e\n",
            "line 3: node 1 is listed twice"},
           {"secret-file s\nnode 1 127.0.0.1:1 admin 127.0.0.1:2 data d\nnode 2 127.0.0.1:1 admin 127.0.0.1:4 data e\n",
            "line 3: node 2's address 127.0.0.1:1 is node 1's already"},
           {"secret-file s\nnode 1 127.0.0.1:1 admin 127.0.0.1:2 data d\nnode 2 127.0.0.1:3 admin 127.0.0.1:1 data e\n",
            "line 3: node 2's address 127.0.0.1:1 is node 1's already"},
           {"secret-file s\nnode 1 127.0.0.1:1 admin 127.0.0.1:2 data d\nnode 2 127.0.0.1:3 admin 127.0.0.1:4 data ./d\n",
            "line 3: node 2's data directory ./d is node 1's already"},
           {"secret-file s\nnode 1 127.0.0.1:1 admin 127.0.0.1:1 data d\n",
            "line 2: node 1 has 127.0.0.1:1 as both its node and its admin address"},
           {"secret-file s\ntype order hash slots=0\n", "line 2: unknown or malformed type option 'slots=0'"},
           {"secret-file s\ntype item range splits=m,b\n", "line 2: split keys must be sorted and distinct"},
           {"secret-file s\ntype item sorted\n", "a type's scheme is hash or range"},
           {"secret-file s\ndurability fast\n", "durability must be strict or relaxed"},
           {"secret-file s\nnodes 3\n", "line 2: unknown setting 'nodes'"},
           {"secret-file s\n", "cluster config lists no nodes"},
           {"node 1 127.0.0.1:1 admin 127.0.0.1:2 data d\n", "names no secret-file"},
       }) {
    CAPTURE(b.text);
    auto r = ClusterConfig::parse(b.text, "/tmp");
    CHECK(r.status().code() == Code::kInvalidArgument);
    CHECK(r.status().message().find(b.expect) != std::string::npos);
  }
}

TEST_CASE("a missing or short secret is refused") {
  auto c = ClusterConfig::parse("secret-file /nonexistent/secret\nnode 1 127.0.0.1:1 admin 127.0.0.1:2 data d\n", "/");
  REQUIRE(c.is_ok());
  CHECK(c->read_secret().status().message().find("cannot read the cluster secret file") != std::string::npos);
}

TEST_CASE("a config without a secret is refused unless it says insecure-dev") {
  const std::string node = "node 1 127.0.0.1:1 admin 127.0.0.1:2 data d\n";
  auto none = ClusterConfig::parse(node, "/");
  REQUIRE_FALSE(none.is_ok());
  CHECK(none.status().message().find("names no secret-file") != std::string::npos);
  CHECK(none.status().message().find("insecure-dev") != std::string::npos);
  auto both = ClusterConfig::parse("secret-file s\ninsecure-dev\n" + node, "/");
  REQUIRE_FALSE(both.is_ok());
  CHECK(both.status().message().find("choose one") != std::string::npos);
  CHECK_FALSE(ClusterConfig::parse("insecure-dev yes\n" + node, "/").is_ok());
  auto dev = ClusterConfig::parse("insecure-dev\n" + node, "/");
  REQUIRE(dev.is_ok());
  CHECK(dev->insecure_dev);
  auto secret = dev->read_secret();
  REQUIRE(secret.is_ok());
  CHECK(*secret == tandem::partition::kInsecureDevSecret);
}

TEST_CASE("subtracting ranges keeps exactly the uncovered pieces") {
    std::vector<KeyRange> r{{"b", "h"}};
  CHECK(subtract_ranges(r, {}) == r);
  CHECK(subtract_ranges(r, {{"a", "z"}}).empty());
  CHECK(subtract_ranges(r, {{"d", "f"}}) == std::vector<KeyRange>{{"b", "d"}, {"f", "h"}});
  CHECK(subtract_ranges(r, {{"a", "c"}, {"g", "z"}}) == std::vector<KeyRange>{{"c", "g"}});
  CHECK(subtract_ranges(r, {{"h", "k"}, {"a", "b"}}) == r);  // touching is not covering
  CHECK(subtract_ranges({{"b", "d"}, {"e", "h"}}, {{"c", "f"}}) == std::vector<KeyRange>{{"b", "c"}, {"f", "h"}});
}

TEST_CASE("a node that missed a split keeps the half it still owns when the other half moves away") {
  // Partition p is split on node 1 (the new half stays there); a node that still holds the map
  // from before the split then learns that p moved to node 2. What it gives up is p's old range
  // less the new half it owns.
  auto before = PartitionMap::initial(three_nodes(), {{"order", {TypeScheme::Kind::kHash, 64}, 3, {}}});
  uint32_t pid = 0;
  for (auto& p : before.partitions)
    if (p.owner == 1) pid = p.id;
  REQUIRE(pid != 0);
  auto split = before.with_split(pid, "");
  REQUIRE(split);
  auto moved = split->with_move(pid, 2);
  REQUIRE(moved);
  auto lost = std::vector<KeyRange>{before.key_range(*before.partition(pid))};
  std::vector<KeyRange> owned;
  for (auto& p : moved->partitions)
    if (p.owner == 1) owned.push_back(moved->key_range(p));
  REQUIRE(owned.size() == 1);  // the new half
  auto released = subtract_ranges(lost, owned);
  REQUIRE(released.size() == 1);
  CHECK(released[0] == moved->key_range(*moved->partition(pid)));  // exactly the half that left
}

TEST_CASE("a rebalance plan evens out partition counts, and leaves a node that is down out of every move") {
  // Six partitions, all on node 1 (as after two nodes joined empty).
  auto m = PartitionMap::initial(three_nodes(), {{"order", {TypeScheme::Kind::kHash, 60}, 6, {}}});
  for (auto& p : m.partitions) p.owner = 1;
  auto counts = [&](const std::vector<std::pair<uint32_t, uint32_t>>& plan) {
    std::map<uint32_t, int> per_node;
    for (auto& p : m.partitions) {
      uint32_t owner = p.owner;
      for (auto& [pid, to] : plan)
        if (pid == p.id) owner = to;
      ++per_node[owner];
    }
    return per_node;
  };
  auto all = counts(m.rebalance_plan());
  CHECK(all[1] == 2);
  CHECK(all[2] == 2);
  CHECK(all[3] == 2);
  auto plan = m.rebalance_plan({3});
  for (auto& [pid, to] : plan) CHECK(to != 3);
  auto without3 = counts(plan);
  CHECK(without3[1] == 3);
  CHECK(without3[2] == 3);
  CHECK(without3[3] == 0);
  // Node 1 down: its partitions cannot be copied off it, so nothing moves.
  CHECK(m.rebalance_plan({1}).empty());
}
