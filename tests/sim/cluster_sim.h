// One simulated run of a whole Tandem cluster: real ClusterNodes running the reservation
// entities, driven by a real Client, all in one World (sim.h). The seed decides everything:
// the fault profile (swarm: each kind of fault on or off, and how often), the orders, the
// moves and splits, and every scheduling choice.
//
// Fault phase: orders arrive while nodes are killed (some with a power cut), paused and
// partitioned from each other, connections reset, moves and splits run; after every step the
// local invariants are checked (no order answered two different ways, no dead process wrote).
// Healed phase: every fault is lifted and the cluster must reach quiescence within a bound
// (every order answered and terminal, outboxes empty), then the reservation invariant is
// checked by reading every store back through the client.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace tandem::sim {

struct SimOptions {
  uint64_t seed = 1;
  int nodes = 3;
  int orders = 40;
  int items = 12;
  int64_t fault_phase_ms = 15'000;  // virtual
  int64_t heal_limit_ms = 300'000;  // virtual: quiescence must come within this after healing
  bool verbose = false;
};

struct SimResult {
  uint64_t seed = 0;
  uint64_t trace_hash = 0;
  uint64_t events = 0;
  int64_t virtual_ms = 0;
  std::string swarm;                       // the drawn fault profile
  std::map<std::string, uint64_t> faults;  // kind -> times injected
  std::vector<std::string> violations;
  uint64_t confirmed = 0, cancelled = 0;
};

SimResult run_seed(const SimOptions& opts);

}  // namespace tandem::sim
