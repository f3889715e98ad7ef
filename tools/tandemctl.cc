// tandemctl: the admin CLI of a Tandem cluster.
#include <algorithm>
#include <cstdio>
#include <future>
#include <map>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include <tandem/core/bytes.h>
#include <tandem/core/log.h>
#include <tandem/entity/client.h>
#include <tandem/partition/partition_map.h>

#include "admin_command.h"

namespace {

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

bool g_json = false;  // --json: errors are JSON on stdout too, for scripts

// A command line that does not parse: why and the usage on stderr (with --json also
// {"error": ...} on stdout), exit code 2.
int usage_error(const std::string& why) {
  std::fprintf(stderr, "tandemctl: %s\n%s", why.c_str(), tandem::admin::kUsage);
  if (g_json) std::printf("{\"error\":\"%s\"}\n", json_escape(why).c_str());
  return 2;
}

// Says what went wrong (stderr; with --json also {"error": ...} on stdout) and gives exit code 1.
int fail(const std::string& what) {
  std::fprintf(stderr, "tandemctl: %s\n", what.c_str());
  if (g_json) std::printf("{\"error\":\"%s\"}\n", json_escape(what).c_str());
  return 1;
}

std::string printable(const std::string& s) { return tandem::EntityRef{"", s}.to_string().substr(1); }

// Asks each of `nodes` (`ask(id)` gives a Result); a node that does not answer is named on
// stderr (with --json, as an element {"node": N, "error": ...} of the array being printed,
// `first` saying whether it is the first) and counted (the return value), the others' answers
// go to `use(id, answer)`.
template <class Ask, class Use>
int each_node(const std::vector<uint32_t>& nodes, bool& first, Ask ask, Use use) {
  int failed = 0;
  for (auto id : nodes) {
    auto r = ask(id);
    if (!r) {
      ++failed;
      std::fprintf(stderr, "tandemctl: node %u: %s\n", id, r.status().message().c_str());
      if (g_json) std::printf("%s{\"node\":%u,\"error\":\"%s\"}", first ? "" : ",", id, json_escape(r.status().message()).c_str());
      first = false;
      continue;
    }
    use(id, *r);
  }
  return failed;
}

// Sends a map-changing command to the controller and prints what it did. Moves can take a
// while: up to 10 minutes.
int to_controller(tandem::entity::Client& c, const tandem::admin::Command& cmd) {
  const std::string& method = cmd.method;
  std::string body = cmd.body;
  bool json = cmd.json;
  auto controller = c.controller();
  if (!controller) return fail("no controller answered (" + controller.status().message() + "); nothing changed");
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
  if (!r) return fail(r.status().message());
  if (json) std::printf("{\"ok\":true,\"message\":\"%s\"}\n", json_escape(*r).c_str());
  else std::printf("%s\n", r->substr(0, r->find_last_not_of('\n') + 1).c_str());  // one newline at the end
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  auto parsed = tandem::admin::parse_command(argc, argv);
  if (!parsed) {
    for (int i = 1; i < argc; ++i) g_json |= std::string_view(argv[i]) == "--json";
    return usage_error(parsed.status().message());
  }
  const tandem::admin::Command& command = *parsed;
  if (command.help) {
    std::fputs(tandem::admin::kUsage, stdout);
    return 0;
  }
  tandem::log::set_level("error");
  const std::string& cmd = command.name;
  const std::vector<std::string>& args = command.args;
  bool json = command.json;
  g_json = json;

  tandem::entity::Client::Options o;
  o.config_path = command.config;
  o.role = "admin";
  o.connect_timeout_ms = 3'000;  // an admin wants a prompt answer when the cluster is down
  auto client = tandem::entity::Client::connect(o);
  if (!client) return fail("cannot reach the cluster (" + o.config_path + "): " + client.status().to_string());
  auto& c = **client;
  std::vector<uint32_t> nodes = c.node_ids();
  if (command.node) {
    bool known = false;
    for (auto id : nodes) known |= id == command.node;
    if (!known) return fail("no node " + std::to_string(command.node) + " in " + o.config_path);
    nodes = {command.node};
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

  if (cmd == "stages") {
    if (json) std::printf("[");
    else std::printf("%-5s %-8s %12s %10s %10s %10s %12s\n", "node", "stage", "count", "p50_us", "p90_us", "p99_us", "mean_us");
    bool first = true;
    int failed = each_node(nodes, first, [&](uint32_t id) { return c.stages(id); }, [&](uint32_t id, const auto& stages) {
      for (auto& [name, h] : stages) {
        double mean = h.count() ? static_cast<double>(h.sum_us) / static_cast<double>(h.count()) : 0;
        if (json)
          std::printf("%s{\"node\":%u,\"stage\":\"%s\",\"count\":%llu,\"p50_us\":%.0f,\"p90_us\":%.0f,\"p99_us\":%.0f,\"mean_us\":%.1f}",
                      first ? "" : ",", id, json_escape(name).c_str(), static_cast<unsigned long long>(h.count()),
                      h.quantile_us(0.5), h.quantile_us(0.9), h.quantile_us(0.99), mean);
        else
          std::printf("%-5u %-8s %12llu %10.0f %10.0f %10.0f %12.1f\n", id, name.c_str(), static_cast<unsigned long long>(h.count()),
                      h.quantile_us(0.5), h.quantile_us(0.9), h.quantile_us(0.99), mean);
        first = false;
      }
    });
    if (json) std::printf("]\n");
    return failed ? 1 : 0;
  }

  if (cmd == "partitions") {
    auto m = tandem::partition::PartitionMap::decode(c.map_bytes());
    if (!m) return fail(m.status().to_string());
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
    tandem::EntityRef ref{args[0], args[1]};  // checked by the parser
    uint32_t owner = c.owner_of(ref);
    if (owner == 0) return fail("unknown entity type '" + ref.type + "'");
    auto r = c.request(owner, "inspect", ref.type + std::string(1, '\0') + ref.key);
    if (!r) return fail("node " + std::to_string(owner) + " (which owns " + ref.to_string() + "): " + r.status().to_string());
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
    if (json) std::printf("[");
    bool first = true;
    size_t total = 0;
    int failed = each_node(nodes, first, [&](uint32_t id) { return c.request(id, "parked", ""); }, [&](uint32_t id, const std::string& body) {
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
    });
    if (json) std::printf("]\n");
    else if (total == 0 && !failed) std::printf("no parked messages\n");
    else if (total == 0 && static_cast<size_t>(failed) < nodes.size())
      std::printf("no parked messages on the %zu of %zu nodes that answered\n", nodes.size() - failed, nodes.size());
    return failed ? 1 : 0;
  }

  if (cmd == "controller") {
    auto ctl = c.controller();
    if (!ctl) return fail("no controller answered (" + ctl.status().message() + ")");
    if (json) std::printf("{\"controller\":%u}\n", *ctl);
    else std::printf("node %u is the controller\n", *ctl);
    return 0;
  }

  if (!command.method.empty()) {  // move, split, merge, rebalance, drain-node, add-node
    if (cmd == "move") {
      bool known = false;
      for (auto id : c.node_ids()) known |= id == command.target_node;
      if (!known) return fail("no node " + std::to_string(command.target_node) + " in " + o.config_path + "; nothing changed");
    }
    return to_controller(c, command);
  }

  if (cmd == "redrive") {
    tandem::Status last = tandem::Status::not_found("no node holds parked message " + args[0]);
    for (auto id : nodes) {
      auto r = c.request(id, "redrive", args[0]);
      if (r) {
        if (json) std::printf("{\"ok\":true,\"node\":%u}\n", id);
        else std::printf("redriven on node %u\n", id);
        return 0;
      }
      if (r.status().code() != tandem::Code::kNotFound) last = r.status();
    }
    return fail(last.to_string());
  }
  return usage_error("unknown command '" + cmd + "'");
}
