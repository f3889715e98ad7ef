#include "sim.h"

#include <ucontext.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <deque>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#endif

namespace tandem::sim {

namespace {
constexpr int64_t kWallEpochMs = 1'800'000'000'000;  // virtual time 0 on the wall clock

[[noreturn]] void die(const std::string& why) {
  std::fprintf(stderr, "SIMULATION ERROR: %s\n", why.c_str());
  std::fflush(stderr);
  std::abort();
}
}  // namespace

// Each task runs on a fiber (ucontext); a task that waits switches back to the scheduler.
struct World::Fiber {
  ucontext_t ctx;
  std::unique_ptr<char[]> stack;
  size_t size = 0;
  std::function<void()> fn;
  uint64_t exec = 0;
  uint32_t proc = 0;
  bool finished = false;
  const std::function<bool()>* ready = nullptr;  // while waiting
  int64_t deadline = 0;
  void* fake_stack = nullptr;  // AddressSanitizer's bookkeeping across switches
};

namespace {
constexpr size_t kFiberStack = 512 * 1024;
World* g_world = nullptr;  // the world whose fiber is starting (fiber_entry has no arguments)

#if defined(__SANITIZE_ADDRESS__)
void asan_start(void** save, const void* bottom, size_t size) { __sanitizer_start_switch_fiber(save, bottom, size); }
void asan_finish(void* save, const void** bottom, size_t* size) { __sanitizer_finish_switch_fiber(save, bottom, size); }
#else
void asan_start(void**, const void*, size_t) {}
void asan_finish(void*, const void**, size_t*) {}
#endif
}  // namespace

World::World(uint64_t seed) : rng_(seed) { main_ctx_ = new ucontext_t; }

void World::fiber_entry() {
  World* w = g_world;
  Fiber* f = w->current_;
  asan_finish(nullptr, &w->main_stack_, &w->main_stack_size_);
  for (;;) {
    f->fn();
    f->fn = nullptr;
    f->finished = true;
    asan_start(&f->fake_stack, w->main_stack_, w->main_stack_size_);
    swapcontext(&f->ctx, static_cast<ucontext_t*>(w->main_ctx_));
    asan_finish(f->fake_stack, &w->main_stack_, &w->main_stack_size_);
  }
}

void World::resume(Fiber* f) {
  current_ = f;
  void* save = nullptr;
  asan_start(&save, f->stack.get(), f->size);
  swapcontext(static_cast<ucontext_t*>(main_ctx_), &f->ctx);
  asan_finish(save, nullptr, nullptr);
  current_ = nullptr;
  if (f->finished) {
    if (auto ex = execs_.find(f->exec); ex != execs_.end()) ex->second.busy = false;
    idle_.push_back(f);
  }
}

bool World::in_exec(uint64_t exec) const { return current_ && current_->exec == exec; }

void World::trace(uint64_t v) {
  for (int i = 0; i < 8; ++i) {
    hash_ ^= (v >> (i * 8)) & 0xff;
    hash_ *= 1099511628211ull;
  }
}

uint32_t World::spawn(uint32_t node, int64_t offset_ms) {
  procs_.push_back(Proc{node, true, 0, offset_ms});
  return static_cast<uint32_t>(procs_.size());
}
bool World::alive(uint32_t p) const { return p >= 1 && p <= procs_.size() && procs_[p - 1].alive; }
uint32_t World::node_of(uint32_t p) const { return procs_.at(p - 1).node; }
int64_t World::offset_ms(uint32_t p) const { return procs_.at(p - 1).offset_ms; }
void World::pause(uint32_t p, int64_t until_us) { procs_.at(p - 1).paused_until = until_us; }
std::vector<uint32_t> World::take_self_stopped() { return std::exchange(self_stopped_, {}); }

uint64_t World::new_exec(uint32_t proc) {
  execs_[next_exec_] = Exec{proc, false};
  return next_exec_++;
}

void World::drop_exec(uint64_t exec) {
  // Like joining a thread: a task of the executor that is waiting finishes first.
  auto busy = [&] {
    auto ex = execs_.find(exec);
    return ex != execs_.end() && ex->second.busy && !(current_ && current_->exec == exec);
  };
  if (busy()) run_until([&] { return !busy(); }, kForever);
  execs_.erase(exec);
}

void World::at(uint64_t exec, int64_t when_us, std::function<void()> fn) {
  queue_.emplace(std::make_pair(std::max(when_us, now_), seq_++), Ev{exec, std::move(fn)});
}

bool World::step(int64_t deadline_us) {
  // A waiting task whose condition holds (or whose deadline passed) goes first.
  Fiber* due = nullptr;
  int64_t due_t = kForever + 1;
  for (size_t i = 0; i < waiting_.size(); ++i) {
    Fiber* f = waiting_[i];
    int64_t paused = procs_[f->proc - 1].paused_until;
    if (paused > now_) {
      if (std::max(paused, f->deadline) < due_t) due = f, due_t = std::max(paused, f->deadline);
      continue;
    }
    if ((*f->ready)() || f->deadline <= now_) {
      waiting_.erase(waiting_.begin() + static_cast<long>(i));
      trace(f->exec);
      resume(f);
      return true;
    }
    if (f->deadline < due_t) due = f, due_t = f->deadline;
  }
  auto best = queue_.end();
  int64_t best_t = 0;
  for (auto it = queue_.begin(); it != queue_.end();) {
    if (best != queue_.end() && it->first.first > best_t) break;
    auto ex = execs_.find(it->second.exec);
    if (ex == execs_.end()) {  // its executor is gone: the task is dropped
      it = queue_.erase(it);
      continue;
    }
    if (!ex->second.busy) {
      int64_t t = std::max(it->first.first, procs_[ex->second.proc - 1].paused_until);
      if (best == queue_.end() || t < best_t) {
        best = it;
        best_t = t;
      }
    }
    ++it;
  }
  int64_t next = std::min(best == queue_.end() ? kForever + 1 : best_t, due_t);
  if (next > deadline_us || next > kForever) {
    if (deadline_us < kForever) now_ = std::max(now_, deadline_us);
    return false;
  }
  now_ = std::max(now_, next);
  if (due && due_t <= next && (best == queue_.end() || due_t < best_t)) {
    waiting_.erase(std::find(waiting_.begin(), waiting_.end(), due));
    trace(due->exec);
    resume(due);
    return true;
  }
  Ev ev = std::move(best->second);
  queue_.erase(best);
  auto& ex = execs_[ev.exec];
  ex.busy = true;
  trace(static_cast<uint64_t>(now_));
  trace(ev.exec);
  ++events_;
  Fiber* f;
  if (!idle_.empty()) {
    f = idle_.back();
    idle_.pop_back();
  } else {
    fibers_.push_back(std::make_unique<Fiber>());
    f = fibers_.back().get();
    f->size = kFiberStack;
    f->stack.reset(new char[kFiberStack]);
    getcontext(&f->ctx);
    f->ctx.uc_stack.ss_sp = f->stack.get();
    f->ctx.uc_stack.ss_size = f->size;
    f->ctx.uc_link = nullptr;
    g_world = this;
    makecontext(&f->ctx, &World::fiber_entry, 0);
  }
  f->fn = std::move(ev.fn);
  f->exec = ev.exec;
  f->proc = ex.proc;
  f->finished = false;
  resume(f);
  return true;
}

bool World::run_until(const std::function<bool()>& done, int64_t deadline_us) {
  if (current_) {  // a task: suspend it until done() or the deadline
    if (done()) return true;
    if (deadline_us <= now_) return false;
    Fiber* f = current_;
    f->ready = &done;
    f->deadline = deadline_us;
    waiting_.push_back(f);
    asan_start(&f->fake_stack, main_stack_, main_stack_size_);
    swapcontext(&f->ctx, static_cast<ucontext_t*>(main_ctx_));
    asan_finish(f->fake_stack, &main_stack_, &main_stack_size_);
    f->ready = nullptr;
    return done();
  }
  while (!done()) {
    if (!step(deadline_us)) {
      if (deadline_us >= kForever && !done())
        die("deadlock: a wait without a deadline and nothing can run (at t=" + std::to_string(now_) + " us, " +
            std::to_string(queue_.size()) + " events queued, " + std::to_string(waiting_.size()) + " tasks waiting)");
      return done();
    }
  }
  return true;
}

// ---------------------------------------------------------------------------------------
// Executors, events, clocks

namespace {

class SimExecutor final : public Executor {
 public:
  SimExecutor(World& w, uint32_t proc) : w_(w), id_(w.new_exec(proc)) {}
  ~SimExecutor() override { w_.drop_exec(id_); }
  void post(std::function<void()> task) override { w_.at(id_, w_.now(), std::move(task)); }
  void post_after(std::chrono::microseconds delay, std::function<void()> task) override {
    w_.at(id_, w_.now() + delay.count(), std::move(task));
  }
  bool in_this_thread() const override { return w_.in_exec(id_); }
  uint64_t id() const { return id_; }

