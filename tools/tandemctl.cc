// tandemctl: the admin CLI of a Tandem cluster.
#include <algorithm>
#include <charconv>
#include <cstdio>
#include <future>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include <tandem/core/bytes.h>
#include <tandem/core/flags.h>
#include <tandem/core/log.h>
#include <tandem/core/net.h>
#include <tandem/entity/client.h>
#include <tandem/partition/partition_map.h>

namespace {

constexpr const char* kUsage =
    "usage: tandemctl [--config FILE] [--json] [--node N] COMMAND [ARGS]\n"
    "  status              every node: partitions, outbox depth, epoch, counters\n"
    "  partitions          the partition map: type, range, owner\n"
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
    "  --config defaults to .tandem/cluster/cluster.conf; --node limits status and parked to one node.\n";

int usage_error(const std::string& why) {
  std::fprintf(stderr, "tandemctl: %s\n%s", why.c_str(), kUsage);
  return 2;
}

std::string json_escape(const std::string& s) {
  std::string o;
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') {
      o += '\\';
      o += static_cast<char>(c);
    } else if (c < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      o += buf;
    } else {
      o += static_cast<char>(c);
    }
  }
  return o;
}

// "key value" lines -> ordered pairs.
std::vector<std::pair<std::string, std::string>> kv_lines(const std::string& text) {
  std::vector<std::pair<std::string, std::string>> out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    auto sp = line.find(' ');
    if (sp == std::string::npos) continue;
    out.emplace_back(line.substr(0, sp), line.substr(sp + 1));
  }
  return out;
}

std::string printable(const std::string& s) { return tandem::EntityRef{"", s}.to_string().substr(1); }

