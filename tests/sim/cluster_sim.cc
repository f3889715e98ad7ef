#include "cluster_sim.h"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <set>

#include <tandem/core/bytes.h>
#include <tandem/core/log.h>
#include <tandem/entity/client.h>
#include <tandem/partition/power_cut.h>
#include <tandem/partition/store.h>

#include "cluster.h"
#include "entities.h"
#include "sim.h"

namespace tandem::sim {

namespace {

using entity::ClientReply;

// The cluster's config and secret, written once per test process (the nodes and the client
// read them from files, as in production).
const std::string& config_dir(int nodes) {
  static std::map<int, std::string> dirs;
  auto& d = dirs[nodes];
  if (!d.empty()) return d;
  d = (std::filesystem::temp_directory_path() / ("tandem-sim-" + std::to_string(::getpid()) + "-" + std::to_string(nodes))).string();
  std::filesystem::create_directories(d);
  std::ofstream(d + "/secret") << "simulated-cluster-secret-0123456789\n";
  std::ofstream c(d + "/cluster.conf");
  c << "secret-file secret\ndurability strict\n";
  for (int n = 1; n <= nodes; ++n)
    c << "node " << n << " 10.0.0." << n << ":7000 admin 10.0.0." << n << ":7001 data node" << n << "\n";
  c << "type order hash slots=64 partitions=4\n";
  c << "type item range splits=sku-3,sku-6\n";
  c.close();
  static struct Cleanup {
    ~Cleanup() {
      for (auto& [n, dir] : dirs) std::filesystem::remove_all(dir);
    }
  } cleanup;
  return d;
}

struct Profile {  // the swarm: which faults this seed uses, and how often (per step)
  double kill = 0, power_cut = 0, pause = 0, partition = 0, move = 0, split = 0;
  double reset = 0, env_drop = 0, env_dup = 0, env_delay = 0;
  int64_t max_offset_ms = 0;
  bool rocksdb = false;  // the nodes' stores are RocksDB on disk (power cuts through PowerCut)
  bool relaxed = false, short_grace = false;
  std::string describe() const {
    char b[256];
    std::snprintf(b, sizeof b,
                  "kill=%.2f power_cut=%.2f pause=%.2f partition=%.2f move=%.2f split=%.2f reset=%.3f drop=%.2f dup=%.2f "
                  "delay=%.2f offset=%lldms durability=%s grace=%s",
                  kill, power_cut, pause, partition, move, split, reset, env_drop, env_dup, env_delay,
                  static_cast<long long>(max_offset_ms), relaxed ? "relaxed" : "strict", short_grace ? "short" : "normal");
    return std::string(b) + (rocksdb ? " store=rocksdb" : "");
  }
};

Profile draw_profile(Random& r) {
  Profile p;
  auto maybe = [&](double on, double max) { return r.chance(on) ? max * static_cast<double>(r.uniform(1001)) / 1000.0 : 0.0; };
  p.kill = maybe(0.6, 0.08);
  p.pause = maybe(0.4, 0.05);
  p.partition = maybe(0.4, 0.06);
  p.move = maybe(0.7, 0.15);
  p.split = maybe(0.5, 0.06);
  p.reset = maybe(0.4, 0.02);
  p.env_drop = maybe(0.4, 0.30);
  p.env_dup = maybe(0.4, 0.50);
  p.env_delay = maybe(0.4, 0.30);
  p.max_offset_ms = r.chance(0.5) ? static_cast<int64_t>(r.uniform(200)) : 0;
  p.relaxed = r.chance(0.3);
  p.short_grace = r.chance(0.3);
  // A power cut loses unsynced writes: only strict durability promises to survive it.
  p.power_cut = p.relaxed ? 0 : maybe(0.6, 0.5);
  return p;
}

// A RocksDB store whose writes stop reaching the disk when its process is dead (a killed
// node's object is torn down after the kill, as the in-memory store does).
class DeadDropsWrites final : public partition::Store {
 public:
  DeadDropsWrites(World& w, uint32_t proc, std::unique_ptr<partition::Store> s) : w_(w), proc_(proc), s_(std::move(s)) {}
  partition::Durability durability() const override { return s_->durability(); }
  Result<std::optional<std::string>> get(partition::Cf cf, std::string_view key) override { return s_->get(cf, key); }
  Status scan(partition::Cf cf, std::string_view b, std::string_view e, const partition::ScanFn& fn) override {
    return s_->scan(cf, b, e, fn);
  }
  Status write(partition::WriteBatch& b) override { return w_.alive(proc_) ? s_->write(b) : Status::ok(); }
  Status write(partition::WriteBatch& b, bool sync) override { return w_.alive(proc_) ? s_->write(b, sync) : Status::ok(); }
  uint64_t approximate_bytes() override { return s_->approximate_bytes(); }