 private:
  World& w_;
  uint64_t id_;
};

class SimEvent final : public Event {
 public:
  explicit SimEvent(World& w) : w_(w) {}
  void set() override { set_ = true; }
  bool wait_us(int64_t timeout_us) override {
    return w_.run_until([this] { return set_; }, timeout_us < 0 ? kForever : w_.now() + timeout_us);
  }

 private:
  World& w_;
  bool set_ = false;
};

}  // namespace

class SimEnv::SimClock final : public Clock {
 public:
  SimClock(World& w, uint32_t proc) : w_(w), proc_(proc) {}
  int64_t now_us() const override { return w_.now(); }
  int64_t wall_ms() const override { return kWallEpochMs + w_.now() / 1000 + w_.offset_ms(proc_); }
  void sleep_us(int64_t us) const override {
    w_.run_until([] { return false; }, w_.now() + std::max<int64_t>(us, 1));
  }

 private:
  World& w_;
  uint32_t proc_;
};

// ---------------------------------------------------------------------------------------
// Network

class SimConn final : public net::Connection, public std::enable_shared_from_this<SimConn> {
 public:
  SimConn(World& w, uint32_t proc, uint64_t exec, std::string peer_name)
      : w_(w), proc_(proc), exec_(exec), peer_name_(std::move(peer_name)) {}
  void start(std::function<void(std::string_view)> on_data, std::function<void(Status)> on_close) override {
    on_data_ = std::move(on_data);
    on_close_ = std::move(on_close);
    started_ = true;
    if (closed_) return schedule_close(close_status_);
    if (!inq_.empty()) schedule_pump(inq_.front().at);
  }
  void send(std::string bytes) override {
    if (closed_ || !w_.alive(proc_)) return;
    auto p = peer_.lock();
    if (!p || p->closed_) return;
    if (w_.rng().chance(w_.net.reset)) {
      ++w_.resets;
      return reset_pair("connection reset (simulated)");
    }
    p->enqueue(std::move(bytes), false);
  }
  size_t queued_bytes() const override { return 0; }
  void close() override {
    if (closed_) return;
    closed_ = true;
    inq_.clear();
    schedule_close(Status::unavailable("connection closed"));
    if (auto p = peer_.lock(); p && !p->closed_) p->enqueue({}, true);
  }
  std::string peer() const override { return peer_name_; }

