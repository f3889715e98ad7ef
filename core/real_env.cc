#include <tandem/core/env.h>

#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <thread>

#include "asio_executor.h"

namespace tandem {

uint64_t Random::next() {  // splitmix64
  uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

namespace {

class RealClock final : public Clock {
 public:
  int64_t now_us() const override {
    return std::chrono::duration_cast<std::chrono::microseconds>(
               std::chrono::steady_clock::now().time_since_epoch())
        .count();
  }
  int64_t wall_ms() const override {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
  }
  void sleep_us(int64_t us) const override { std::this_thread::sleep_for(std::chrono::microseconds(us)); }
};

class RealEvent final : public Event {
 public:
  void set() override {
    std::lock_guard lock(mu_);
    set_ = true;
    cv_.notify_all();
  }
  bool wait_us(int64_t timeout_us) override {
    std::unique_lock lock(mu_);
    if (timeout_us < 0) {
      cv_.wait(lock, [this] { return set_; });
      return true;
    }
    return cv_.wait_for(lock, std::chrono::microseconds(timeout_us), [this] { return set_; });
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool set_ = false;
};

class RealEnv final : public Env {
 public:
  Clock& clock() override { return clock_; }
  std::shared_ptr<Event> make_event() override { return std::make_shared<RealEvent>(); }
  std::unique_ptr<net::Network> make_network() override { return net::make_real_network(); }
  std::unique_ptr<net::Network> make_network_on(Executor& loop) override { return net::make_real_network_on(loop); }
  void stop_process(int code) override {
    std::fflush(nullptr);
    std::_Exit(code);
  }
  uint64_t seed() override { return (static_cast<uint64_t>(rd_()) << 32) ^ rd_() ^ counter_++; }
  std::unique_ptr<Executor> make_executor(const std::string& name) override {
    return std::make_unique<detail::AsioExecutor>(name);
  }

 private:
  RealClock clock_;
  std::random_device rd_;
  std::atomic<uint64_t> counter_{0};
};

}  // namespace

std::unique_ptr<Env> make_real_env() { return std::make_unique<RealEnv>(); }

}  // namespace tandem