 private:
  World& w_;
  uint32_t proc_;
  std::unique_ptr<partition::Store> s_;
};

class Cluster {
 public:
  Cluster(World& w, const SimOptions& o, const Profile& p)
      : w_(w), o_(o), p_(p), dir_(config_dir(o.nodes)) {
    registry_.add<reservation::Order>();
    registry_.add<reservation::Item>();
    auto c = partition::ClusterConfig::load(dir_ + "/cluster.conf");
    if (!c) throw std::runtime_error(c.status().to_string());
    config_ = std::move(*c);
    config_.durability = p.relaxed ? "relaxed" : "strict";
    nodes_.resize(static_cast<size_t>(o.nodes) + 1);
  }
  ~Cluster() {
    client_.reset();
    for (auto& n : nodes_) n.reset();
    if (p_.rocksdb) std::filesystem::remove_all(rocks_dir());
  }
  std::string rocks_dir() const { return dir_ + "/rocksdb-" + std::to_string(o_.seed); }
  std::string rocks_path(uint32_t id) const { return rocks_dir() + "/node" + std::to_string(id); }

  struct Node {
    uint32_t proc = 0;
    std::unique_ptr<SimEnv> env;
    std::unique_ptr<entity::ClusterNode> node;
    int64_t restart_at = -1;  // dead: when to start it again
    void reset() {
      node.reset();
      env.reset();
    }
  };

  // Starts node `id` as a new process (blocking: pumps the world until it serves).
  Status start(uint32_t id) {
    auto& n = nodes_[id];
    int64_t offset = p_.max_offset_ms ? static_cast<int64_t>(w_.rng().uniform(2 * p_.max_offset_ms + 1)) - p_.max_offset_ms : 0;
    n.proc = w_.spawn(id, offset);
    n.env = std::make_unique<SimEnv>(w_, n.proc);
    entity::NodeOptions no;
    // Buggify: small batches, caches and timeouts so the rare paths run often.
    no.max_batch = 1 + w_.rng().uniform(64);
    no.cache_entries = 4 + w_.rng().uniform(400);
    no.inline_local = w_.rng().chance(0.5);
    no.scan_page_bytes = 64 + w_.rng().uniform(4096);  // scans of many pages
    no.relay_ack_timeout_ms = 100 + static_cast<int64_t>(w_.rng().uniform(1500));
    no.relay_backoff_min_ms = 1 + static_cast<int64_t>(w_.rng().uniform(20));
    no.relay_backoff_max_ms = 200 + static_cast<int64_t>(w_.rng().uniform(1500));
    // A short grace makes a provider's expiry race the requester's confirm (BROKEN orders).
    no.op_grace_ms = p_.short_grace ? 500 + static_cast<int64_t>(w_.rng().uniform(1'500))
                                    : 2'000 + static_cast<int64_t>(w_.rng().uniform(10'000));
    no.faults.drop = p_.env_drop;
    no.faults.duplicate = p_.env_dup;
    no.faults.delay = p_.env_delay;
    no.faults.max_delay_us = 50'000;
    no.faults.seed = w_.rng().next();
    // Deletes of acknowledged rows: in groups of their own on a quarter of the nodes, waiting
    // 1-300 ms for other groups on the rest; chosen by the seed and the node id, so the random
    // stream (and with it the seed's schedule of faults) stays as it is.
    uint64_t h = (o_.seed + id) * 0x9E3779B97F4A7C15ull;
    no.ack_delete_linger_ms = (h >> 62) == 0 ? 0 : 1 + static_cast<int64_t>((h >> 32) % 300);
    n.node = std::make_unique<entity::ClusterNode>(*n.env, registry_, config_, id, no);
    uint32_t proc = n.proc;
    if (p_.rocksdb) {
      n.node->set_store_opener([this, proc, id](const partition::StoreOptions& so) -> Result<std::unique_ptr<partition::Store>> {
        std::filesystem::create_directories(rocks_dir());
        auto& cut = cuts_[id];
        cut = std::make_unique<partition::PowerCut>();  // tracks syncs from this open on
        auto store = partition::Store::open({rocks_path(id), so.durability, cut.get()});
        if (!store) return store.status();
        return std::unique_ptr<partition::Store>(std::make_unique<DeadDropsWrites>(w_, proc, std::move(*store)));
      });
    } else {
      n.node->set_store_opener([this, proc](const partition::StoreOptions& so) { return w_.open_store(proc, so); });
    }
    auto s = n.node->start();
    if (!s) {
      n.reset();
      return s;
    }
    n.restart_at = -1;
    return Status::ok();
  }

