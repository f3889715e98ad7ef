// tandem-reservation: the reservation demo's node binary. It registers Order and Item.
//   node   serve as one node of a cluster (NodeMain)
//   drive  run the demo driver against a running cluster, over the network
//   demo   run the driver against an in-process node (one process, no network)
#include <algorithm>
#include <cstdio>
#include <filesystem>

#include <tandem/core/env.h>
#include <tandem/core/flags.h>
#include <tandem/core/log.h>
#include <tandem/entity/client.h>
#include <tandem/entity/node.h>
#include <tandem/entity/node_main.h>

#include "driver.h"
#include "entities.h"

namespace {

constexpr const char* kUsage =
    "usage: tandem-reservation node --config FILE --id N [--log-level LEVEL]\n"
    "       tandem-reservation drive --config FILE [--orders N] [--items N] [--concurrency N] [--stock N]\n"
    "                                [--seed N] [--deadline-ms N] [--order-prefix P] [--quiet]\n"
    "       tandem-reservation demo [--data DIR] [--fresh] [--orders N] [--items N] [--concurrency N]\n"
    "                               [--stock N] [--seed N] [--deadline-ms N] [--durability strict|relaxed]\n"
    "                               [--no-inline] [--duplicate P] [--drop P] [--delay P] [--max-delay-us N]\n"
    "                               [--max-batch N] [--grace-ms N] [--reply-timeout-ms N] [--quiet]\n"
    "                               [--log-level LEVEL]\n"
    "  Runs the order/inventory reservation demo on one node and prints one RESULT line.\n"
    "  Rerunning with the same --data and --seed resumes: every order is retried with its\n"
    "  idempotency key, so none is placed twice.\n";

int fail(const tandem::Status& s) {
  std::fprintf(stderr, "tandem-reservation: %s\n%s", s.to_string().c_str(), kUsage);
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  std::string cmd = argc >= 2 ? argv[1] : "";
  if (cmd == "--help" || cmd == "help") {
    std::fputs(kUsage, stdout);
    return 0;
  }
  if (cmd == "node") {
    tandem::entity::NodeMain node(argc, argv, 2);
    node.add<reservation::Order>();
    node.add<reservation::Item>();
    return node.run();
  }
  if (cmd != "demo" && cmd != "drive") {
    std::fprintf(stderr, "tandem-reservation: %s\n%s",
                 cmd.empty() ? "missing command" : ("unknown command '" + cmd + "'").c_str(), kUsage);
    return 2;
  }
  auto flags = tandem::Flags::parse(
      argc, argv, 2,
      {"data", "orders", "items", "concurrency", "stock", "seed", "deadline-ms", "durability", "duplicate", "drop",
       "delay", "max-delay-us", "max-batch", "log-level", "grace-ms", "reply-timeout-ms", "config", "order-prefix"},
      {"fresh", "no-inline", "quiet", "help"});
  if (!flags) return fail(flags.status());
  auto& f = *flags;
  if (f.has("help")) {
    std::fputs(kUsage, stdout);
    return 0;
  }
  if (!f.positional().empty()) return fail(tandem::Status::invalid_argument("unexpected argument '" + f.positional()[0] + "'"));
  tandem::log::set_level(f.str("log-level", "warn"));

  reservation::DemoOptions d;
  tandem::entity::NodeOptions n;
  n.data_dir = f.str("data", ".tandem/demo");
  n.durability = f.str("durability", "strict");
  n.inline_local = !f.has("no-inline");
  auto orders = f.u64("orders", d.orders), items = f.u64("items", d.items), conc = f.u64("concurrency", d.concurrency),
       stock = f.u64("stock", d.stock), seed = f.u64("seed", d.seed), max_batch = f.u64("max-batch", n.max_batch),
       max_delay = f.u64("max-delay-us", 0);
  auto deadline = f.i64("deadline-ms", d.deadline_ms), grace = f.i64("grace-ms", n.op_grace_ms),
       reply_timeout = f.i64("reply-timeout-ms", d.reply_timeout_ms);
  auto dup = f.f64("duplicate", 0), drop = f.f64("drop", 0), delay = f.f64("delay", 0);
  for (auto* r : {&orders, &items, &conc, &stock, &seed, &max_batch, &max_delay})
    if (!*r) return fail(r->status());
  for (auto* r : {&deadline, &grace, &reply_timeout})
    if (!*r) return fail(r->status());
  for (auto* r : {&dup, &drop, &delay})
    if (!*r) return fail(r->status());
  if (*items == 0 || *conc == 0) return fail(tandem::Status::invalid_argument("--items and --concurrency must be positive"));
  d.orders = *orders;
  d.items = *items;
  d.concurrency = *conc;
  d.stock = *stock;
  d.seed = *seed;
  d.deadline_ms = *deadline;
  d.reply_timeout_ms = *reply_timeout;
  d.progress = !f.has("quiet");
  d.order_prefix = f.str("order-prefix", d.order_prefix);
  n.max_batch = *max_batch;
  n.op_grace_ms = *grace;
  n.faults.duplicate = *dup;
  n.faults.drop = *drop;
  n.faults.delay = *delay;
  n.faults.max_delay_us = static_cast<int64_t>(*max_delay);
  n.faults.seed = *seed;
  if (n.faults.drop > 0) n.relay_ack_timeout_ms = 200;
  if (cmd == "drive") {
    if (!f.has("config")) return fail(tandem::Status::invalid_argument("drive needs --config FILE"));
    auto env = tandem::make_real_env();
    tandem::entity::Client::Options co;
    co.config_path = f.str("config", "");
    auto client = tandem::entity::Client::connect(co);
    if (!client) {
      std::fprintf(stderr, "tandem-reservation: cannot reach the cluster: %s\n", client.status().to_string().c_str());
      return 1;
    }
    std::fprintf(stderr, "reservation demo: %llu orders over %llu items, concurrency %llu, on %zu nodes\n",
                 static_cast<unsigned long long>(d.orders), static_cast<unsigned long long>(d.items),
                 static_cast<unsigned long long>(d.concurrency), (*client)->nodes());
    auto before = (*client)->map_summary();  // moves and splits are counted for this drive
    auto r = reservation::run_demo(**client, env->clock(), d);
    (*client)->refresh();
    auto ms = (*client)->map_summary();
    ms.moves -= std::min(ms.moves, before.moves);
    ms.splits -= std::min(ms.splits, before.splits);
    std::printf(
        "RESULT demo nodes=%zu orders=%llu confirmed=%llu cancelled=%llu orders_per_s=%.1f p50_ms=%.2f p99_ms=%.2f "
        "durability=%s invariant=%s retries=%llu moves=%llu splits=%llu epoch=%llu busy=%llu\n",
        (*client)->nodes(), static_cast<unsigned long long>(r.orders), static_cast<unsigned long long>(r.confirmed),
        static_cast<unsigned long long>(r.cancelled), r.orders_per_s, r.p50_ms, r.p99_ms, (*client)->durability().c_str(),
        r.invariant.c_str(), static_cast<unsigned long long>(r.retries), static_cast<unsigned long long>(ms.moves),
        static_cast<unsigned long long>(ms.splits), static_cast<unsigned long long>(ms.epoch),
        static_cast<unsigned long long>(r.busy));
    return r.invariant == "ok" ? 0 : 1;
  }
  if (f.has("fresh")) std::filesystem::remove_all(n.data_dir);

  auto env = tandem::make_real_env();
  tandem::entity::Registry registry;
  registry.add<reservation::Order>();
  registry.add<reservation::Item>();
  tandem::entity::Node node(*env, registry, n);
  if (auto s = node.start(); !s) {
    std::fprintf(stderr, "tandem-reservation: cannot start node: %s\n", s.to_string().c_str());
    return 1;
  }
  std::fprintf(stderr, "reservation demo: %llu orders over %llu items, concurrency %llu, durability %s, data %s\n",
               static_cast<unsigned long long>(d.orders), static_cast<unsigned long long>(d.items),
               static_cast<unsigned long long>(d.concurrency), n.durability.c_str(), n.data_dir.c_str());
  auto r = reservation::run_demo(node, env->clock(), d);
  auto st = node.stats();
  node.stop();
  std::printf(
      "RESULT demo nodes=1 orders=%llu confirmed=%llu cancelled=%llu orders_per_s=%.1f p50_ms=%.2f p99_ms=%.2f "
      "durability=%s invariant=%s retries=%llu duplicates=%llu commits=%llu\n",
      static_cast<unsigned long long>(r.orders), static_cast<unsigned long long>(r.confirmed),
      static_cast<unsigned long long>(r.cancelled), r.orders_per_s, r.p50_ms, r.p99_ms, n.durability.c_str(),
      r.invariant.c_str(), static_cast<unsigned long long>(r.retries), static_cast<unsigned long long>(st.duplicates),
      static_cast<unsigned long long>(st.commits));
  return r.invariant == "ok" ? 0 : 1;
}
