// The Env seams: every source of nondeterminism (time, randomness, threads) that the runtime
// uses. Only core's real implementation touches the system clock, a random device or a thread;
// a simulator supplies its own Env and steps the whole node from one thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include <tandem/core/net.h>

namespace tandem {

class Clock {
 public:
  virtual ~Clock() = default;
  // Monotonic time in microseconds; only differences are meaningful.
  virtual int64_t now_us() const = 0;
  // Wall-clock milliseconds since the Unix epoch; used for durable deadlines and timers,
  // which must keep their meaning across a restart.
  virtual int64_t wall_ms() const = 0;
  // Blocks the calling thread for `us` microseconds (a simulator advances its time instead).
  // Only for threads that may block: bounded waits at start-up and in fencing.
  virtual void sleep_us(int64_t us) const = 0;
};

// A seeded pseudo-random source. Not thread-safe: one per executor.
class Random {
 public:
  explicit Random(uint64_t seed) : state_(seed) {}
  uint64_t next();
  // Uniform in [0, n); n > 0.
  uint64_t uniform(uint64_t n) { return next() % n; }
  // True with probability p.
  bool chance(double p) { return static_cast<double>(next() >> 11) * 0x1.0p-53 < p; }

 private:
  uint64_t state_;
};

// A serial executor: tasks run one at a time, in post order, on one thread.
// post() and post_after() are thread-safe.
class Executor {
 public:
  virtual ~Executor() = default;
  virtual void post(std::function<void()> task) = 0;
  virtual void post_after(std::chrono::microseconds delay, std::function<void()> task) = 0;
  // True when called from this executor's thread.
  virtual bool in_this_thread() const = 0;
};

// A flag one thread waits for and another sets. Thread-safe.
class Event {
 public:
  virtual ~Event() = default;
  virtual void set() = 0;
  // Waits until set() was called or `timeout_us` passed (< 0: no limit); true when set. A
  // simulator runs the other tasks of the simulation meanwhile.
  virtual bool wait_us(int64_t timeout_us) = 0;
};

class Env {
 public:
  virtual ~Env() = default;
  virtual Clock& clock() = 0;
  // Every blocking wait of the runtime goes through an Event (see Handoff).
  virtual std::shared_ptr<Event> make_event() = 0;
  // The TCP network seam (a simulator connects its nodes in memory).
  virtual std::unique_ptr<net::Network> make_network() = 0;
  // A network with no thread of its own: its I/O and callbacks run on `loop`, an executor this
  // Env made, so one thread serves both the network and the loop's other tasks (a node's engine)
  // without a hand-off between them. `loop` must outlive the Network.
  virtual std::unique_ptr<net::Network> make_network_on(Executor& loop) = 0;
  // Stops this process at once, crash-only (a refused fence). The real Env exits with `code`;
  // a simulator kills the simulated node (cut off from network and disk) and returns.
  virtual void stop_process(int code) = 0;
  // A new seed for a per-executor Random.
  virtual uint64_t seed() = 0;
  // A new serial executor on its own thread (real Env) or on the simulator's loop.
  // The Executor stops and joins when destroyed; tasks still queued are dropped.
  virtual std::unique_ptr<Executor> make_executor(const std::string& name) = 0;
};

// A value handed from a callback on one thread to a caller waiting on another. Copies share
// one slot (callbacks capture it by value); the first set() wins.
template <class T>
class Handoff {
 public:
  explicit Handoff(Env& env) : s_(std::make_shared<State>()) { s_->event = env.make_event(); }
  void set(T v) const {
    {
      std::lock_guard lock(s_->mu);
      if (s_->value) return;
      s_->value.emplace(std::move(v));
    }
    s_->event->set();
  }
  // The value, or nullopt when `timeout_us` passed first (< 0: waits without limit).
  std::optional<T> wait_us(int64_t timeout_us) const {
    s_->event->wait_us(timeout_us);
    std::lock_guard lock(s_->mu);
    return std::move(s_->value);
  }

 private:
  struct State {
    std::mutex mu;
    std::optional<T> value;
    std::shared_ptr<Event> event;
  };
  std::shared_ptr<State> s_;
};

// The production Env: system clocks, a random-device seed, Asio executors on threads.
std::unique_ptr<Env> make_real_env();

}  // namespace tandem
