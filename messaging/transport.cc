#include <tandem/messaging/transport.h>

namespace tandem::messaging {

FaultyTransport::FaultyTransport(Transport& inner, Executor& timers, FaultOptions opts)
    : inner_(inner), timers_(timers), opts_(opts), random_(opts.seed) {}

FaultyTransport::Counters FaultyTransport::counters() const {
  std::lock_guard lock(mu_);
  return counters_;
}

void FaultyTransport::send(const Envelope& env, AckFn ack) {
  struct Plan {
    bool drop;
    int64_t delay_us;
  };
  std::vector<Plan> plans;
  {
    std::lock_guard lock(mu_);
    ++counters_.sent;
    int copies = 1;
    if (random_.chance(opts_.duplicate)) {
      copies = std::max(2, opts_.max_copies);
      ++counters_.duplicated;
    }
    for (int i = 0; i < copies; ++i) {
      Plan p{random_.chance(opts_.drop), 0};
      if (p.drop) ++counters_.dropped;
      if (opts_.max_delay_us > 0 && random_.chance(opts_.delay)) {
        p.delay_us = static_cast<int64_t>(random_.uniform(static_cast<uint64_t>(opts_.max_delay_us) + 1));
        ++counters_.delayed;
      }
      plans.push_back(p);
    }
  }
  for (auto& p : plans) {
    if (p.drop) continue;
    if (p.delay_us == 0) {
      inner_.send(env, ack);
    } else {
      in_flight_.fetch_add(1, std::memory_order_acq_rel);
      timers_.post_after(std::chrono::microseconds(p.delay_us), [this, env, ack] {
        inner_.send(env, ack);
        in_flight_.fetch_sub(1, std::memory_order_acq_rel);
      });
    }
  }
}

}  // namespace tandem::messaging