  void reset_pair(const std::string& why) {
    auto p = peer_.lock();
    reset(why);
    if (p) p->reset(why);
  }
  uint32_t proc() const { return proc_; }
  void forget_callbacks() {
    on_data_ = nullptr;
    on_close_ = nullptr;
  }
  std::weak_ptr<SimConn> peer_;
  uint32_t peer_node_ = 0;

 private:
  struct Chunk {
    int64_t at;
    std::string bytes;
    bool eof;
  };
  void enqueue(std::string bytes, bool eof) {
    int64_t t = w_.now() + w_.net.latency_us + static_cast<int64_t>(w_.rng().uniform(static_cast<uint64_t>(w_.net.jitter_us) + 1));
    t = std::max(t, last_at_);
    last_at_ = t;
    inq_.push_back({t, std::move(bytes), eof});
    if (started_) schedule_pump(inq_.front().at);
  }
  void reset(const std::string& why) {
    if (closed_) return;
    closed_ = true;
    inq_.clear();
    schedule_close(Status::unavailable(why));
  }
  void schedule_close(Status st) {
    close_status_ = st;
    if (!started_ || close_notified_) return;
    w_.at(exec_, w_.now(), [self = shared_from_this(), st] { self->notify_close(st); });
  }
  void notify_close(const Status& st) {
    if (close_notified_) return;
    close_notified_ = true;
    auto cb = std::move(on_close_);
    on_data_ = nullptr;
    if (cb) cb(st);
  }
  void schedule_pump(int64_t at) {
    if (pump_scheduled_) return;
    pump_scheduled_ = true;
    w_.at(exec_, at, [self = shared_from_this()] { self->pump(); });
  }
  void pump() {
    pump_scheduled_ = false;
    while (!closed_ && !inq_.empty()) {
      if (inq_.front().at > w_.now()) return schedule_pump(inq_.front().at);
      if (w_.is_cut(peer_node_, w_.node_of(proc_))) {
        if (stall_since_ < 0) stall_since_ = w_.now();
        if (w_.now() - stall_since_ > kStallResetUs) return reset_pair("connection timed out (link cut)");
        return schedule_pump(w_.now() + 100'000);
      }
      stall_since_ = -1;
      Chunk c = std::move(inq_.front());
      inq_.pop_front();
      if (c.eof) {
        closed_ = true;
        inq_.clear();
        return notify_close(Status::unavailable("connection closed by peer"));
      }
      w_.trace(c.bytes.size());
      if (on_data_) {
        auto cb = on_data_;
        cb(c.bytes);
      }
    }
  }

  World& w_;
  uint32_t proc_;
  uint64_t exec_;
  std::string peer_name_;
  std::function<void(std::string_view)> on_data_;
  std::function<void(Status)> on_close_;
  bool started_ = false, closed_ = false, close_notified_ = false, pump_scheduled_ = false;
  Status close_status_;
  std::deque<Chunk> inq_;
  int64_t last_at_ = 0, stall_since_ = -1;
};

class SimNetwork final : public net::Network {
 public:
  SimNetwork(World& w, uint32_t proc) : w_(w), proc_(proc), exec_(std::make_unique<SimExecutor>(w, proc)) {}
  ~SimNetwork() override { stop(); }
  Result<uint16_t> listen(const net::Endpoint& at, std::function<void(std::shared_ptr<net::Connection>)> on_accept) override {
    if (stopped_ || !w_.alive(proc_)) return Status::unavailable("network stopped");
    net::Endpoint e = at;
    if (e.port == 0) e.port = w_.next_port_++;
    auto key = e.to_string();
    if (auto it = w_.listeners_.find(key); it != w_.listeners_.end() && w_.alive(it->second.proc))
      return Status::unavailable("address in use: " + key);
    w_.listeners_[key] = World::Listener{proc_, exec_->id(), std::move(on_accept)};
    mine_.push_back(key);
    return e.port;
  }
  void connect(const net::Endpoint& to, std::function<void(Result<std::shared_ptr<net::Connection>>)> done) override {
    if (stopped_) return;
    int64_t lat = w_.net.latency_us;
    w_.at(exec_->id(), w_.now() + lat, [this, key = to.to_string(), done = std::move(done), lat]() mutable {
      auto it = w_.listeners_.find(key);
      if (it == w_.listeners_.end() || !w_.alive(it->second.proc) || !w_.alive(proc_))
        return done(Status::unavailable("connection refused: " + key));
      auto lp = it->second.proc;
      uint32_t me = w_.node_of(proc_), them = w_.node_of(lp);
      if (w_.is_cut(me, them) || w_.is_cut(them, me)) {
        w_.at(exec_->id(), w_.now() + 1'000'000, [done = std::move(done), key]() mutable {
          done(Status::unavailable("connect timed out: " + key));
        });
        return;
      }
      auto a = std::make_shared<SimConn>(w_, proc_, exec_->id(), key);
      auto b = std::make_shared<SimConn>(w_, lp, it->second.exec, "sim-node-" + std::to_string(me));
      a->peer_ = b;
      b->peer_ = a;
      a->peer_node_ = them;
      b->peer_node_ = me;
      w_.conns_.push_back(a);
      w_.conns_.push_back(b);
      conns_.push_back(a);
      w_.at(it->second.exec, w_.now() + lat, [w = &w_, key, lp, b] {
        auto l = w->listeners_.find(key);
        if (l == w->listeners_.end() || l->second.proc != lp || !w->alive(lp)) return b->reset_pair("connection refused");
        auto accept = l->second.on_accept;
        accept(b);
      });
      done(std::shared_ptr<net::Connection>(a));
    });
  }
  void after(int64_t delay_ms, std::function<void()> fn) override {
    if (!stopped_) w_.at(exec_->id(), w_.now() + delay_ms * 1000, std::move(fn));
  }
  void stop() override {
    if (stopped_) return;
    stopped_ = true;
    for (auto& k : mine_)
      if (auto it = w_.listeners_.find(k); it != w_.listeners_.end() && it->second.proc == proc_) w_.listeners_.erase(it);
    for (auto& c : conns_)
      if (auto s = c.lock()) s->close();
    // Accepted connections of this process live in the world's list.
    for (auto& c : w_.conns_)
      if (auto s = c.lock(); s && s->proc() == proc_) s->close();
    exec_.reset();
  }