  // kill -9 (optionally with a power cut of its disk): the process is cut off at once and its
  // object torn down in isolation.
  void kill(uint32_t id, bool power_cut) {
    auto& n = nodes_[id];
    if (!n.node) return;
    w_.kill(n.proc);
    if (power_cut && p_.rocksdb) {
      // What the disk holds at this instant, taken before the store is torn down (its close
      // would sync more); it replaces the folder once the store is gone.
      std::filesystem::remove_all(rocks_path(id) + ".cut");
      if (auto s = cuts_[id]->copy_after_cut(rocks_path(id), rocks_path(id) + ".cut"); !s)
        throw std::runtime_error(s.to_string());
      n.reset();
      std::filesystem::remove_all(rocks_path(id));
      std::filesystem::rename(rocks_path(id) + ".cut", rocks_path(id));
    } else if (power_cut) {
      w_.power_cut(dir_ + "/node" + std::to_string(id));
    }
    n.reset();
    n.restart_at = w_.now() + 200'000 + static_cast<int64_t>(w_.rng().uniform(3'000'000));
  }

  bool up(uint32_t id) const { return nodes_[id].node != nullptr; }
  uint32_t proc(uint32_t id) const { return nodes_[id].proc; }
  Node& node(uint32_t id) { return nodes_[id]; }
  int size() const { return o_.nodes; }
  const std::string& dir() const { return dir_; }

  std::unique_ptr<entity::Client> client_;
  std::unique_ptr<SimEnv> client_env_;

