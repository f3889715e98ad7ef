// tandem-bench: throughput and memory figures, each printed beside the raw RocksDB baseline of
// the same shape and durability measured in the same process.
//
//   tandem-bench transitions [--seconds S] [--durability strict|relaxed] [--entities N]
//   tandem-bench memory [--entities N]
//   tandem-bench demo [--orders N] [--items N] [--concurrency N]
//   tandem-bench all
#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include <tandem/core/env.h>
#include <tandem/core/flags.h>
#include <tandem/core/log.h>
#include <tandem/entity/node.h>
#include <tandem/partition/store.h>

#include "bench.capnp.h"
#include "driver.h"
#include "entities.h"

namespace {

using tandem::EntityRef;
using tandem::entity::Context;

// A ring of entities: each Ping updates the entity's state and passes a Ping to the next one.
uint64_t g_ring = 1;
class Runner final : public tandem::entity::Entity {
 public:
  static constexpr std::string_view kType = "runner";
  void handlers(tandem::entity::Handlers& h) override {
    h.on<Ping>([](Context& ctx, Ping::Reader m) {
      ctx.update_state<BenchState>([](BenchState::Builder s) { s.setCount(s.getCount() + 1); });
      uint64_t me = std::stoull(ctx.self().key);
      ctx.send<Ping>(EntityRef{"runner", std::to_string((me + 1) % g_ring)},
                     [&](Ping::Builder b) { b.setHops(m.getHops() + 1); });
    });
    h.on<Init>([](Context& ctx, Init::Reader m) {
      ctx.set_state<BenchState>([&](BenchState::Builder s) { s.setCount(m.getValue()); });
      ctx.reply<BenchState>([](BenchState::Builder) {});
    });
  }
};

std::string scratch(const std::string& name) {
  auto p = std::filesystem::temp_directory_path() / ("tandem-bench-" + name);
  std::filesystem::remove_all(p);
  return p.string();
}

double rss_mib() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("VmRSS:", 0) == 0) return std::stod(line.substr(6)) / 1024.0;
  return 0;
}

// Raw RocksDB: `writers` threads each write batches shaped like one message transition
// (4 puts: state, two activity rows, outbox row; 1 delete: the consumed outbox row).
double raw_rate(tandem::partition::Durability d, int writers, double seconds) {
  std::string dir = scratch("raw");
  auto store = tandem::partition::Store::open({dir, d});
  if (!store) {
    std::fprintf(stderr, "raw store: %s\n", store.status().to_string().c_str());
    return 0;
  }
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> total{0};
  std::vector<std::thread> threads;
  std::string value(48, 'v'), row(120, 'o');
  for (int w = 0; w < writers; ++w) {
    threads.emplace_back([&, w] {
      uint64_t n = 0;
      std::string prev;
      while (!stop) {
        tandem::partition::WriteBatch b;
        std::string k = std::to_string(w);  // "w-i": writer, entity
        k += '-';
        k += std::to_string(n % 1000);
        b.put(tandem::partition::Cf::kState, k, value);
        b.put(tandem::partition::Cf::kActivity, k + "a", value);
        b.put(tandem::partition::Cf::kActivity, k + "b", value);
        std::string ok = k + "-" + std::to_string(n);
        b.put(tandem::partition::Cf::kOutbox, ok, row);
        if (!prev.empty()) b.del(tandem::partition::Cf::kOutbox, prev);
        prev = ok;
        if (!(*store)->write(b)) break;
        ++n;
      }
      total += n;
    });
  }
  auto t0 = std::chrono::steady_clock::now();
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  stop = true;
  for (auto& t : threads) t.join();
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  store->reset();
  std::filesystem::remove_all(dir);
  return static_cast<double>(total) / secs;
}

struct Opts {
  double seconds = 3;
  uint64_t entities = 0;
  std::string durability;
  uint64_t orders = 10'000, items = 1'000, concurrency = 256;
};

void bench_transitions(tandem::Env& env, const std::string& durability, uint64_t entities, double seconds) {
  g_ring = entities;
  tandem::entity::Registry reg;
  reg.add<Runner>();
  tandem::entity::NodeOptions o;
  o.data_dir = scratch("transitions");
  o.durability = durability;
  o.inline_local = false;  // every message: outbox append, relay, ack, outbox delete
  tandem::entity::Node node(env, reg, o);
  if (auto s = node.start(); !s) {
    std::fprintf(stderr, "node: %s\n", s.to_string().c_str());
    return;
  }
  for (uint64_t i = 0; i < entities; ++i)
    node.call<Ping>(EntityRef{"runner", std::to_string(i)}, "bench", "start-" + std::to_string(i),
                    [](Ping::Builder) {}, [](tandem::entity::ClientReply) {});
  std::this_thread::sleep_for(std::chrono::milliseconds(500));  // warm-up
  auto a0 = node.stats().applied;
  auto t0 = std::chrono::steady_clock::now();
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  auto st = node.stats();
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  node.stop();
  std::filesystem::remove_all(o.data_dir);
  double tandem_rate = static_cast<double>(st.applied - a0) / secs;
  auto d = *tandem::partition::parse_durability(durability);
  // Strict: RocksDB's own group commit at the same concurrency (capped at 64 writer threads).
  // Relaxed: one writer, one transition per batch.
  int writers = d == tandem::partition::Durability::kStrict ? static_cast<int>(std::min<uint64_t>(entities, 64)) : 1;
  double raw = raw_rate(d, writers, seconds);
  std::printf("RESULT bench=transitions durability=%s entities=%llu tandem_per_s=%.0f raw_per_s=%.0f ratio=%.2f "
              "raw_writers=%d commits=%llu commit_ms_avg=%.3f\n",
              durability.c_str(), static_cast<unsigned long long>(entities), tandem_rate, raw, raw > 0 ? tandem_rate / raw : 0,
              writers, static_cast<unsigned long long>(st.commits), st.commit_ms_avg);
  std::fflush(stdout);
}