 private:
  World& w_;
  uint32_t proc_;
  std::unique_ptr<SimExecutor> exec_;
  std::vector<std::string> mine_;
  std::vector<std::weak_ptr<SimConn>> conns_;
  bool stopped_ = false;
};

void World::kill(uint32_t proc) {
  if (!alive(proc)) return;
  procs_[proc - 1].alive = false;
  procs_[proc - 1].paused_until = 0;
  for (auto it = listeners_.begin(); it != listeners_.end();)
    it = it->second.proc == proc ? listeners_.erase(it) : std::next(it);
  std::vector<std::weak_ptr<SimConn>> live;
  for (auto& c : conns_) {
    auto s = c.lock();
    if (!s) continue;
    if (s->proc() == proc) s->reset_pair("connection reset (peer process died)");
    live.push_back(c);
  }
  conns_ = std::move(live);
}

World::~World() {
  if (!waiting_.empty())
    std::fprintf(stderr, "simulation: %zu tasks still waiting at the end of the run\n", waiting_.size());
  // A connection's callbacks hold its session, which holds the connection: a connection
  // whose close notice never ran (its network stopped first) would keep both alive.
  for (auto& c : conns_)
    if (auto s = c.lock()) s->forget_callbacks();
  queue_.clear();
  delete static_cast<ucontext_t*>(main_ctx_);
}

// ---------------------------------------------------------------------------------------
// Disks

struct World::Disk {
  using Table = std::map<std::string, std::string, std::less<>>;
  struct Op {
    partition::WriteBatch::Op::Kind kind;
    partition::Cf cf;
    std::string key, value;
  };
  Table current[partition::kNumCfs], durable[partition::kNumCfs];
  std::vector<std::vector<Op>> unsynced;
  uint64_t lost_writes = 0;

