// The reservation demo driver: sets up items, places orders of 1-3 random lines at a chosen
// concurrency as an external client (idempotency key per order, retried on timeout), waits
// for quiescence, then checks the invariant by reading the stores back.
#pragma once

#include <cstdint>
#include <string>

#include <tandem/core/env.h>
#include <tandem/entity/gateway.h>

namespace reservation {

struct DemoOptions {
  uint64_t orders = 10'000;
  uint64_t items = 1'000;
  uint64_t concurrency = 64;
  uint64_t stock = 30;          // initial stock per item
  uint64_t seed = 42;           // decides every order's lines: a rerun places the same orders
  std::string order_prefix = "order-";  // order keys: <prefix><n>; another prefix places new orders
  int64_t deadline_ms = 10'000; // each order's escrow deadline
  int64_t reply_timeout_ms = 5'000;  // the client retries (same idempotency key) after this
  int64_t quiesce_timeout_ms = 120'000;
  bool progress = true;
};

struct DemoResult {
  uint64_t orders = 0, confirmed = 0, cancelled = 0, broken = 0, retries = 0;
  uint64_t busy = 0;  // orders a node answered busy (backpressure); each placed again after 100 ms
  double seconds = 0, orders_per_s = 0, p50_ms = 0, p99_ms = 0;
  std::string invariant;  // "ok" or "FAILED:<what>"
};

// Runs against an in-process Node or a cluster Client alike.
DemoResult run_demo(tandem::entity::Gateway& gw, tandem::Clock& clock, const DemoOptions& opts);

// Reads every item and order back from the store and checks DESIGN section 9's invariant.
std::string check_invariant(tandem::entity::Gateway& gw, const DemoOptions& opts, DemoResult* counts);

}  // namespace reservation
