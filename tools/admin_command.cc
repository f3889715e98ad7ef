#include "admin_command.h"

#include <charconv>
#include <cstdlib>
#include <map>
#include <set>
#include <string_view>

#include <tandem/core/bytes.h>
#include <tandem/core/flags.h>
#include <tandem/core/ids.h>
#include <tandem/core/net.h>

namespace tandem::admin {

const char* const kUsage =
    "usage: tandemctl [--config FILE] [--json] [--node N] COMMAND [ARGS]\n"
    "  status              every node: partitions, outbox depth, epoch, counters\n"
    "  partitions          the partition map: type, range, owner\n"
    "  stages              where messages spend their time on each node: p50/p90/p99 per stage\n"
    "  controller          which node holds the controller role (moves, splits and the rest go there)\n"
    "  inspect TYPE KEY    an entity: state, activities, operations, pending outbox rows\n"
    "  parked              parked (poison) messages on every node\n"
    "  redrive ID          run a parked message again\n"
    "  move PARTITION NODE move a partition to a node (state, activities, operations, timers, outbox)\n"
    "  split PARTITION [AT] split a partition: hash at a slot (default: the middle), range at a key\n"
    "                      (default: the median key)\n"
    "  merge PARTITION PARTITION  join two adjacent partitions of one type on one node\n"
    "  rebalance [--dry-run] even out partitions over the nodes, one move at a time\n"
    "  drain-node NODE     move every partition off a node; no partition moves to it afterwards\n"
    "  add-node NODE ADDRESS ADMIN_ADDRESS  add a running node (started with a config that lists it)\n"
    "  help, -h, --help    this text\n"
    "  --config defaults to $TANDEM_CLUSTER_DIR/cluster.conf, else .tandem/cluster/cluster.conf; --node limits\n"
    "  status, stages and parked to one node; --json prints JSON (errors too: {\"error\": ...}).\n";

namespace {

// A positive 32-bit id (node or partition), or an error naming what was expected.
Result<uint32_t> parse_id(const std::string& s, const std::string& what) {
  uint64_t v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size() || v == 0 || v > UINT32_MAX)
    return Status::invalid_argument(what + ", not '" + s + "'");
  return static_cast<uint32_t>(v);
}

const char* const kPartitionId = "PARTITION must be a partition id (tandemctl partitions lists them)";
const char* const kNodeId = "NODE must be a node id";

}  // namespace

Result<Command> parse_command(int argc, char** argv) {
  Command c;
  const std::set<std::string> with_value = {"config", "node"};
  // -h in place of the command (flags may come before it), never as an argument's value.
  for (int i = 1; i < argc; ++i) {
    std::string a(argv[i]);
    if (a == "-h") {
      c.help = true;
      return c;
    }
    if (a.rfind("--", 0) != 0) break;  // the command: the rest are its arguments
    if (with_value.count(a.substr(2))) ++i;  // its value is next
  }
  auto f = Flags::parse(argc, argv, 1, with_value, {"json", "help", "dry-run"});
  if (!f) return f.status();
  auto& pos = f->positional();
  if (f->has("help") || (!pos.empty() && pos[0] == "help")) {
    c.help = true;
    return c;
  }
  if (pos.empty()) return Status::invalid_argument("missing command");
  c.name = pos[0];
  c.args.assign(pos.begin() + 1, pos.end());
  // Beside a cluster that `tandem-cluster up` started in $TANDEM_CLUSTER_DIR, as that script does.
  if (const char* dir = std::getenv("TANDEM_CLUSTER_DIR"); dir && *dir) c.config = std::string(dir) + "/cluster.conf";
  c.config = f->str("config", c.config);
  if (c.config.empty()) return Status::invalid_argument("--config needs a file name");
  c.json = f->has("json");
  if (f->has("node")) {
    auto n = parse_id(f->str("node", ""), "--node expects a node id (a positive integer)");
    if (!n) return n.status();
    c.node = *n;
  }
  if (f->has("dry-run") && c.name != "rebalance")
    return Status::invalid_argument("--dry-run applies to rebalance only");

  struct Arity {
    size_t min, max;
  };
  static const std::map<std::string, Arity> kArity{
      {"status", {0, 0}}, {"stages", {0, 0}}, {"partitions", {0, 0}}, {"controller", {0, 0}}, {"inspect", {2, 2}},
      {"parked", {0, 0}}, {"redrive", {1, 1}},     {"move", {2, 2}},       {"split", {1, 2}},
      {"merge", {2, 2}},  {"rebalance", {0, 0}},   {"drain-node", {1, 1}}, {"add-node", {3, 3}}};
  auto ar = kArity.find(c.name);
  if (ar == kArity.end()) return Status::invalid_argument("unknown command '" + c.name + "'");
  if (c.args.size() < ar->second.min || c.args.size() > ar->second.max) {
    std::string want = std::to_string(ar->second.min);
    if (ar->second.max != ar->second.min) want += " or " + std::to_string(ar->second.max);
    return Status::invalid_argument("'" + c.name + "' takes " + want + " argument(s), got " + std::to_string(c.args.size()));
  }

  const auto& a = c.args;
  if (c.name == "inspect") {
    if (auto v = validate_ref(EntityRef{a[0], a[1]}); !v) return v;
  } else if (c.name == "redrive") {
    if (a[0].empty()) return Status::invalid_argument("ID must be a parked message id (tandemctl parked lists them)");
  } else if (c.name == "move" || c.name == "split" || c.name == "merge") {
    auto pid = parse_id(a[0], kPartitionId);
    if (!pid) return pid.status();
    std::string arg = a.size() > 1 ? a[1] : "";
    if (c.name == "split" && a.size() > 1 && arg.empty())
      return Status::invalid_argument("the split point is empty: give a slot or a key, or leave it out for the middle");
    if (c.name == "merge") {
      if (auto other = parse_id(arg, "PARTITION must be a partition id"); !other) return other.status();
    } else if (c.name == "move") {
      auto to = parse_id(arg, kNodeId);
      if (!to) return to.status();
      c.target_node = *to;
    }
    c.method = c.name;
    c.body = ByteWriter().varint(*pid).bytes(arg).take();
  } else if (c.name == "rebalance") {
    c.method = "rebalance";
    c.body = ByteWriter().varint(f->has("dry-run") ? 1 : 0).bytes("").take();
  } else if (c.name == "drain-node") {
    auto n = parse_id(a[0], kNodeId);
    if (!n) return n.status();
    c.target_node = *n;
    c.method = "drain";
    c.body = ByteWriter().varint(*n).bytes("").take();
  } else if (c.name == "add-node") {
    auto n = parse_id(a[0], kNodeId);
    if (!n) return n.status();
    for (auto* addr : {&a[1], &a[2]})
      if (auto e = net::Endpoint::parse(*addr); !e) return e.status();
    c.target_node = *n;
    c.method = "add-node";
    c.body = ByteWriter().varint(*n).bytes(a[1] + " " + a[2]).take();
  }
  return c;
}

}  // namespace tandem::admin
