// The one-line summary of a batch of simulation seeds:
//   SIM seeds=200 faults=1234 (kill=.. ...) violations=0 sometimes_missed=0 (name=count ...) virtual=...s events=...
#pragma once

#include <map>
#include <string>

#include <tandem/core/sometimes.h>

#include "cluster_sim.h"

namespace tandem::sim {

struct Summary {
  uint64_t seeds = 0, violations = 0, faults = 0, events = 0, orders_confirmed = 0, orders_cancelled = 0;
  int64_t virtual_ms = 0;
  std::map<std::string, uint64_t> by_kind;
  uint64_t start[static_cast<int>(Sometimes::kCount)] = {};

  Summary() {
    for (int i = 0; i < static_cast<int>(Sometimes::kCount); ++i) start[i] = sometimes_count(static_cast<Sometimes>(i));
  }
  void add(const SimResult& r) {
    ++seeds;
    violations += r.violations.size();
    for (auto& [k, v] : r.faults) {
      by_kind[k] += v;
      if (k.find("_requested") == std::string::npos && k != "broken_order" && k != "rocksdb_seed") faults += v;
    }
    events += r.events;
    virtual_ms += r.virtual_ms;
    orders_confirmed += r.confirmed;
    orders_cancelled += r.cancelled;
  }
  uint64_t reached(int i) const { return sometimes_count(static_cast<Sometimes>(i)) - start[i]; }
  uint64_t sometimes_missed() const {
    uint64_t n = 0;
    for (int i = 0; i < static_cast<int>(Sometimes::kCount); ++i) n += reached(i) == 0;
    return n;
  }
  std::string missed_names() const {
    std::string out;
    for (int i = 0; i < static_cast<int>(Sometimes::kCount); ++i)
      if (!reached(i)) out += std::string(out.empty() ? "" : " ") + std::string(sometimes_name(static_cast<Sometimes>(i)));
    return out;
  }
  std::string line() const {
    std::string kinds, some;
    for (auto& [k, v] : by_kind) kinds += (kinds.empty() ? "" : " ") + k + "=" + std::to_string(v);
    for (int i = 0; i < static_cast<int>(Sometimes::kCount); ++i)
      some += (some.empty() ? "" : " ") + std::string(sometimes_name(static_cast<Sometimes>(i))) + "=" + std::to_string(reached(i));
    return "SIM seeds=" + std::to_string(seeds) + " faults=" + std::to_string(faults) + " violations=" +
           std::to_string(violations) + " sometimes_missed=" + std::to_string(sometimes_missed()) + " orders=" +
           std::to_string(orders_confirmed) + "c/" + std::to_string(orders_cancelled) + "x virtual=" +
           std::to_string(virtual_ms / 1000) + "s events=" + std::to_string(events) + " (" + kinds + ") (" + some + ")";
  }
};

}  // namespace tandem::sim