  static void apply(Table* t, const Op& op) {
    auto& m = t[static_cast<size_t>(op.cf)];
    switch (op.kind) {
      case partition::WriteBatch::Op::Kind::kPut: m[op.key] = op.value; break;
      case partition::WriteBatch::Op::Kind::kDel: m.erase(op.key); break;
      case partition::WriteBatch::Op::Kind::kDelRange:
        m.erase(m.lower_bound(op.key), op.value.empty() ? m.end() : m.lower_bound(op.value));
        break;
    }
  }
  void write(const partition::WriteBatch& b, bool sync) {
    std::vector<Op> ops;
    b.for_each([&](const partition::WriteBatch::Op& o) {
      ops.push_back({o.kind, o.cf, std::string(o.key), std::string(o.value)});
    });
    for (auto& op : ops) apply(current, op);
    if (!sync) {
      unsynced.push_back(std::move(ops));
      return;
    }
    for (auto& batch : unsynced)
      for (auto& op : batch) apply(durable, op);
    unsynced.clear();
    for (auto& op : ops) apply(durable, op);
  }
};

std::shared_ptr<World::Disk> World::disk(const std::string& path) {
  auto& d = disks_[path];
  if (!d) d = std::make_shared<Disk>();
  return d;
}

void World::power_cut(const std::string& path) {
  auto d = disk(path);
  size_t keep = static_cast<size_t>(rng_.uniform(d->unsynced.size() + 1));
  for (size_t i = 0; i < keep; ++i)
    for (auto& op : d->unsynced[i]) Disk::apply(d->durable, op);
  d->lost_writes += d->unsynced.size() - keep;
  d->unsynced.clear();
  for (int i = 0; i < partition::kNumCfs; ++i) d->current[i] = d->durable[i];
}

namespace {

class SimStore final : public partition::Store {
 public:
  SimStore(World& w, uint32_t proc, std::shared_ptr<World::Disk> d, partition::Durability dur)
      : w_(w), proc_(proc), d_(std::move(d)), dur_(dur) {}
  partition::Durability durability() const override { return dur_; }
  Result<std::optional<std::string>> get(partition::Cf cf, std::string_view key) override {
    auto& m = d_->current[static_cast<size_t>(cf)];
    auto it = m.find(key);
    if (it == m.end()) return std::optional<std::string>();
    return std::optional<std::string>(it->second);
  }
  Status scan(partition::Cf cf, std::string_view begin, std::string_view end, const partition::ScanFn& fn) override {
    auto& m = d_->current[static_cast<size_t>(cf)];
    // A copy of the range: the callback may write to the store.
    std::vector<std::pair<std::string, std::string>> rows;
    for (auto it = m.lower_bound(begin); it != m.end() && (end.empty() || it->first < end); ++it) rows.emplace_back(*it);
    for (auto& [k, v] : rows)
      if (!fn(k, v)) break;
    return Status::ok();
  }
  Status write(partition::WriteBatch& b) override { return write(b, dur_ == partition::Durability::kStrict); }
  Status write(partition::WriteBatch& b, bool sync) override {
    if (!w_.alive(proc_)) return Status::ok();  // a dead process's writes reach no disk
    d_->write(b, sync);
    return Status::ok();
  }
  uint64_t approximate_bytes() override {
    uint64_t n = 0;
    for (auto& m : d_->current)
      for (auto& [k, v] : m) n += k.size() + v.size();
    return n;
  }

