// tandem-sim: runs the deterministic cluster simulation outside ctest.
//   tandem-sim --seed N [--verbose]        replays one seed; prints its trace hash
//   tandem-sim --seeds N [--first K]       runs N seeds; prints the SIM summary line
//   tandem-sim --minutes M [--first K]     runs seeds until M minutes of wall time passed
// Exit status 1 when any seed broke an invariant (each is printed with its replay command).
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include <tandem/core/log.h>

#include "cluster_sim.h"
#include "sim_summary.h"

namespace {
int usage() {
  std::fprintf(stderr,
               "usage: tandem-sim --seed N [--verbose] | --seeds N [--first K] | --minutes M [--first K]\n"
               "       [--orders N] [--fault-ms MS]\n");
  return 2;
}
bool number(const char* s, uint64_t& v) {
  char* end = nullptr;
  v = std::strtoull(s, &end, 10);
  return s[0] && *end == 0;
}
}  // namespace

int main(int argc, char** argv) {
  uint64_t seed = 0, seeds = 0, first = 1, minutes = 0, orders = 0, fault_ms = 0;
  bool verbose = false, one = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&](uint64_t& v) { return i + 1 < argc && number(argv[++i], v); };
    if (a == "--seed" && next(seed)) one = true;
    else if (a == "--seeds" && next(seeds)) {}
    else if (a == "--first" && next(first)) {}
    else if (a == "--minutes" && next(minutes)) {}
    else if (a == "--orders" && next(orders)) {}
    else if (a == "--fault-ms" && next(fault_ms)) {}
    else if (a == "--verbose") verbose = true;
    else return usage();
  }
  if (!one && !seeds && !minutes) return usage();
  if (!verbose) tandem::log::set_level("off");
  auto opts = [&](uint64_t s) {
    tandem::sim::SimOptions o;
    o.seed = s;
    o.verbose = verbose;
    if (orders) o.orders = static_cast<int>(orders);
    if (fault_ms) o.fault_phase_ms = static_cast<int64_t>(fault_ms);
    return o;
  };
  if (one) {
    auto r = tandem::sim::run_seed(opts(seed));
    std::printf("seed=%llu trace=%016llx events=%llu virtual=%llds violations=%zu swarm: %s\n",
                static_cast<unsigned long long>(seed), static_cast<unsigned long long>(r.trace_hash),
                static_cast<unsigned long long>(r.events), static_cast<long long>(r.virtual_ms / 1000),
                r.violations.size(), r.swarm.c_str());
    for (auto& v : r.violations) std::printf("  violation: %s\n", v.c_str());
    return r.violations.empty() ? 0 : 1;
  }
  tandem::sim::Summary sum;
  auto t0 = std::chrono::steady_clock::now();
  for (uint64_t s = first;; ++s) {
    if (seeds && s >= first + seeds) break;
    if (!seeds && std::chrono::steady_clock::now() - t0 > std::chrono::minutes(minutes)) break;
    auto r = tandem::sim::run_seed(opts(s));
    sum.add(r);
    for (auto& v : r.violations)
      std::printf("seed %llu: %s (replay: tandem-sim --seed %llu --verbose)\n", static_cast<unsigned long long>(s),
                  v.c_str(), static_cast<unsigned long long>(s));
    std::fflush(stdout);
  }
  double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("%s wall=%.0fs\n", sum.line().c_str(), wall);
  return sum.violations == 0 ? 0 : 1;
}
