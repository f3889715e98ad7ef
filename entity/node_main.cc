#include <tandem/entity/node_main.h>

#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstdio>

#include <tandem/core/etcd.h>
#include <tandem/core/flags.h>
#include <tandem/core/log.h>
#include <tandem/core/net.h>

#include "cluster.h"

namespace tandem::entity {

namespace {
constexpr const char* kUsage =
    "node flags: --config FILE --id N [--log-level trace|debug|info|warn|error] [--max-batch N]\n"
    "            [--listen HOST:PORT] [--admin HOST:PORT] [--data DIR] [--secret-file FILE] [--durability strict|relaxed]\n"
    "            [--meta embedded|etcd://HOST:PORT[/PREFIX]]\n"
    "  --listen/--admin/--data override this node's line of the config (other nodes still reach it at\n"
    "  the address the config lists); --secret-file, --durability and --meta override the cluster settings.\n";
}

int NodeMain::run() {
  auto f = Flags::parse(argc_, argv_, first_, {"config", "id", "log-level", "max-batch", "listen", "admin", "data", "secret-file", "durability", "meta"}, {});
  if (!f) {
    std::fprintf(stderr, "%s\n%s", f.status().to_string().c_str(), kUsage);
    return 2;
  }
  if (!f->positional().empty()) {
    std::fprintf(stderr, "unexpected argument '%s'\n%s", f->positional()[0].c_str(), kUsage);
    return 2;
  }
  auto id = f->u64("id", 0);
  auto max_batch = f->u64("max-batch", 2048);
  if (id && *id > UINT32_MAX) {
    std::fprintf(stderr, "--id %llu is not a node id (1 to %u)\n%s", static_cast<unsigned long long>(*id), UINT32_MAX, kUsage);
    return 2;
  }
  if (!id || !max_batch || *id == 0 || !f->has("config")) {
    std::fprintf(stderr, "%s\n%s", !id ? id.status().to_string().c_str() : "--config and --id are required", kUsage);
    return 2;
  }
  log::set_level(f->str("log-level", "info"));
  spdlog::set_pattern("%Y-%m-%d %H:%M:%S.%e %^%l%$ node " + std::to_string(*id) + ": %v");
  auto config = partition::ClusterConfig::load(f->str("config", ""));
  if (!config) {
    log::error("{}", config.status().to_string());
    return 1;
  }
  auto* me = config->node(static_cast<uint32_t>(*id));
  if (!me) {
    log::error("node id {} is not in {}", *id, f->str("config", ""));
    return 1;
  }
  for (auto [flag, field] : {std::pair{"listen", &me->addr}, std::pair{"admin", &me->admin}}) {
    if (!f->has(flag)) continue;
    auto e = net::Endpoint::parse(f->str(flag, ""));
    if (!e) {
      std::fprintf(stderr, "--%s: %s\n%s", flag, e.status().message().c_str(), kUsage);
      return 2;
    }
    *field = *e;
  }
  if (f->has("data")) me->data_dir = f->str("data", "");
  if (f->has("secret-file")) config->secret_file = f->str("secret-file", "");
  if (f->has("durability")) {
    auto d = f->str("durability", "");
    if (d != "strict" && d != "relaxed") {
      std::fprintf(stderr, "--durability must be strict or relaxed, not '%s'\n%s", d.c_str(), kUsage);
      return 2;
    }
    config->durability = d;
  }
  if (f->has("meta")) {
    auto m = f->str("meta", "");
    if (m != "embedded")
      if (auto a = EtcdAddress::parse(m); !a) {
        std::fprintf(stderr, "--meta: %s\n%s", a.status().message().c_str(), kUsage);
        return 2;
      }
    config->meta = m;
  }
  // SIGTERM and SIGINT are taken by one thread with sigwait; block them before any thread starts.
  // A signal while start() still waits (for the controller's map, for etcd) interrupts it.
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGTERM);
  sigaddset(&sigs, SIGINT);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);

  auto env = make_real_env();
  NodeOptions opts;
  opts.max_batch = *max_batch;
  ClusterNode node(*env, registry_, std::move(*config), static_cast<uint32_t>(*id), opts);
  std::atomic<int> signal{0};
  auto signalled = env->make_event();
  auto signals = env->make_executor("tandem-signals");
  signals->post([&] {
    int sig = 0;
    sigwait(&sigs, &sig);
    signal = sig;
    node.interrupt();
    signalled->set();
  });
  auto started = node.start();
  if (!started && signal == 0) {
    log::error("cannot start: {}", started.to_string());
    ::kill(::getpid(), SIGTERM);  // ends the signal task's sigwait: every other thread blocks SIGTERM
    signals.reset();
    return 1;
  }
  signalled->wait_us(-1);
  signals.reset();
  log::info("signal {}: stopping{}", signal.load(), started ? "" : " (it had not started: " + started.message() + ")");
  node.stop();
  log::info("stopped");
  return 0;
}

}  // namespace tandem::entity