 private:
  World& w_;
  uint32_t proc_;
  std::shared_ptr<World::Disk> d_;
  partition::Durability dur_;
};

}  // namespace

Result<std::unique_ptr<partition::Store>> World::open_store(uint32_t proc, const partition::StoreOptions& so) {
  if (!alive(proc)) return Status::internal("process is dead");
  return std::unique_ptr<partition::Store>(std::make_unique<SimStore>(*this, proc, disk(so.path), so.durability));
}

// ---------------------------------------------------------------------------------------
// SimEnv

SimEnv::SimEnv(World& w, uint32_t proc) : world_(w), proc_(proc), clock_(std::make_unique<SimClock>(w, proc)) {}
SimEnv::~SimEnv() = default;
Clock& SimEnv::clock() { return *clock_; }
std::unique_ptr<Executor> SimEnv::make_executor(const std::string&) { return std::make_unique<SimExecutor>(world_, proc_); }
std::shared_ptr<Event> SimEnv::make_event() { return std::make_shared<SimEvent>(world_); }
std::unique_ptr<net::Network> SimEnv::make_network() { return std::make_unique<SimNetwork>(world_, proc_); }
void SimEnv::stop_process(int) {
  world_.kill(proc_);
  world_.self_stopped(proc_);
}

}  // namespace tandem::sim
