// The deterministic simulator's world: one thread, virtual time, one seeded random source.
//
// Every executor, network callback and timer of every simulated process is an event in one
// queue ordered by (virtual time, sequence number). A blocking wait of the runtime (an Event,
// Clock::sleep_us) runs the other events meanwhile, never those of an executor whose task is
// on the stack (executors stay serial). Processes are incarnations of nodes: a kill cuts the
// process off (its connections reset, its store writes dropped) and its object is then torn
// down in isolation; a restart is a new process on the same disk and address.
//
// The network is in memory: per-connection FIFO byte chunks with latency, resets, and links
// cut between nodes (one way or both). Data on a cut link waits (TCP retransmits) and the
// connection resets when the cut lasts longer than kStallResetUs. Disks keep synced and
// unsynced writes apart; a power cut keeps a random prefix of the unsynced ones.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include <tandem/core/env.h>
#include <tandem/core/net.h>
#include <tandem/partition/store.h>

namespace tandem::sim {

inline constexpr int64_t kForever = INT64_MAX / 4;
inline constexpr int64_t kStallResetUs = 3'000'000;

struct NetFaults {
  double reset = 0;            // per chunk sent: the connection resets (in-flight data lost)
  int64_t latency_us = 200;    // base one-way latency
  int64_t jitter_us = 300;     // added uniformly
};

class SimConn;

class World {
 public:
  explicit World(uint64_t seed);
  ~World();
  int64_t now() const { return now_; }
  Random& rng() { return rng_; }
  // Mixes `v` into the event-trace hash.
  void trace(uint64_t v);
  uint64_t trace_hash() const { return hash_; }
  uint64_t events() const { return events_; }

  // ---- processes ----
  // A new process of node `node` (0: the test driver), its clock `offset_ms` off.
  uint32_t spawn(uint32_t node, int64_t offset_ms);
  bool alive(uint32_t proc) const;
  uint32_t node_of(uint32_t proc) const;
  int64_t offset_ms(uint32_t proc) const;
  // Cuts the process off: listeners gone, connections reset, store writes dropped from now on.
  void kill(uint32_t proc);
  // The process's events wait until `until_us` (a stopped process: SIGSTOP).
  void pause(uint32_t proc, int64_t until_us);
  // Processes stopped by their own fence (Env::stop_process) since the last call.
  std::vector<uint32_t> take_self_stopped();
  void self_stopped(uint32_t proc) { self_stopped_.push_back(proc); }

  // ---- executors and events ----
  uint64_t new_exec(uint32_t proc);
  void drop_exec(uint64_t exec);
  void at(uint64_t exec, int64_t when_us, std::function<void()> fn);
  bool in_exec(uint64_t exec) const;
  // Waits until `done()` or virtual time reaches `deadline_us`; returns done(). From the test
  // (the main context) it runs the events meanwhile; from a task (each task runs on a fiber)
  // it suspends the task and the scheduler resumes it when `done()` holds or at the deadline,
  // so blocking waits never nest. Aborts with a message on a deadlock.
  bool run_until(const std::function<bool()>& done, int64_t deadline_us);

  // ---- network ----
  NetFaults net;
  // Node-level links: traffic from `a` to `b` is held while cut.
  void cut(uint32_t a, uint32_t b) { cuts_.insert({a, b}); }
  void heal_all() { cuts_.clear(); }
  bool is_cut(uint32_t from_node, uint32_t to_node) const { return cuts_.count({from_node, to_node}) > 0; }
  size_t cut_count() const { return cuts_.size(); }
  uint64_t resets = 0;  // connections reset by faults

  // ---- disks ----
  struct Disk;
  std::shared_ptr<Disk> disk(const std::string& path);
  // A power cut at `path`: unsynced writes beyond a random prefix are lost.
  void power_cut(const std::string& path);
  Result<std::unique_ptr<partition::Store>> open_store(uint32_t proc, const partition::StoreOptions& so);

 private:
  friend class SimNetwork;
  friend class SimConn;
  struct Proc {
    uint32_t node = 0;
    bool alive = true;
    int64_t paused_until = 0;
    int64_t offset_ms = 0;
  };
  struct Exec {
    uint32_t proc = 0;
    bool busy = false;
  };
  struct Ev {
    uint64_t exec;
    std::function<void()> fn;
  };
  struct Fiber;
  struct Listener {
    uint32_t proc;
    uint64_t exec;
    std::function<void(std::shared_ptr<net::Connection>)> on_accept;
  };
  bool step(int64_t deadline_us);
  void resume(Fiber* f);
  static void fiber_entry();

  Random rng_;
  int64_t now_ = 0;
  uint64_t seq_ = 0, hash_ = 1469598103934665603ull, events_ = 0;
  std::vector<Proc> procs_;  // index = proc id - 1
  std::map<uint64_t, Exec> execs_;
  uint64_t next_exec_ = 1;
  std::map<std::pair<int64_t, uint64_t>, Ev> queue_;
  std::vector<std::unique_ptr<Fiber>> fibers_;  // every fiber made (idle ones are reused)
  std::vector<Fiber*> idle_;
  std::vector<Fiber*> waiting_;  // suspended in a wait, in the order they began waiting
  Fiber* current_ = nullptr;     // the running fiber; null in the main context
  void* main_ctx_ = nullptr;     // ucontext_t of the main context
  const void* main_stack_ = nullptr;
  size_t main_stack_size_ = 0;
  std::set<std::pair<uint32_t, uint32_t>> cuts_;
  std::map<std::string, Listener> listeners_;
  std::vector<std::weak_ptr<SimConn>> conns_;
  std::map<std::string, std::shared_ptr<Disk>> disks_;
  std::vector<uint32_t> self_stopped_;
  uint16_t next_port_ = 40000;
};

// The Env of one simulated process.
class SimEnv final : public Env {
 public:
  SimEnv(World& w, uint32_t proc);
  ~SimEnv() override;
  Clock& clock() override;
  uint64_t seed() override { return world_.rng().next(); }
  std::unique_ptr<Executor> make_executor(const std::string& name) override;
  std::shared_ptr<Event> make_event() override;
  std::unique_ptr<net::Network> make_network() override;
  // The simulated network keeps an executor of its own (one thread runs the whole world anyway).
  std::unique_ptr<net::Network> make_network_on(Executor&) override { return make_network(); }
  void stop_process(int code) override;
  uint32_t proc() const { return proc_; }

 private:
  class SimClock;
  World& world_;
  uint32_t proc_;
  std::unique_ptr<SimClock> clock_;
};

}  // namespace tandem::sim
