// tandem-bench: throughput and memory figures, each printed beside the raw RocksDB baseline of
// the same shape and durability measured in the same process.
//
//   tandem-bench transitions [--seconds S] [--durability strict|relaxed] [--entities N]
//   tandem-bench memory [--entities N]
//   tandem-bench demo [--orders N] [--items N] [--concurrency N]
//   tandem-bench cluster [--seconds S] [--load F] [--trace PREFIX] [--keep]
//                                          starts a 3-node local cluster of this binary;
//                                          --trace writes each open-loop call (fire time, latency)
//                                          to PREFIX.ce / PREFIX.ee, --keep leaves the cluster's
//                                          folder (node logs, RocksDB LOGs) in place
//   tandem-bench node --config F --id N    (a node of that cluster)
//   tandem-bench all
#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <ctime>
#include <future>
#include <mutex>
#include <optional>
#include <random>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <map>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include <unistd.h>

#include <tandem/core/bytes.h>
#include <tandem/core/env.h>
#include <tandem/core/histogram.h>
#include <tandem/core/flags.h>
#include <tandem/core/log.h>
#include <tandem/core/net.h>
#include <tandem/entity/client.h>
#include <tandem/entity/node.h>
#include <tandem/entity/node_main.h>
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

// Echo from a client: answered at once (client -> entity round trip), or, with a target,
// after an Ask to the target pinger is answered (an entity-to-entity request/reply).
class Pinger final : public tandem::entity::Entity {
 public:
  static constexpr std::string_view kType = "pinger";
  void handlers(tandem::entity::Handlers& h) override {
    h.on<Echo>([](Context& ctx, Echo::Reader m) {
      if (m.getTarget().size() == 0) return ctx.reply<Echo>([](Echo::Builder) {});
      std::string token = ctx.defer_reply();
      auto old = ctx.state<PingerState>().getTokens();
      ctx.set_state<PingerState>([&](PingerState::Builder s) {
        auto l = s.initTokens(old.size() + 1);
        for (unsigned i = 0; i < old.size(); ++i) l.set(i, old[i]);
        l.set(old.size(), capnp::Data::Reader(reinterpret_cast<const kj::byte*>(token.data()), token.size()));
      });
      ctx.send<Ask>(EntityRef{"pinger", m.getTarget().cStr()}, [](Ask::Builder) {});
    });
    h.on<Ask>([](Context& ctx, Ask::Reader) { ctx.reply<Answer>([](Answer::Builder) {}); });
    h.on<Answer>([](Context& ctx, Answer::Reader) {
      // Answers are interchangeable: any one of them releases the oldest waiting client.
      auto tokens = ctx.state<PingerState>().getTokens();
      if (tokens.size() == 0) throw std::logic_error("an Answer with no client waiting");
      std::string token(reinterpret_cast<const char*>(tokens[0].begin()), tokens[0].size());
      ctx.set_state<PingerState>([&](PingerState::Builder s) {
        auto l = s.initTokens(tokens.size() - 1);
        for (unsigned i = 1; i < tokens.size(); ++i) l.set(i - 1, tokens[i]);
      });
      ctx.reply_to<Echo>(token, [](Echo::Builder) {});
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
  double load = 0.5;  // cluster bench: the open-loop rate as a fraction of the closed-loop maximum
  std::string meta = "embedded";  // move bench: embedded or etcd (a local etcd)
  std::string trace;              // cluster bench: per-call trace files (prefix)
  bool keep = false;              // cluster bench: keep the cluster's folder
};

// The demo as the bench flags ask for it, without progress lines.
reservation::DemoOptions demo_options(const Opts& opts) {
  reservation::DemoOptions d;
  d.orders = opts.orders;
  d.items = opts.items;
  d.concurrency = opts.concurrency;
  d.progress = false;
  return d;
}

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

// The demo on one in-process node with a fresh store (no network at all); `stats` gets the
// node's counters. invariant=FAILED:... when the node does not start.
reservation::DemoResult demo_in_process(tandem::Env& env, const reservation::DemoOptions& d, const std::string& durability,
                                        tandem::entity::NodeStats* stats = nullptr) {
  tandem::entity::Registry reg;
  reg.add<reservation::Order>();
  reg.add<reservation::Item>();
  tandem::entity::NodeOptions o;
  o.data_dir = scratch("demo");
  o.durability = durability;
  reservation::DemoResult r;
  {
    tandem::entity::Node node(env, reg, o);
    if (auto s = node.start(); !s) {
      std::fprintf(stderr, "node: %s\n", s.to_string().c_str());
      r.invariant = "FAILED:" + s.to_string();
    } else {
      r = reservation::run_demo(node, env.clock(), d);
      if (stats) *stats = node.stats();
      node.stop();
    }
  }
  std::filesystem::remove_all(o.data_dir);
  return r;
}

void bench_demo(tandem::Env& env, const Opts& opts, const std::string& durability) {
  tandem::entity::NodeStats st;
  auto r = demo_in_process(env, demo_options(opts), durability, &st);
  if (r.seconds <= 0) return;
  auto dur = *tandem::partition::parse_durability(durability);
  double raw = raw_rate(dur, dur == tandem::partition::Durability::kStrict ? 64 : 1, 2);
  std::printf("RESULT bench=demo nodes=1 durability=%s orders_per_s=%.0f p50_ms=%.2f p99_ms=%.2f orders=%llu "
              "concurrency=%llu transitions_per_s=%.0f raw_per_s=%.0f invariant=%s\n",
              durability.c_str(), r.orders_per_s, r.p50_ms, r.p99_ms, static_cast<unsigned long long>(r.orders),
              static_cast<unsigned long long>(opts.concurrency), static_cast<double>(st.applied) / r.seconds, raw,
              r.invariant.c_str());
  std::fflush(stdout);
}

struct Percentiles {
  double p50 = 0, p99 = 0;
};
Percentiles percentiles(std::vector<double> v) {
  Percentiles p;
  if (v.empty()) return p;
  std::sort(v.begin(), v.end());
  p.p50 = v[v.size() / 2];
  p.p99 = v[std::min(v.size() - 1, v.size() * 99 / 100)];
  return p;
}

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Raw loopback TCP through core's network seam: an echo server and a client on two network
// threads (as two processes would be), 200-byte messages.
void loopback_baseline(double seconds, Percentiles& rtt_us, double& per_s) {
  auto server = tandem::net::make_real_network();
  auto client = tandem::net::make_real_network();
  std::vector<std::shared_ptr<tandem::net::Connection>> keep;
  std::mutex keep_mu;
  auto port = server->listen({"127.0.0.1", 0}, [&](std::shared_ptr<tandem::net::Connection> c) {
    std::weak_ptr<tandem::net::Connection> w = c;
    c->start([w](std::string_view b) { if (auto c = w.lock()) c->send(std::string(b)); }, [](tandem::Status) {});
    std::lock_guard lock(keep_mu);
    keep.push_back(c);
  });
  std::mutex mu;
  std::condition_variable cv;
  uint64_t received = 0;
  std::shared_ptr<tandem::net::Connection> conn;
  std::promise<void> connected;
  client->connect({"127.0.0.1", *port}, [&](tandem::Result<std::shared_ptr<tandem::net::Connection>> c) {
    conn = *c;
    conn->start(
        [&](std::string_view b) {
          std::lock_guard lock(mu);
          received += b.size();
          cv.notify_all();
        },
        [](tandem::Status) {});
    connected.set_value();
  });
  connected.get_future().get();
  const std::string msg(200, 'm');
  std::vector<double> lat;
  for (int i = 0; i < 3000; ++i) {
    double t0 = now_s();
    uint64_t want;
    {
      std::lock_guard lock(mu);
      want = received + msg.size();
    }
    conn->send(msg);
    std::unique_lock lock(mu);
    cv.wait(lock, [&] { return received >= want; });
    lat.push_back((now_s() - t0) * 1e6);
  }
  rtt_us = percentiles(lat);
  // Throughput with 64 messages in flight.
  uint64_t sent_bytes;
  {
    std::lock_guard lock(mu);
    sent_bytes = received;
  }
  double t0 = now_s();
  for (int i = 0; i < 64; ++i) conn->send(msg), sent_bytes += msg.size();
  uint64_t done = 0;
  while (now_s() - t0 < seconds) {
    std::unique_lock lock(mu);
    cv.wait(lock, [&] { return received + 64 * msg.size() > sent_bytes; });
    uint64_t room = (received + 64 * msg.size() - sent_bytes) / msg.size();
    lock.unlock();
    for (uint64_t k = 0; k < room; ++k) conn->send(msg), sent_bytes += msg.size();
    done += room;
  }
  per_s = static_cast<double>(done) / (now_s() - t0);
  conn->close();
  client->stop();
  server->stop();
}

// Slow calls of a trace grouped into windows (calls fired within 5 ms of each other), the three
// with the most calls printed with their wall-clock time, to match against node and RocksDB logs.
void print_slow_windows(const std::string& tag, std::vector<std::pair<double, double>> calls, double start_s,
                        double start_wall_s) {
  if (calls.empty()) return;
  std::vector<double> lats;
  for (auto& c : calls) lats.push_back(c.second);
  std::sort(lats.begin(), lats.end());
  double slow_ms = std::max(5.0, lats[lats.size() * 99 / 100] / 2);
  std::sort(calls.begin(), calls.end());
  struct Window {
    double first_s, last_s, max_ms;
    size_t n;
  };
  std::vector<Window> w;
  for (auto& [t, l] : calls) {
    if (l < slow_ms) continue;
    if (!w.empty() && t - w.back().last_s < 0.005) {
      w.back().last_s = t;
      w.back().max_ms = std::max(w.back().max_ms, l);
      w.back().n++;
    } else {
      w.push_back({t, t, l, 1});
    }
  }
  size_t slow = 0;
  for (auto& x : w) slow += x.n;
  std::sort(w.begin(), w.end(), [](auto& a, auto& b) { return a.n > b.n; });
  std::printf("TRACE %s calls=%zu slow=%zu (>= %.1f ms) windows=%zu", tag.c_str(), calls.size(), slow, slow_ms, w.size());
  for (size_t i = 0; i < w.size() && i < 3; ++i) {
    auto secs = static_cast<time_t>(start_wall_s + (w[i].first_s - start_s));
    char hms[16];
    std::strftime(hms, sizeof hms, "%H:%M:%S", std::localtime(&secs));
    double frac = std::fmod(start_wall_s + (w[i].first_s - start_s), 1.0);
    std::printf(" | %s.%03d +%.0f ms: %zu calls, max %.1f ms", hms, static_cast<int>(frac * 1000),
                (w[i].last_s - w[i].first_s) * 1e3, w[i].n, w[i].max_ms);
  }
  std::printf("\n");
}

// The whole machine's CPU time and context switches so far (/proc/stat), to tell how busy a
// phase kept the cores the nodes and this client share.
struct MachineCpu {
  double busy_s = 0, all_s = 0, switches = 0;
  bool ok = false;
};
MachineCpu machine_cpu() {
  MachineCpu m;
  std::ifstream in("/proc/stat");
  std::string word;
  double tick = static_cast<double>(sysconf(_SC_CLK_TCK));
  while (in >> word) {
    if (word == "cpu") {
      // user nice system idle iowait irq softirq steal (guest time is inside user); time
      // stolen by the host counts in the whole, not as busy
      double v[8] = {};
      for (double& x : v) in >> x;
      for (double x : v) m.all_s += x / tick;
      m.busy_s = (v[0] + v[1] + v[2] + v[5] + v[6]) / tick;
      m.ok = true;
    } else if (word == "ctxt") {
      in >> m.switches;
    }
    std::getline(in, word);
  }
  return m;
}
struct PhaseCpu {
  double busy = 0;          // fraction of all cores busy
  double us_per_call = 0;   // machine CPU per completed call
  double switches_per_call = 0;
};
PhaseCpu phase_cpu(const MachineCpu& a, const MachineCpu& b, double calls) {
  PhaseCpu p;
  if (!a.ok || !b.ok || b.all_s <= a.all_s || calls <= 0) return p;
  p.busy = (b.busy_s - a.busy_s) / (b.all_s - a.all_s);
  p.us_per_call = (b.busy_s - a.busy_s) * 1e6 / calls;
  p.switches_per_call = (b.switches - a.switches) / calls;
  return p;
}

// Closed loop at `concurrency` for `seconds`, then open loop at half the rate reached.
struct LoadResult {
  double max_per_s = 0;
  double rate = 0;
  Percentiles lat_ms;
  uint64_t errors = 0;
  PhaseCpu at_max, at_rate;  // the machine during the closed and the open loop
};
LoadResult load(tandem::entity::Client& client, const std::vector<EntityRef>& to, const std::vector<std::string>& targets,
                const std::string& tag, double seconds, double load_fraction, const std::string& trace_prefix,
                const std::function<void(bool open_loop_starts)>& around_open_loop = {}) {
  LoadResult r;
  // Shared with the reply callbacks: after a timed-out wait below, late replies must find it.
  struct Shared {
    std::mutex mu;
    std::condition_variable cv;
    uint64_t outstanding = 0, completed = 0, errors = 0;
    std::vector<std::pair<double, double>> calls;  // (fire time s, latency ms) of the open loop
  };
  auto sh = std::make_shared<Shared>();
  auto& [mu, cv, outstanding, completed, errors, calls] = *sh;
  uint64_t n = 0;
  auto fire = [&](size_t slot, bool record) {
    double t0 = now_s();
    std::string target = targets.empty() ? "" : targets[slot % targets.size()];
    client.call<Echo>(to[slot % to.size()], "bench", tag + "-" + std::to_string(n++),
                      [&](Echo::Builder b) { b.setTarget(target); },
                      [sh, t0, record](tandem::entity::ClientReply rep) {
                        std::lock_guard lock(sh->mu);
                        if (!rep.status) ++sh->errors;
                        if (record) sh->calls.emplace_back(t0, (now_s() - t0) * 1e3);
                        --sh->outstanding;
                        ++sh->completed;
                        sh->cv.notify_all();
                      });
  };
  // Closed loop: one call outstanding per target entity (an entity holds one pending token).
  size_t conc = to.size();
  double t0 = now_s();
  MachineCpu cpu0 = machine_cpu();
  {
    std::unique_lock lock(mu);
    size_t slot = 0;
    while (now_s() - t0 < seconds) {
      while (outstanding < conc) {
        ++outstanding;
        lock.unlock();
        fire(slot++ % conc, false);
        lock.lock();
      }
      cv.wait_for(lock, std::chrono::milliseconds(10));
    }
    r.max_per_s = static_cast<double>(completed) / (now_s() - t0);
    r.at_max = phase_cpu(cpu0, machine_cpu(), static_cast<double>(completed));
    cv.wait_for(lock, std::chrono::seconds(30), [&] { return outstanding == 0; });
  }
  // Open loop at a fraction (default half) of the maximum rate; slots rotate so no entity has two calls pending
  // (at half rate each call has conc/rate*2 seconds before its slot comes round again).
  r.rate = r.max_per_s * load_fraction;
  if (around_open_loop) around_open_loop(true);
  double interval = 1.0 / r.rate;
  double start = now_s(), next = start;
  MachineCpu cpu1 = machine_cpu();
  uint64_t fired = 0;
  size_t slot = 0;
  while (now_s() - start < seconds) {
    // One sleep per call (a loop of short sleeps woke this thread several times per call, CPU
    // the nodes share); a late wake-up fires the calls that are due back to back.
    if (now_s() < next)
      std::this_thread::sleep_until(std::chrono::steady_clock::time_point(
          std::chrono::duration_cast<std::chrono::steady_clock::duration>(std::chrono::duration<double>(next))));
    {
      std::lock_guard lock(mu);
      ++outstanding;
    }
    fire(slot++ % conc, true);
    ++fired;
    next += interval;
  }
  r.at_rate = phase_cpu(cpu1, machine_cpu(), static_cast<double>(fired));
  {
    std::unique_lock lock(mu);
    cv.wait_for(lock, std::chrono::seconds(30), [&] { return outstanding == 0; });
  }
  if (around_open_loop) around_open_loop(false);
  std::vector<std::pair<double, double>> answered;
  {
    std::lock_guard lock(mu);
    answered = calls;
    r.errors = errors + outstanding;  // calls still unanswered count as errors
  }
  if (!trace_prefix.empty()) {  // one line per call: ms since the open loop began, latency ms
    std::ofstream out(trace_prefix + "." + tag);
    double began_wall =
        std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count() - (now_s() - start);
    out << std::fixed << "# open loop began at wall " << began_wall << " steady " << start << '\n';
    for (auto& [t, l] : answered) out << (t - start) * 1e3 << ' ' << l << '\n';
    print_slow_windows(tag, answered, start, began_wall);
  }
  std::vector<double> lat;
  for (auto& c : answered) lat.push_back(c.second);
  r.lat_ms = percentiles(lat);
  return r;
}

// A local cluster of this binary (3 nodes unless asked), started with tools/tandem-cluster and stopped with it.
struct LocalCluster {
  std::string dir, types, env, launcher;
  bool up = false;
  bool keep = false;  // leave the folder (node logs, RocksDB LOGs) for a look afterwards
  LocalCluster(const std::string& name, const std::string& self_bin, const std::string& type_lines,
               const std::string& durability, int base_port, const std::string& meta = "embedded", int nodes = 3) {
    dir = scratch(name);
    std::filesystem::create_directories(dir);
    types = dir + "-types";
    std::ofstream(types) << type_lines;
    launcher = std::string(TANDEM_SOURCE_DIR) + "/tools/tandem-cluster";
    env = "TANDEM_CLUSTER_DIR=" + dir + " ";
    up = std::system((env + launcher + " up --nodes " + std::to_string(nodes) + " --durability " + durability + " --base-port " +
                      std::to_string(base_port) + " --types " + types + " --binary " + self_bin + " --meta " + meta +
                      " > /dev/null")
                         .c_str()) == 0;
    if (!up) std::fprintf(stderr, "tandem-bench: cannot start the cluster (see %s)\n", dir.c_str());
  }
  ~LocalCluster() { down(); }
  void down() {
    if (done) return;
    done = true;
    if (std::system((env + launcher + " down > /dev/null").c_str()) != 0) std::fprintf(stderr, "tandem-bench: cluster down failed\n");
    if (!keep) std::filesystem::remove_all(dir);
    std::filesystem::remove(types);
  }
  bool done = false;
  std::string config() const { return dir + "/cluster.conf"; }
  // A client of the cluster (`admin` for moves); the failure is printed.
  tandem::Result<std::unique_ptr<tandem::entity::Client>> connect(const std::string& role) const {
    tandem::entity::Client::Options co;
    co.config_path = config();
    co.role = role;
    auto client = tandem::entity::Client::connect(co);
    if (!client) std::fprintf(stderr, "tandem-bench: %s\n", client.status().to_string().c_str());
    return client;
  }
};

constexpr const char* kClusterTypes =
    "type pinger hash partitions=6\n"
    "type order hash slots=256 partitions=6\n"
    "type item range splits=sku-2,sku-4,sku-6,sku-8\n"
    "type runner hash partitions=3\n";

int bench_cluster(const std::string& self_bin, double seconds, const Opts& opts, const std::string& durability) {
  LocalCluster lc("cluster", self_bin, kClusterTypes, durability, 27100);
  if (!lc.up) return 1;
  lc.keep = opts.keep;
  Percentiles rtt;
  double loop_per_s = 0;
  loopback_baseline(seconds, rtt, loop_per_s);
  std::printf("RESULT bench=loopback rtt_p50_us=%.1f rtt_p99_us=%.1f msgs_per_s=%.0f in_flight=64 bytes=200\n", rtt.p50,
              rtt.p99, loop_per_s);
  std::fflush(stdout);

  auto client = lc.connect("client");
  int rc = 0;
  if (!client) {
    rc = 1;
  } else {
    auto& c = **client;
    // 64 pingers on node 1 and 64 on node 2.
    std::vector<EntityRef> on1;
    std::vector<std::string> on2;
    for (int i = 0; on1.size() < 64 || on2.size() < 64; ++i) {
      EntityRef r{"pinger", "p" + std::to_string(i)};
      uint32_t owner = c.owner_of(r);
      if (owner == 1 && on1.size() < 64) on1.push_back(r);
      if (owner == 2 && on2.size() < 64) on2.push_back(r.key);
    }
    using Stages = std::vector<std::pair<std::string, tandem::Histogram::Snapshot>>;
    std::map<uint32_t, Stages> before, after;
    auto stages = [&c](std::map<uint32_t, Stages>& into) {
      for (uint32_t id : c.node_ids())
        if (auto s = c.stages(id)) into[id] = std::move(*s);
    };
    auto print_stages = [](const char* kind, std::map<uint32_t, Stages>& from, std::map<uint32_t, Stages>& to) {
      for (auto& [id, now] : to) {
        if (from[id].size() != now.size()) continue;
        std::printf("STAGES %s node=%u (open loop, us: p50/p99/max count)", kind, id);
        for (size_t i = 0; i < now.size(); ++i) {
          auto d = now[i].second.minus(from[id][i].second);
          std::printf(" %s=%.0f/%.0f/%.0f/%llu", now[i].first.c_str(), d.quantile_us(0.5), d.quantile_us(0.99),
                      d.quantile_us(1.0), static_cast<unsigned long long>(d.count()));
        }
        std::printf("\n");
      }
    };
    // The whole machine (both nodes, their background threads and this client) in each phase.
    auto print_cpu = [](const char* kind, const LoadResult& r) {
      std::printf("CPU %s (whole machine) closed loop: busy=%.0f%% cpu_us_per_call=%.0f switches_per_call=%.1f; "
                  "open loop: busy=%.0f%% cpu_us_per_call=%.0f switches_per_call=%.1f\n",
                  kind, r.at_max.busy * 100, r.at_max.us_per_call, r.at_max.switches_per_call, r.at_rate.busy * 100,
                  r.at_rate.us_per_call, r.at_rate.switches_per_call);
    };
    std::map<uint32_t, Stages> before_ce, after_ce;
    auto a = load(c, on1, {}, "ce", seconds, opts.load, opts.trace, [&](bool starts) { stages(starts ? before_ce : after_ce); });
    std::printf("RESULT bench=request_reply kind=client_to_entity durability=%s max_per_s=%.0f at_per_s=%.0f "
                "p50_ms=%.2f p99_ms=%.2f loopback_rtt_p50_ms=%.3f errors=%llu\n",
                durability.c_str(), a.max_per_s, a.rate, a.lat_ms.p50, a.lat_ms.p99, rtt.p50 / 1000, static_cast<unsigned long long>(a.errors));
    print_cpu("client_to_entity", a);
    print_stages("client_to_entity", before_ce, after_ce);
    std::fflush(stdout);
    // Where the time goes on each node during the open loop: stage histograms read before and after.
    auto b = load(c, on1, on2, "ee", seconds, opts.load, opts.trace, [&](bool starts) { stages(starts ? before : after); });
    std::printf("RESULT bench=request_reply kind=entity_to_entity_cross_node durability=%s max_per_s=%.0f "
                "at_per_s=%.0f p50_ms=%.2f p99_ms=%.2f loopback_rtt_p50_ms=%.3f errors=%llu\n",
                durability.c_str(), b.max_per_s, b.rate, b.lat_ms.p50, b.lat_ms.p99, rtt.p50 / 1000, static_cast<unsigned long long>(b.errors));
    print_cpu("entity_to_entity", b);
    print_stages("entity_to_entity", before, after);
    std::fflush(stdout);
    client = tandem::Status::ok();
    lc.down();
    // The demo on a fresh 3-node cluster (the request/reply runs above leave full memtables and
    // pending compactions behind, which the baselines would not carry), then the same demo on a
    // fresh 1-node cluster (same client, same launcher: only the hops between nodes differ) and on
    // one in-process node (no network at all), each alone on the machine, for the ratios.
    reservation::DemoOptions d = demo_options(opts);
    auto env2 = tandem::make_real_env();
    // nullopt when the cluster does not start or take a client (LocalCluster and connect say why).
    auto on_cluster = [&](const char* name, int nodes, int base_port) -> std::optional<reservation::DemoResult> {
      LocalCluster fresh(name, self_bin, kClusterTypes, durability, base_port, "embedded", nodes);
      fresh.keep = opts.keep;
      if (!fresh.up) return std::nullopt;
      auto cl = fresh.connect("client");
      if (!cl) return std::nullopt;
      return reservation::run_demo(**cl, env2->clock(), d);
    };
    auto three = on_cluster("cluster3", 3, 27700);
    if (!three) return 1;
    auto& r = *three;
    double cluster1_per_s = 0;
    if (auto r1 = on_cluster("cluster1", 1, 27300); r1 && r1->invariant == "ok")
      cluster1_per_s = r1->orders_per_s;
    else if (r1)
      std::fprintf(stderr, "tandem-bench: the 1-node cluster's demo: invariant=%s\n", r1->invariant.c_str());
    double one_per_s = demo_in_process(*env2, d, durability).orders_per_s;
    std::printf("RESULT bench=demo nodes=3 durability=%s orders_per_s=%.0f p50_ms=%.2f p99_ms=%.2f orders=%llu "
                "concurrency=%llu invariant=%s nodes1_cluster_orders_per_s=%.0f ratio_cluster=%.2f "
                "nodes1_orders_per_s=%.0f ratio=%.2f\n",
                durability.c_str(), r.orders_per_s, r.p50_ms, r.p99_ms, static_cast<unsigned long long>(r.orders),
                static_cast<unsigned long long>(opts.concurrency), r.invariant.c_str(), cluster1_per_s,
                cluster1_per_s > 0 ? r.orders_per_s / cluster1_per_s : 0, one_per_s,
                one_per_s > 0 ? r.orders_per_s / one_per_s : 0);
    std::fflush(stdout);
  }
  client = tandem::Status::ok();  // disconnect before the cluster goes down
  return rc;
}

// The node holding the controller role (node 1 when none answers).
uint32_t controller_of(tandem::entity::Client& c) {
  auto r = c.controller();
  return r ? *r : 1;
}

// A partition of `entities` pingers (each with an activity: the client reply record), moved
// from node 1 to node 2 while a client keeps calling its entities at a steady rate.
int bench_move(const std::string& self_bin, uint64_t entities, const Opts& opts) {
  LocalCluster lc("move", self_bin,
                  "type pinger hash slots=16 partitions=1\n"
                  "type order hash slots=256 partitions=6\n"
                  "type item range splits=sku-2,sku-4,sku-6,sku-8\n"
                  "type runner hash partitions=3\n",
                  "strict", 27500, opts.meta);
  if (!lc.up) return 1;
  std::printf("metadata store: %s\n", opts.meta.c_str());
  auto client = lc.connect("admin");  // it moves partitions
  int rc = 0;
  if (!client) {
    rc = 1;
  } else {
    auto& c = **client;
    // 1. Populate.
    std::atomic<uint64_t> done{0};
    double t0 = now_s();
    for (uint64_t i = 0; i < entities; ++i) {
      while (i - done > 4096) std::this_thread::sleep_for(std::chrono::microseconds(200));
      c.call<Echo>(EntityRef{"pinger", "e" + std::to_string(i)}, "bench", "init-" + std::to_string(i),
                   [](Echo::Builder) {}, [&](tandem::entity::ClientReply) { ++done; });
    }
    while (done < entities) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    double populate_s = now_s() - t0;
    // 2. Steady calls at `rate`/s to random entities of the partition; latency by send time.
    const double rate = 1000;
    std::mutex mu;
    std::vector<std::pair<double, double>> lat;  // (sent at, latency ms)
    std::atomic<bool> stop{false};
    std::atomic<uint64_t> n{0};
    std::thread load([&] {
      std::mt19937_64 rnd(7);
      double next = now_s();
      while (!stop) {
        while (now_s() < next) std::this_thread::sleep_for(std::chrono::microseconds(100));
        double sent = now_s();
        c.call<Echo>(EntityRef{"pinger", "e" + std::to_string(rnd() % entities)}, "bench", "m-" + std::to_string(n++),
                     [](Echo::Builder) {}, [&, sent](tandem::entity::ClientReply) {
                       std::lock_guard lock(mu);
                       lat.emplace_back(sent, (now_s() - sent) * 1e3);
                     });
        next += 1.0 / rate;
      }
    });
    std::this_thread::sleep_for(std::chrono::seconds(2));
    double move_start = now_s();
    auto r = c.request(controller_of(c), "move", tandem::ByteWriter().varint(1).bytes("2").take(), 600'000);
    double move_end = now_s();
    std::this_thread::sleep_for(std::chrono::seconds(2));
    stop = true;
    load.join();
    std::this_thread::sleep_for(std::chrono::seconds(3));
    std::vector<double> before, during;
    double worst = 0;
    {
      std::lock_guard lock(mu);
      for (auto& [sent, ms] : lat) {
        if (sent < move_start) before.push_back(ms);
        else if (sent <= move_end) during.push_back(ms), worst = std::max(worst, ms);
      }
    }
    auto pb = percentiles(before), pd = percentiles(during);
    std::printf("RESULT bench=move entities=%llu durability=strict move_ms=%.0f populate_per_s=%.0f "
                "steady_p50_ms=%.2f steady_p99_ms=%.2f during_move_p50_ms=%.2f during_move_p99_ms=%.2f "
                "during_move_max_ms=%.0f calls_during_move=%zu rate_per_s=%.0f %s\n",
                static_cast<unsigned long long>(entities), (move_end - move_start) * 1e3,
                static_cast<double>(entities) / populate_s, pb.p50, pb.p99, pd.p50, pd.p99, worst, during.size(), rate,
                r ? "" : ("move_failed=\"" + r.status().message() + "\"").c_str());
    std::fflush(stdout);
    if (r) std::fprintf(stderr, "%s\n", r->c_str());
    // 3. The demo steady, then during a storm of moves (one every 300 ms), same cluster.
    reservation::DemoOptions d = demo_options(opts);
    auto env2 = tandem::make_real_env();
    auto steady = reservation::run_demo(c, env2->clock(), d);
    std::atomic<bool> storm_stop{false};
    std::atomic<int> storm_moves{0};
    std::thread storm([&] {
      std::mt19937 rnd(11);
      while (!storm_stop) {
        std::this_thread::sleep_for(std::chrono::milliseconds(300));
        uint32_t pid = 2 + rnd() % 11;  // the order and item partitions
        auto m = c.request(controller_of(c), "move", tandem::ByteWriter().varint(pid).bytes(std::to_string(1 + rnd() % 3)).take(), 60'000);
        if (m) ++storm_moves;
      }
    });
    reservation::DemoOptions d2 = d;
    d2.order_prefix = "storm-order-";  // new orders over the same items
    auto stormy = reservation::run_demo(c, env2->clock(), d2);
    storm_stop = true;
    storm.join();
    std::printf("RESULT bench=move_storm durability=strict steady_orders_per_s=%.0f steady_p99_ms=%.2f "
                "storm_orders_per_s=%.0f storm_p99_ms=%.2f moves=%d p99_ratio=%.2f invariant=%s/%s\n",
                steady.orders_per_s, steady.p99_ms, stormy.orders_per_s, stormy.p99_ms, storm_moves.load(),
                steady.p99_ms > 0 ? stormy.p99_ms / steady.p99_ms : 0, steady.invariant.c_str(), stormy.invariant.c_str());
    std::fflush(stdout);
  }
  client = tandem::Status::ok();  // disconnect before the cluster goes down
  return rc;
}

}  // namespace

int main(int argc, char** argv) {
  const char* usage =
      "usage: tandem-bench transitions|memory|demo|all [--seconds S] [--durability strict|relaxed]\n"
      "                    [--entities N] [--orders N] [--items N] [--concurrency N]\n"
      "       tandem-bench cluster [--load F] [--durability strict|relaxed] [--trace PREFIX] [--keep]\n"
      "       tandem-bench move [--entities N] [--meta embedded|etcd]\n";
  if (argc < 2) {
    std::fputs(usage, stderr);
    return 2;
  }
  std::string cmd = argv[1];
  if (cmd == "node") {
    tandem::entity::NodeMain node(argc, argv, 2);
    node.add<Runner>();
    node.add<Pinger>();
    node.add<reservation::Order>();
    node.add<reservation::Item>();
    return node.run();
  }
  auto f = tandem::Flags::parse(argc, argv, 2, {"seconds", "durability", "entities", "orders", "items", "concurrency", "load", "meta", "trace"}, {"keep"});
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
  o.load = f->f64("load", o.load).value();
  o.meta = f->str("meta", "embedded");
  o.trace = f->str("trace", "");
  o.keep = f->has("keep");
  if (o.meta != "embedded" && o.meta != "etcd") {
    std::fprintf(stderr, "tandem-bench: --meta is embedded or etcd (a local etcd), not '%s'\n", o.meta.c_str());
    return 2;
  }
  if (o.load <= 0 || o.load > 1) {
    std::fprintf(stderr, "tandem-bench: --load is a fraction in (0, 1]\n");
    return 2;
  }
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
  if (cmd == "cluster" || cmd == "all") {
    std::string self = std::filesystem::canonical("/proc/self/exe").string();
    if (int rc = bench_cluster(self, o.seconds, o, o.durability.empty() ? "strict" : o.durability); rc != 0) return rc;
  }
  if (cmd == "move") {
    std::string self = std::filesystem::canonical("/proc/self/exe").string();
    return bench_move(self, o.entities ? o.entities : 100'000, o);
  }
  if (cmd != "transitions" && cmd != "demo" && cmd != "memory" && cmd != "cluster" && cmd != "all") {
    std::fprintf(stderr, "tandem-bench: unknown command '%s'\n%s", cmd.c_str(), usage);
    return 2;
  }
  return 0;
}