void bench_memory(tandem::Env& env, uint64_t entities) {
  g_ring = entities;
  tandem::entity::Registry reg;
  reg.add<Runner>();
  tandem::entity::NodeOptions o;
  o.data_dir = scratch("memory");
  o.durability = "relaxed";
  tandem::entity::Node node(env, reg, o);
  if (auto s = node.start(); !s) {
    std::fprintf(stderr, "node: %s\n", s.to_string().c_str());
    return;
  }
  double rss0 = rss_mib();
  std::atomic<uint64_t> done{0};
  uint64_t sent = 0;
  auto t0 = std::chrono::steady_clock::now();
  while (sent < entities) {
    while (sent < entities && sent - done < 2048) {
      node.call<Init>(EntityRef{"runner", std::to_string(sent)}, "bench", "init-" + std::to_string(sent),
                      [&](Init::Builder b) { b.setValue(sent); }, [&](tandem::entity::ClientReply) { ++done; });
      ++sent;
    }
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  while (done < entities) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  double create_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  while (!node.idle()) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  std::this_thread::sleep_for(std::chrono::seconds(1));
  double rss = rss_mib();
  uint64_t rows = 0;
  auto s = node.for_each_state("runner", [&](const std::string&, tandem::entity::Payload&) { ++rows; });
  node.stop();
  std::filesystem::remove_all(o.data_dir);
  double raw = raw_rate(tandem::partition::Durability::kRelaxed, 1, 2);
  std::printf("RESULT bench=memory entities=%llu stored=%llu rss_mib=%.0f rss_before_mib=%.0f create_per_s=%.0f "
              "raw_per_s=%.0f durability=relaxed target_rss_mib=1024 %s\n",
              static_cast<unsigned long long>(entities), static_cast<unsigned long long>(rows), rss, rss0,
              static_cast<double>(entities) / create_s, raw, s.is_ok() ? "" : s.to_string().c_str());
  std::fflush(stdout);
}

void bench_demo(tandem::Env& env, const Opts& opts, const std::string& durability) {
  tandem::entity::Registry reg;
  reg.add<reservation::Order>();
  reg.add<reservation::Item>();
  tandem::entity::NodeOptions o;
  o.data_dir = scratch("demo");
  o.durability = durability;
  tandem::entity::Node node(env, reg, o);
  if (auto s = node.start(); !s) {
    std::fprintf(stderr, "node: %s\n", s.to_string().c_str());
    return;
  }
  reservation::DemoOptions d;
  d.orders = opts.orders;
  d.items = opts.items;
  d.concurrency = opts.concurrency;
  d.progress = false;
  auto r = reservation::run_demo(node, env.clock(), d);
  auto st = node.stats();
  node.stop();
  std::filesystem::remove_all(o.data_dir);
  auto dur = *tandem::partition::parse_durability(durability);
  double raw = raw_rate(dur, dur == tandem::partition::Durability::kStrict ? 64 : 1, 2);
  std::printf("RESULT bench=demo nodes=1 durability=%s orders_per_s=%.0f p50_ms=%.2f p99_ms=%.2f orders=%llu "
              "concurrency=%llu transitions_per_s=%.0f raw_per_s=%.0f invariant=%s\n",
              durability.c_str(), r.orders_per_s, r.p50_ms, r.p99_ms, static_cast<unsigned long long>(r.orders),
              static_cast<unsigned long long>(opts.concurrency), static_cast<double>(st.applied) / r.seconds, raw,
              r.invariant.c_str());
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  const char* usage =
      "usage: tandem-bench transitions|memory|demo|all [--seconds S] [--durability strict|relaxed]\n"
      "                    [--entities N] [--orders N] [--items N] [--concurrency N]\n";
  if (argc < 2) {
    std::fputs(usage, stderr);
    return 2;
  }
  std::string cmd = argv[1];
  auto f = tandem::Flags::parse(argc, argv, 2, {"seconds", "durability", "entities", "orders", "items", "concurrency"}, {});
  if (!f) {
    std::fprintf(stderr, "tandem-bench: %s\n%s", f.status().to_string().c_str(), usage);
    return 2;
  }
  tandem::log::set_level("warn");
  Opts o;
  o.seconds = f->f64("seconds", 3).value();
  o.entities = f->u64("entities", 0).value();
  o.durability = f->str("durability", "");
  o.orders = f->u64("orders", o.orders).value();
  o.items = f->u64("items", o.items).value();
  o.concurrency = f->u64("concurrency", o.concurrency).value();
  auto env = tandem::make_real_env();
  std::vector<std::string> durs = o.durability.empty() ? std::vector<std::string>{"relaxed", "strict"}
                                                       : std::vector<std::string>{o.durability};
  std::vector<uint64_t> ents = o.entities ? std::vector<uint64_t>{o.entities} : std::vector<uint64_t>{1, 1000};
  if (cmd == "transitions" || cmd == "all") {
    for (auto& d : durs)
      for (auto n : ents) bench_transitions(*env, d, n, o.seconds);
  }
  if (cmd == "demo" || cmd == "all") {
    for (auto& d : durs) bench_demo(*env, o, d);
  }
  if (cmd == "memory" || cmd == "all") bench_memory(*env, o.entities && cmd == "memory" ? o.entities : 1'000'000);
  if (cmd != "transitions" && cmd != "demo" && cmd != "memory" && cmd != "all") {
    std::fprintf(stderr, "tandem-bench: unknown command '%s'\n%s", cmd.c_str(), usage);
    return 2;
  }
  return 0;
}
