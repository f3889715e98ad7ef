#include <tandem/messaging/relay.h>

#include <algorithm>
#include <atomic>
#include <mutex>

namespace tandem::messaging {

// Late callbacks (acks from other threads, timers) check the gate before touching the Relay.
struct Relay::Gate {
  std::mutex mu;
  std::atomic<bool> open{true};  // read lock-free on the executor; written under mu
  Executor* exec;
};

Relay::Relay(Executor& exec, Transport& transport, const Clock& clock, uint64_t seed, RelayOptions opts,
             AckedFn on_acked)
    : exec_(exec), transport_(transport), clock_(clock), random_(seed), opts_(opts),
      on_acked_(std::move(on_acked)), gate_(std::make_shared<Gate>()) {
  gate_->exec = &exec_;
}

Relay::~Relay() { stop(); }

void Relay::stop() {
  std::lock_guard lock(gate_->mu);
  gate_->open = false;
}

void Relay::add(const std::string& row_key, Envelope env) {
  auto [it, inserted] = pending_.try_emplace(row_key);
  if (!inserted) return;
  it->second.env = std::move(env);
  it->second.added_us = clock_.now_us();
  send(row_key);
}

int64_t Relay::backoff_us(uint32_t attempts) {
  int64_t b = opts_.backoff_min_us << std::min<uint32_t>(attempts, 20);
  b = std::min(b, opts_.backoff_max_us);
  // Full jitter over the upper half: spreads retries of many rows that failed together.
  return b / 2 + static_cast<int64_t>(random_.uniform(static_cast<uint64_t>(b / 2 + 1)));
}

void Relay::send(const std::string& key) {
  auto it = pending_.find(key);
  if (it == pending_.end()) return;
  auto& p = it->second;
  uint64_t gen = p.generation = next_generation_++;
  ++p.attempts;
  p.sent_us = clock_.now_us();
  p.awaiting = true;
  auto gate = gate_;
  transport_.send(p.env, [gate, key, gen, this](Status s) {
    std::lock_guard lock(gate->mu);
    if (!gate->open) return;
    gate->exec->post([gate, key, gen, s = std::move(s), this]() mutable {
      if (!gate->open) return;
      on_ack(key, gen, std::move(s));
    });
  });
  // No answer at all (lost delivery or lost ack): resent by the sweep after the ack timeout.
  arm_sweep();
}

void Relay::arm_sweep() {
  if (sweep_armed_ || pending_.empty()) return;
  sweep_armed_ = true;
  int64_t wait = std::max<int64_t>(opts_.ack_timeout_us / 4, 1);
  auto gate = gate_;
  exec_.post_after(std::chrono::microseconds(wait), [gate, this] {
    if (!gate->open) return;
    sweep_armed_ = false;
    sweep();
  });
}

void Relay::sweep() {
  int64_t now = clock_.now_us();
  std::vector<std::string> resend;
  for (auto& [key, p] : pending_)
    if (p.awaiting && now - p.sent_us >= opts_.ack_timeout_us) resend.push_back(key);
  for (auto& key : resend) {
    ++retries_;
    send(key);
  }
  arm_sweep();
}

void Relay::on_ack(const std::string& key, uint64_t generation, Status s) {
  auto it = pending_.find(key);
  if (it == pending_.end()) return;  // a duplicate ack
  if (s.is_ok()) {
    if (opts_.ack_latency) opts_.ack_latency->record(clock_.now_us() - it->second.added_us);
    pending_.erase(it);
    on_acked_(key);
    return;
  }
  if (it->second.generation != generation) return;  // an old attempt's failure
  retry_later(key, generation);
}

void Relay::retry_later(const std::string& key, uint64_t generation) {
  auto it = pending_.find(key);
  it->second.generation = next_generation_++;  // a late ack of the failed attempt no longer counts
  it->second.awaiting = false;                  // the backoff timer resends it, not the sweep
  uint64_t gen = it->second.generation;
  ++retries_;
  auto gate = gate_;
  exec_.post_after(std::chrono::microseconds(backoff_us(it->second.attempts)), [gate, key, gen, this] {
    if (!gate->open) return;
    auto it = pending_.find(key);
    if (it == pending_.end() || it->second.generation != gen) return;
    send(key);
  });
}

}  // namespace tandem::messaging
