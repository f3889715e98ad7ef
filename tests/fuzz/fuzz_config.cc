// libFuzzer target: the cluster config parser (an operator-written file) and the etcd address
// parser. Bad text must give an error naming the line, never a crash or a hang.
#include <cstdint>
#include <string>

#include <tandem/core/etcd.h>
#include <tandem/partition/partition_map.h>

using namespace tandem;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string text(reinterpret_cast<const char*>(data), size);
  auto c = partition::ClusterConfig::parse(text, "/nonexistent");
  if (c && !c->nodes.empty() && !c->types.empty()) {
    auto m = partition::PartitionMap::initial(c->nodes, c->types);
    auto again = partition::PartitionMap::decode(m.encode());
    if (!again || again->partitions.size() != m.partitions.size()) __builtin_trap();
  }
  (void)EtcdAddress::parse(text);
  return 0;
}