 private:
  World& w_;
  const SimOptions& o_;
  const Profile& p_;
  std::string dir_;
  entity::Registry registry_;
  partition::ClusterConfig config_;
  std::map<uint32_t, std::unique_ptr<partition::PowerCut>> cuts_;  // RocksDB seeds: per node, since its last open
  std::vector<Node> nodes_;
};

struct OrderTrack {
  std::set<int> answers;  // OrderStatus values answered (terminal ones)
  bool answered = false;
  bool placed = false;
};

std::string order_key(int i) { return "order-" + std::to_string(i); }
std::string item_key(int i) { return "sku-" + std::to_string(i); }

// The reservation invariant, read back from every store through the client. An order may end
// BROKEN (a provider expired its operation before the confirm came: an outage longer than the
// grace); its lines are each either sold or returned, so an item's sold count lies between
// what its confirmed orders hold and that plus its broken orders' lines.
template <class Violation>
void check_stores(entity::Client& cl, const SimOptions& o, const std::vector<OrderTrack>& orders, SimResult& res,
                  Violation&& violation) {
  struct ItemRow {
    uint64_t initial, stock, reserved, sold;
  };
  std::map<std::string, ItemRow> items;
  auto s = cl.for_each_state("item", [&](const std::string& key, entity::Payload& p) {
    auto r = p.get<::ItemState>();
    items[key] = {r.getInitial(), r.getStock(), r.getReserved(), r.getSold()};
  });
  if (!s) return violation("reading items: " + s.to_string());
  std::map<std::string, int> status;
  std::map<std::string, uint64_t> sold_min, broken_lines;
  s = cl.for_each_state("order", [&](const std::string& key, entity::Payload& p) {
    auto r = p.get<::OrderState>();
    status[key] = static_cast<int>(r.getStatus());
    for (auto line : r.getLines()) {
      if (r.getStatus() == ::OrderStatus::CONFIRMED) sold_min[line.getItem().cStr()] += line.getQty();
      if (r.getStatus() == ::OrderStatus::BROKEN) broken_lines[line.getItem().cStr()] += line.getQty();
    }
  });
  if (!s) return violation("reading orders: " + s.to_string());
  if (items.size() != static_cast<size_t>(o.items)) violation(std::to_string(items.size()) + " items stored");
  if (status.size() != static_cast<size_t>(o.orders)) violation(std::to_string(status.size()) + " orders stored");
  for (auto& [key, it] : items) {
    if (it.stock + it.reserved + it.sold != it.initial) violation("item " + key + ": stock+reserved+sold != initial");
    if (it.reserved != 0) violation("item " + key + ": " + std::to_string(it.reserved) + " still reserved");
    if (it.sold < sold_min[key] || it.sold > sold_min[key] + broken_lines[key])
      violation("item " + key + ": sold " + std::to_string(it.sold) + " but confirmed orders hold " +
                std::to_string(sold_min[key]) + " (+" + std::to_string(broken_lines[key]) + " in broken ones)");
  }
  for (int i = 0; i < o.orders; ++i) {
    auto st = status[order_key(i)];
    if (st == static_cast<int>(::OrderStatus::CONFIRMED)) ++res.confirmed;
    else if (st == static_cast<int>(::OrderStatus::CANCELLED)) ++res.cancelled;
    else if (st == static_cast<int>(::OrderStatus::BROKEN)) ++res.faults["broken_order"];
    else violation(order_key(i) + " is not terminal (status " + std::to_string(st) + ")");
    for (int a : orders[static_cast<size_t>(i)].answers)
      if (a != st) violation(order_key(i) + " was answered " + std::to_string(a) + " but is stored as " + std::to_string(st));
  }
  auto parked = cl.parked_count();
  if (!parked) violation("reading parked messages: " + parked.status().to_string());
  else if (*parked) violation(std::to_string(*parked) + " parked messages");
}

}  // namespace


#define SAY(...)                                                                   \
  do {                                                                             \
    if (o.verbose) {                                                               \
      std::fprintf(stderr, "[%8.3f s] ", static_cast<double>(w.now()) / 1e6);     \
      std::fprintf(stderr, __VA_ARGS__);                                           \
      std::fputc('\n', stderr);                                                    \
    }                                                                              \
  } while (0)

SimResult run_seed(const SimOptions& o) {
  SimResult res;
  res.seed = o.seed;
  World w(o.seed);
  Profile p = draw_profile(w.rng());
  // One seed in 16 runs on RocksDB, chosen by the seed alone (the random stream, and so every
  // other seed's run, stays as it is).
  p.rocksdb = ((o.seed * 0x9E3779B97F4A7C15ull) >> 60) == 0;
  res.swarm = p.describe();
  if (p.rocksdb) res.faults["rocksdb_seed"] = 1;
  w.net.reset = p.reset;
  auto violation = [&](std::string v) {
    if (o.verbose) std::fprintf(stderr, "seed %llu: VIOLATION %s\n", static_cast<unsigned long long>(o.seed), v.c_str());
    res.violations.push_back(std::move(v));
  };
  SAY("swarm: %s", res.swarm.c_str());

  Cluster c(w, o, p);
  for (uint32_t id = 1; id <= static_cast<uint32_t>(o.nodes); ++id) {
    if (auto s = c.start(id); !s) {
      violation("node " + std::to_string(id) + " did not start: " + s.to_string());
      return res;
    }
  }
  uint32_t cproc = w.spawn(0, 0);
  c.client_env_ = std::make_unique<SimEnv>(w, cproc);
  entity::Client::Options co;
  co.config_path = c.dir() + "/cluster.conf";
  co.role = "admin";
  co.env = c.client_env_.get();
  co.call_deadline_ms = 3'600'000;
  auto client = entity::Client::connect(co);
  if (!client) {
    violation("client did not connect: " + client.status().to_string());
    return res;
  }
  c.client_ = std::move(*client);
  auto& cl = *c.client_;

  // Items first (idempotent setup).
  const uint64_t stock = 4;
  int items_left = o.items;
  for (int i = 0; i < o.items; ++i)
    cl.call<::SetupItem>(EntityRef{"item", item_key(i)}, "sim", "setup", [&](auto b) { b.setStock(stock); },
                                    [&](ClientReply r) {
                                      if (!r.status) violation("item setup failed: " + r.status.to_string());
                                      --items_left;
                                    });
  if (!w.run_until([&] { return items_left == 0; }, w.now() + 60'000'000)) {
    violation("item setup did not finish");
    return res;
  }

  std::vector<OrderTrack> orders(static_cast<size_t>(o.orders));
  int next_order = 0, answered = 0;
  auto place = [&](int i) {
    Random lr(o.seed * 7919 + static_cast<uint64_t>(i));
    int lines = 1 + static_cast<int>(lr.uniform(3));
    std::vector<int> its;
    while (static_cast<int>(its.size()) < lines && static_cast<int>(its.size()) < o.items) {
      int it = static_cast<int>(lr.uniform(static_cast<uint64_t>(o.items)));
      if (std::find(its.begin(), its.end(), it) == its.end()) its.push_back(it);
    }
    orders[static_cast<size_t>(i)].placed = true;
    cl.call<::PlaceOrder>(
        EntityRef{"order", order_key(i)}, "sim", order_key(i),
        [&](::PlaceOrder::Builder b) {
          auto l = b.initLines(static_cast<unsigned>(its.size()));
          for (unsigned k = 0; k < its.size(); ++k) {
            l[k].setItem(item_key(its[k]));
            l[k].setQty(1 + static_cast<uint32_t>(lr.uniform(2)));
          }
          b.setDeadlineMs(2'000 + static_cast<int64_t>(lr.uniform(4'000)));
        },
        [&, i](ClientReply r) {
          auto& t = orders[static_cast<size_t>(i)];
          if (!r.status) {
            violation(order_key(i) + " answered with an error: " + r.status.to_string());
          } else {
            entity::Payload pl(r.payload);
            int st = static_cast<int>(pl.get<::OrderResult>().getStatus());
            t.answers.insert(st);
            if (t.answers.size() > 1) violation(order_key(i) + " answered two different ways");
          }
          if (!t.answered) ++answered;
          t.answered = true;
        });
  };

  // ---- fault phase ----
  const int64_t step_us = 100'000;
  const int64_t fault_end = w.now() + o.fault_phase_ms * 1000;
  bool admin_busy = false, refresh = false;
  int64_t pause_until = 0;
  auto fault = [&](const std::string& k) { ++res.faults[k]; };
  while (w.now() < fault_end) {
    // Orders arrive spread over the first two thirds of the phase.
    int64_t elapsed = o.fault_phase_ms * 1000 - (fault_end - w.now());
    int due = static_cast<int>(static_cast<int64_t>(o.orders) * std::min<int64_t>(elapsed, o.fault_phase_ms * 667) /
                               std::max<int64_t>(1, o.fault_phase_ms * 667));
    while (next_order < std::min(due + 1, o.orders)) place(next_order++);

    int64_t before = w.now();
    w.run_until([] { return false; }, w.now() + step_us);
    if (w.now() - before > 10 * step_us) SAY("a step took %lld ms of virtual time", static_cast<long long>((w.now() - before) / 1000));

    // Nodes stopped by their own fence are dead processes now: tear them down.
    for (uint32_t proc : w.take_self_stopped())
      for (uint32_t id = 1; id <= static_cast<uint32_t>(o.nodes); ++id)
        if (c.up(id) && c.proc(id) == proc) {
          fault("fenced");
          SAY("node %u stopped by its fence", id);
          c.kill(id, false);
        }
    // Restarts.
    for (uint32_t id = 1; id <= static_cast<uint32_t>(o.nodes); ++id) {
      auto& n = c.node(id);
      if (!n.node && n.restart_at >= 0 && w.now() >= n.restart_at) {
        SAY("restart node %u", id);
        if (auto s = c.start(id); !s) {
          SAY("node %u did not start: %s; again later", id, s.to_string().c_str());
          n.restart_at = w.now() + 1'000'000;
        }
      }
    }
    if (refresh) {
      refresh = false;
      cl.refresh();
    }
    auto r = [&](double pr) { return pr > 0 && w.rng().chance(pr); };
    uint32_t victim = 1 + static_cast<uint32_t>(w.rng().uniform(static_cast<uint64_t>(o.nodes)));
    if (r(p.kill) && c.up(victim)) {
      bool cut = r(p.power_cut);
      fault(cut ? "power_cut" : "kill");
      SAY("kill node %u%s", victim, cut ? " with a power cut" : "");
      c.kill(victim, cut);
    }
    if (r(p.pause) && c.up(victim) && w.now() >= pause_until) {
      int64_t d = 200'000 + static_cast<int64_t>(w.rng().uniform(4'000'000));
      fault("pause");
      SAY("pause node %u for %lld ms", victim, static_cast<long long>(d / 1000));
      w.pause(c.proc(victim), w.now() + d);
      pause_until = w.now() + d;
    }
    if (r(p.partition)) {
      if (w.cut_count() > 0 && w.rng().chance(0.5)) {
        SAY("heal partitions");
        w.heal_all();
      } else {
        uint32_t a = 1 + static_cast<uint32_t>(w.rng().uniform(static_cast<uint64_t>(o.nodes)));
        uint32_t b = static_cast<uint32_t>(w.rng().uniform(static_cast<uint64_t>(o.nodes) + 1));  // 0: the client
        if (a != b) {
          bool both = w.rng().chance(0.5);
          fault(both ? "partition" : "partition_one_way");
          SAY("cut %u -> %u%s", a, b, both ? " both ways" : "");
          w.cut(a, b);
          if (both) w.cut(b, a);
        }
      }
    }
    if (!admin_busy && (r(p.move) || r(p.split))) {
      bool split = p.split > 0 && (p.move == 0 || w.rng().chance(p.split / (p.split + p.move)));
      auto map = partition::PartitionMap::decode(cl.map_bytes());
      if (map && !map->partitions.empty()) {
        auto& part = map->partitions[w.rng().uniform(map->partitions.size())];
        ByteWriter b;
        b.varint(part.id);
        std::string method = split ? "split" : "move";
        if (split) {
          b.bytes("");
        } else {
          uint32_t to = 1 + static_cast<uint32_t>(w.rng().uniform(static_cast<uint64_t>(o.nodes)));
          if (to == part.owner) to = to % static_cast<uint32_t>(o.nodes) + 1;
          b.bytes(std::to_string(to));
        }
        admin_busy = true;
        SAY("%s partition %u", method.c_str(), part.id);
        fault(method + "_requested");
        cl.request_async(1, method, b.take(), [&, method](Result<std::string> ans) {
          admin_busy = false;
          if (ans) ++res.faults[method];
          SAY("%s: %s", method.c_str(), ans ? ans->c_str() : ans.status().to_string().c_str());
          refresh = true;
        });
      }
    }
  }

  // ---- healed phase ----
  SAY("heal");
  w.heal_all();
  w.net.reset = 0;
  for (uint32_t id = 1; id <= static_cast<uint32_t>(o.nodes); ++id) w.pause(c.proc(id), 0);
  while (next_order < o.orders) place(next_order++);
  const int64_t heal_deadline = w.now() + o.heal_limit_ms * 1000;
  for (uint32_t id = 1; id <= static_cast<uint32_t>(o.nodes); ++id)
    while (!c.up(id) && w.now() < heal_deadline) {
      SAY("restart node %u", id);
      if (auto s = c.start(id); !s) {
        SAY("node %u did not start: %s; again later", id, s.to_string().c_str());
        w.run_until([] { return false; }, w.now() + 1'000'000);
      }
    }
  w.run_until([&] { return answered == o.orders && !admin_busy; }, heal_deadline);
  if (answered != o.orders) violation(std::to_string(o.orders - answered) + " orders never answered after healing");
  bool quiet = false;
  while (!quiet && w.now() < heal_deadline) {
    auto q = cl.quiescent();
    quiet = q && *q;
    if (!quiet) w.run_until([] { return false; }, w.now() + 500'000);
  }
  if (!quiet) violation("no quiescence within " + std::to_string(o.heal_limit_ms / 1000) + " s after healing");
  if (res.violations.empty()) check_stores(cl, o, orders, res, violation);
  if (res.violations.empty()) {
    // Every order is terminal and its deadline timer cancelled or fired: no node holds a timer.
    auto timers = cl.pending_timers();
    if (!timers) violation("reading pending timers: " + timers.status().to_string());
    else if (*timers != 0) violation(std::to_string(*timers) + " timers still pending after quiescence");
  }
  SAY("done: %zu violations, %llu confirmed, %llu cancelled", res.violations.size(),
      static_cast<unsigned long long>(res.confirmed), static_cast<unsigned long long>(res.cancelled));
  c.client_.reset();
  for (uint32_t id = 1; id <= static_cast<uint32_t>(o.nodes); ++id) c.node(id).reset();
  res.trace_hash = w.trace_hash();
  res.events = w.events();
  res.virtual_ms = w.now() / 1000;
  return res;
}

}  // namespace tandem::sim