// Sends a map-changing command to the controller and prints what it did. Moves can take a
// while: up to 10 minutes.
int to_controller(tandem::entity::Client& c, const std::string& method, std::string body, bool json) {
  auto controller = c.controller();
  if (!controller) {
    std::fprintf(stderr, "tandemctl: no controller answered (%s); nothing changed\n", controller.status().message().c_str());
    return 1;
  }
  // Runs the command while showing the controller's progress (on stderr) as it changes.
  auto pending = std::async(std::launch::async, [&c, ctl = *controller, method, body = std::move(body)]() mutable {
    return c.request(ctl, method, std::move(body), 600'000);
  });
  std::string shown;
  while (pending.wait_for(std::chrono::milliseconds(100)) != std::future_status::ready) {
    auto p = c.request(*controller, "progress", "", 2000);
    if (p && !p->empty() && *p != shown) {
      shown = *p;
      std::fprintf(stderr, "  ... %s\n", shown.c_str());
    }
  }
  auto r = pending.get();
  if (!r) {
    std::fprintf(stderr, "tandemctl: %s\n", r.status().message().c_str());
    return 1;
  }
  if (json) std::printf("{\"ok\":true,\"message\":\"%s\"}\n", json_escape(*r).c_str());
  else std::printf("%s\n", r->c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  auto f = tandem::Flags::parse(argc, argv, 1, {"config", "node"}, {"json", "help", "dry-run"});
  if (!f) return usage_error(f.status().message());
  if (f->has("help")) {
    std::fputs(kUsage, stdout);
    return 0;
  }
  tandem::log::set_level("error");
  auto& args = f->positional();
  if (args.empty()) return usage_error("missing command");
  const std::string& cmd = args[0];
  static const std::map<std::string, size_t> kArity{{"status", 1}, {"partitions", 1}, {"inspect", 3}, {"parked", 1}, {"redrive", 2}, {"move", 3}, {"split", 2}, {"merge", 3}, {"rebalance", 1}, {"drain-node", 2}, {"add-node", 4}, {"controller", 1}};
  auto ar = kArity.find(cmd);
  if (ar == kArity.end()) return usage_error("unknown command '" + cmd + "'");
  if (args.size() != ar->second && !(cmd == "split" && args.size() == 3))
    return usage_error("'" + cmd + "' takes " + std::to_string(ar->second - 1) + " argument(s), got " +
                       std::to_string(args.size() - 1));
  bool json = f->has("json");
  auto node_flag = f->u64("node", 0);
  if (!node_flag) return usage_error(node_flag.status().message());

  tandem::entity::Client::Options o;
  o.config_path = f->str("config", ".tandem/cluster/cluster.conf");
  o.role = "admin";
  o.connect_timeout_ms = 3'000;  // an admin wants a prompt answer when the cluster is down
  auto client = tandem::entity::Client::connect(o);
  if (!client) {
    std::fprintf(stderr, "tandemctl: cannot reach the cluster (%s): %s\n", o.config_path.c_str(),
                 client.status().to_string().c_str());
    return 1;
  }
  auto& c = **client;
  std::vector<uint32_t> nodes = c.node_ids();
  if (*node_flag) {
    bool known = false;
    for (auto id : nodes) known |= id == *node_flag;
    if (!known) {
      std::fprintf(stderr, "tandemctl: no node %llu in %s\n", static_cast<unsigned long long>(*node_flag), o.config_path.c_str());
      return 1;
    }
    nodes = {static_cast<uint32_t>(*node_flag)};
  }

  if (cmd == "status") {
    int failed = 0;
    if (json) std::printf("[");
    else std::printf("%-5s %-22s %-6s %-10s %-8s %-7s %-10s %-8s\n", "node", "address", "epoch", "partitions", "outbox", "timers", "applied", "parked");
    for (size_t i = 0; i < nodes.size(); ++i) {
      auto r = c.request(nodes[i], "status", "");
      if (!r) {
        ++failed;
        if (json) std::printf("%s{\"node\":%u,\"error\":\"%s\"}", i ? "," : "", nodes[i], json_escape(r.status().message()).c_str());
        else std::printf("%-5u unreachable: %s\n", nodes[i], r.status().message().c_str());
        continue;
      }
      auto kv = kv_lines(*r);
      std::map<std::string, std::string> m(kv.begin(), kv.end());
      if (json) {
        std::printf("%s{", i ? "," : "");
        for (size_t k = 0; k < kv.size(); ++k) {
          bool num = !kv[k].second.empty() && kv[k].second.find_first_not_of("0123456789") == std::string::npos;
          std::printf("%s\"%s\":%s%s%s", k ? "," : "", kv[k].first.c_str(), num ? "" : "\"",
                      json_escape(kv[k].second).c_str(), num ? "" : "\"");
        }
        std::printf("}");
      } else {
        std::printf("%-5s %-22s %-6s %-10s %-8s %-7s %-10s %-8s\n", m["node"].c_str(), m["address"].c_str(), m["epoch"].c_str(),
                    m["partitions"].c_str(), m["outbox_depth"].c_str(), m["timers"].c_str(), m["applied"].c_str(),
                    m["parked"].c_str());
      }
    }
    if (json) std::printf("]\n");
    return failed ? 1 : 0;
  }

  if (cmd == "partitions") {
    auto m = tandem::partition::PartitionMap::decode(c.map_bytes());
    if (!m) {
      std::fprintf(stderr, "tandemctl: %s\n", m.status().to_string().c_str());
      return 1;
    }
    if (json) std::printf("{\"epoch\":%llu,\"partitions\":[", static_cast<unsigned long long>(m->epoch));
    else std::printf("epoch %llu\n%-4s %-10s %-24s %-5s\n", static_cast<unsigned long long>(m->epoch), "id", "type", "range", "owner");
    for (size_t i = 0; i < m->partitions.size(); ++i) {
      auto& p = m->partitions[i];
      auto* t = m->type(p.type);
      bool hash = t && t->scheme.kind == tandem::partition::TypeScheme::Kind::kHash;
      std::string range = hash ? "slots " + std::to_string(p.slot_begin) + ".." + std::to_string(p.slot_end)
                               : "[" + printable(p.key_begin) + ", " + (p.key_end.empty() ? "end" : printable(p.key_end)) + ")";
      if (json)
        std::printf("%s{\"id\":%u,\"type\":\"%s\",\"range\":\"%s\",\"owner\":%u}", i ? "," : "", p.id,
                    json_escape(p.type).c_str(), json_escape(range).c_str(), p.owner);
      else
        std::printf("%-4u %-10s %-24s %-5u\n", p.id, p.type.c_str(), range.c_str(), p.owner);
    }
    if (json) std::printf("]}\n");
    return 0;
  }

  if (cmd == "inspect") {
    tandem::EntityRef ref{args[1], args[2]};
    if (auto v = tandem::validate_ref(ref); !v) return usage_error(v.message());
    uint32_t owner = c.owner_of(ref);
    if (owner == 0) {
      std::fprintf(stderr, "tandemctl: unknown entity type '%s'\n", ref.type.c_str());
      return 1;
    }
    auto r = c.request(owner, "inspect", ref.type + std::string(1, '\0') + ref.key);
    if (!r) {
      std::fprintf(stderr, "tandemctl: %s\n", r.status().to_string().c_str());
      return 1;
    }
    if (json) {
      std::printf("{\"node\":%u,\"lines\":[", owner);
      std::istringstream in(*r);
      std::string line;
      bool first = true;
      while (std::getline(in, line)) {
        std::printf("%s\"%s\"", first ? "" : ",", json_escape(line).c_str());
        first = false;
      }
      std::printf("]}\n");
    } else {
      std::fputs(r->c_str(), stdout);
    }
    return 0;
  }

  if (cmd == "parked") {
    int failed = 0;
    if (json) std::printf("[");
    bool first = true;
    size_t total = 0;
    for (auto id : nodes) {
      auto r = c.request(id, "parked", "");
      if (!r) {
        ++failed;
        std::fprintf(stderr, "tandemctl: node %u: %s\n", id, r.status().message().c_str());
        continue;
      }
      auto body = r.value();
      std::vector<std::string> l;
      {
        tandem::ByteReader br(body);
        auto v = br.u8();
        auto n = br.varint();
        for (uint64_t i = 0; v && n && i < *n; ++i)
          if (auto s = br.bytes()) l.push_back(*s);
      }
      for (size_t i = 0; i + 4 < l.size(); i += 5) {
        ++total;
        if (json)
          std::printf("%s{\"node\":%u,\"id\":\"%s\",\"to\":\"%s\",\"from\":\"%s\",\"kind\":\"%s\",\"reason\":\"%s\"}",
                      first ? "" : ",", id, l[i].c_str(), json_escape(l[i + 1]).c_str(), json_escape(l[i + 2]).c_str(),
                      l[i + 3].c_str(), json_escape(l[i + 4]).c_str());
        else
          std::printf("node %u  %s\n  %s -> %s (%s): %s\n", id, l[i].c_str(), l[i + 2].c_str(), l[i + 1].c_str(),
                      l[i + 3].c_str(), l[i + 4].c_str());
        first = false;
      }
    }
    if (json) std::printf("]\n");
    else if (total == 0 && !failed) std::printf("no parked messages\n");
    return failed ? 1 : 0;
  }

  if (cmd == "add-node") {
    uint64_t id = 0;
    auto [p, ec] = std::from_chars(args[1].data(), args[1].data() + args[1].size(), id);
    if (ec != std::errc() || p != args[1].data() + args[1].size() || id == 0 || id > UINT32_MAX)
      return usage_error("NODE must be a node id, not '" + args[1] + "'");
    for (auto* a : {&args[2], &args[3]})
      if (auto e = tandem::net::Endpoint::parse(*a); !e) return usage_error(e.status().message());
    return to_controller(c, "add-node", tandem::ByteWriter().varint(id).bytes(args[2] + " " + args[3]).take(), json);
  }

  if (cmd == "controller") {
    auto ctl = c.controller();
    if (!ctl) {
      std::fprintf(stderr, "tandemctl: no controller answered (%s)\n", ctl.status().message().c_str());
      return 1;
    }
    if (json) std::printf("{\"controller\":%u}\n", *ctl);
    else std::printf("node %u is the controller\n", *ctl);
    return 0;
  }

  if (cmd == "rebalance" || cmd == "drain-node") {
    std::string method = cmd == "rebalance" ? "rebalance" : "drain";
    uint64_t arg = 0;
    if (cmd == "rebalance") {
      arg = f->has("dry-run") ? 1 : 0;
    } else {
      auto [p, ec] = std::from_chars(args[1].data(), args[1].data() + args[1].size(), arg);
      if (ec != std::errc() || p != args[1].data() + args[1].size() || arg == 0)
        return usage_error("NODE must be a node id, not '" + args[1] + "'");
    }
    return to_controller(c, method, tandem::ByteWriter().varint(arg).bytes("").take(), json);
  }

  if (cmd == "move" || cmd == "split" || cmd == "merge") {
    uint64_t pid = 0;
    auto [p, ec] = std::from_chars(args[1].data(), args[1].data() + args[1].size(), pid);
    if (ec != std::errc() || p != args[1].data() + args[1].size() || pid == 0 || pid > UINT32_MAX)
      return usage_error("PARTITION must be a partition id (tandemctl partitions lists them), not '" + args[1] + "'");
    std::string arg = args.size() > 2 ? args[2] : "";
    if (cmd == "merge") {
      uint64_t other = 0;
      auto [q, ec2] = std::from_chars(arg.data(), arg.data() + arg.size(), other);
      if (ec2 != std::errc() || q != arg.data() + arg.size() || other == 0)
        return usage_error("PARTITION must be a partition id, not '" + arg + "'");
    }
    if (cmd == "move") {
      uint64_t to = 0;
      auto [q, ec2] = std::from_chars(arg.data(), arg.data() + arg.size(), to);
      if (ec2 != std::errc() || q != arg.data() + arg.size() || to == 0)
        return usage_error("NODE must be a node id, not '" + arg + "'");
      bool known = false;
      for (auto id : c.node_ids()) known |= id == to;
      if (!known) {
        std::fprintf(stderr, "tandemctl: no node %s in %s; nothing changed\n", arg.c_str(), o.config_path.c_str());
        return 1;
      }
    }
    return to_controller(c, cmd, tandem::ByteWriter().varint(pid).bytes(arg).take(), json);
  }

  if (cmd == "redrive") {
    tandem::Status last = tandem::Status::not_found("no node holds parked message " + args[1]);
    for (auto id : nodes) {
      auto r = c.request(id, "redrive", args[1]);
      if (r) {
        std::printf("redriven on node %u\n", id);
        return 0;
      }
      if (r.status().code() != tandem::Code::kNotFound) last = r.status();
    }
    std::fprintf(stderr, "tandemctl: %s\n", last.to_string().c_str());
    return 1;
  }
  return usage_error("unknown command '" + cmd + "'");
}
