#include "engine.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <optional>

#include <tandem/core/crash_point.h>
#include <tandem/core/sometimes.h>
#include <tandem/core/key_codec.h>
#include <tandem/core/log.h>

#include "records.h"
#include "row_keys.h"
#include "transition.h"

namespace tandem::entity {

using messaging::Envelope;
using messaging::Kind;
using partition::Cf;

namespace {

std::string hex(std::string_view b) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string s;
  s.reserve(b.size() * 2);
  for (unsigned char c : b) {
    s.push_back(kHex[c >> 4]);
    s.push_back(kHex[c & 0xF]);
  }
  return s;
}

std::optional<std::string> unhex(std::string_view h) {
  if (h.size() % 2) return std::nullopt;
  std::string out;
  for (size_t i = 0; i < h.size(); i += 2) {
    auto nib = [](char c) -> int {
      if (c >= '0' && c <= '9') return c - '0';
      if (c >= 'a' && c <= 'f') return c - 'a' + 10;
      return -1;
    };
    int a = nib(h[i]), b = nib(h[i + 1]);
    if (a < 0 || b < 0) return std::nullopt;
    out.push_back(static_cast<char>(a * 16 + b));
  }
  return out;
}

// Runs `fn` on `exec` and blocks the calling (non-executor) thread until it has run.
template <class T>
T run_on(Env& env, Executor& exec, const std::function<T()>& fn) {
  Handoff<T> result(env);
  exec.post([&fn, result] { result.set(fn()); });
  return std::move(*result.wait_us(-1));
}

}  // namespace

// The engine's tasks on its loop pass a gate: once stop() closed it (on the loop), tasks still
// queued there (timer wake-ups, relay sweeps) run nothing, so a loop the engine only borrows
// may outlive it. The flag is read and written on the loop only.
class Engine::Gated final : public Executor {
 public:
  explicit Gated(Executor& inner) : inner_(inner) {}
  void post(std::function<void()> task) override {
    inner_.post([open = open_, task = std::move(task)] {
      if (*open) task();
    });
  }
  void post_after(std::chrono::microseconds delay, std::function<void()> task) override {
    inner_.post_after(delay, [open = open_, task = std::move(task)] {
      if (*open) task();
    });
  }
  bool in_this_thread() const override { return inner_.in_this_thread(); }
  void close() { *open_ = false; }  // on the loop

 private:
  Executor& inner_;
  std::shared_ptr<bool> open_ = std::make_shared<bool>(true);
};

// Sends to this node's own Inbound when it hosts the receiver's type, else to the remote
// transport.
class Engine::RoutingTransport final : public messaging::Transport {
 public:
  RoutingTransport(const Engine& e, messaging::Transport& local, messaging::Transport* remote)
      : engine_(e), local_(local), remote_(remote) {}
  void send(const Envelope& env, messaging::AckFn ack) override {
    if (remote_ && !engine_.is_local(env.to))
      remote_->send(env, std::move(ack));
    else
      local_.send(env, std::move(ack));
  }

 private:
  const Engine& engine_;
  messaging::Transport& local_;
  messaging::Transport* remote_;
};

Result<std::unique_ptr<partition::Store>> open_rocks_store(const partition::StoreOptions& so) {
  std::error_code ec;
  std::filesystem::create_directories(so.path, ec);
  if (ec) return Status::invalid_argument("cannot create data dir " + so.path + ": " + ec.message());
  return partition::Store::open(so);
}

bool expired_client_reply(const partition::Placement& placement, std::string_view key, std::string_view value,
                          int64_t now_ms) {
  EntityRef owner;
  std::string_view rest;
  if (!placement.decode_entity(key, owner, rest) || rest.empty() || rest[0] != 'p') return false;
  keys::Reader r(rest.substr(1));
  auto partner_type = r.bytes();
  if (!partner_type || *partner_type != kClientType || !r.bytes()) return false;
  auto tail = r.rest();
  if (tail.empty() || tail[0] != 'r') return false;
  auto row = ReplyRow::decode(value);
  return row && row->done && row->expires_ms <= now_ms;
}

partition::DropFn expired_reply_dropper(const partition::Placement& placement,
                                        std::shared_ptr<const std::atomic<int64_t>> now_ms) {
  return [placement = std::make_shared<const partition::Placement>(placement), now = std::move(now_ms)](
             partition::Cf cf, std::string_view k, std::string_view v) {
    return cf == Cf::kActivity && expired_client_reply(*placement, k, v, now->load(std::memory_order_relaxed));
  };
}

partition::Placement placement_of(const Registry& registry) {
  partition::Placement placement;
  for (auto& [name, t] : registry.types()) {
    partition::TypeScheme s;
    s.kind = t.placement.kind == Placement::Kind::kHash ? partition::TypeScheme::Kind::kHash
                                                        : partition::TypeScheme::Kind::kRange;
    s.slots = t.placement.slots;
    placement.set_scheme(name, s);
  }
  return placement;
}

Engine::Engine(Env& env, const Registry& registry, NodeOptions opts)
    : env_(env), registry_(registry), opts_(std::move(opts)), placement_(placement_of(registry)) {}

Engine::~Engine() { stop(); }

Status Engine::start() {
  auto d = partition::parse_durability(opts_.durability);
  if (!d) return d.status();
  durability_ = *d;
  if (opts_.data_dir.empty()) return Status::invalid_argument("data_dir is empty");
  if (opts_.max_batch == 0 || opts_.max_attempts <= 0)
    return Status::invalid_argument("max_batch and max_attempts must be positive");
  partition::StoreOptions so{opts_.data_dir, durability_};
  compaction_now_ms_->store(env_.clock().wall_ms(), std::memory_order_relaxed);
  so.drop_on_compaction = expired_reply_dropper(placement_, compaction_now_ms_);
  auto store = open_store_(so);
  if (!store) return store.status();
  store_ = std::move(*store);
  view_ = std::make_unique<partition::View>(*store_, opts_.cache_entries);
  random_ = std::make_unique<Random>(env_.seed());

  if (!loop_) {
    own_exec_ = env_.make_executor("tandem-run");
    loop_ = own_exec_.get();
  }
  exec_ = std::make_unique<Gated>(*loop_);
  commit_exec_ = env_.make_executor("tandem-commit");
  local_transport_ = std::make_unique<messaging::LocalTransport>(*this);
  transport_ = local_transport_.get();
  const auto& f = opts_.faults;
  messaging::FaultOptions fo{f.duplicate, f.max_copies, f.drop, f.delay, f.max_delay_us, f.seed};
  if (fo.any()) {
    fault_exec_ = env_.make_executor("tandem-faults");
    faulty_transport_ = std::make_unique<messaging::FaultyTransport>(*local_transport_, *fault_exec_, fo);
    transport_ = faulty_transport_.get();
  }
  messaging::Transport* remote = remote_transport_;
  if (fo.any() && remote) {  // deliveries to other nodes pass through the same faults
    fo.seed = fo.seed * 0x9E3779B97F4A7C15ull + 1;
    faulty_remote_ = std::make_unique<messaging::FaultyTransport>(*remote, *fault_exec_, fo);
    remote = faulty_remote_.get();
  }
  routing_ = std::make_unique<RoutingTransport>(*this, *transport_, remote);
  messaging::RelayOptions ro;
  ro.ack_latency = &c_.relay;
  ro.ack_timeout_us = opts_.relay_ack_timeout_ms * 1000;
  ro.backoff_min_us = opts_.relay_backoff_min_ms * 1000;
  ro.backoff_max_us = opts_.relay_backoff_max_ms * 1000;
  relay_ = std::make_unique<messaging::Relay>(*exec_, *routing_, env_.clock(), env_.seed(), ro,
                                               [this](const std::string& k) { on_relay_acked(k); });
  timer_ids_ = static_cast<uint64_t>(env_.clock().wall_ms()) * 1000;
  auto st = run_on<Status>(env_, *exec_, [this] { return recover(); });
  running_ = st.is_ok();
  return st;
}

// Runs on exec_. Scans only the outbox and timer families: pending deliveries and timers
// resume without visiting any entity's state.
Status Engine::recover() {
  size_t rows = 0, timers = 0;
  TANDEM_TRY(store_->scan(Cf::kOutbox, "", "", [&](std::string_view k, std::string_view v) {
    auto env = messaging::decode_envelope(v);
    if (!env) {
      log::error("outbox row {} does not decode ({}); left in place", hex(k), env.status().to_string());
      return true;
    }
    relay_->add(std::string(k), std::move(*env));
    ++rows;
    return true;
  }));
  TANDEM_CRASH_POINT("recovery:outbox_resent");
  // Timers of entities this node does not host (rows left by a move that died) are not armed:
  // they would never run here, only sit in the heap until due. adopt() arms them if their
  // partition comes here.
  size_t elsewhere = 0;
  TANDEM_TRY(store_->scan(Cf::kTimer, "", "", [&](std::string_view k, std::string_view v) {
    auto t = TimerRow::decode(v);
    if (!t) {
      log::error("timer row {} does not decode; left in place", hex(k));
      return true;
    }
    EntityRef ref;
    std::string_view rest;
    if (hosts_ && placement_.decode_entity(k, ref, rest) && !hosts_(ref)) {
      ++elsewhere;
      return true;
    }
    timers_.insert({t->due_ms, std::string(k)});
    ++timers;
    return true;
  }));
  c_.timers = timers_.size();
  c_.outbox_depth = relay_->depth();
  log::info("recovered {} outbox rows and {} timers from {} ({} timers of entities hosted elsewhere left unarmed)",
            rows, timers, opts_.data_dir, elsewhere);
  arm_timer_wakeup();
  schedule_step();
  return Status::ok();
}

void Engine::stop() {
  running_ = false;
  if (!exec_) return;
  // Let in-flight commits finish (stopped_ keeps new groups from being sealed meanwhile), then
  // stop the loop. Messages still queued stay durable in their senders' outboxes; client
  // calls still waiting are answered `unavailable` and the client retries.
  while (run_on<int>(env_, *exec_, [this] {
    // Deletes of acknowledged rows that wait for a group are written, so that a clean restart
    // does not send those rows again.
    if (!stopped_ && lazy_writes_ > 0 && inflight_commits_ == 0 && !group_wanted()) seal_and_commit();
    stopped_ = true;
    return inflight_commits_;
  }) > 0)
    env_.clock().sleep_us(1000);
  if (relay_) relay_->stop();
  run_on<int>(env_, *exec_, [this] {
    exec_->close();
    return 0;
  });
  // Threads that post to the engine's executor go first: the fault timers, then the commit
  // thread (it may still be returning from posting the last on_committed).
  fault_exec_.reset();
  commit_exec_.reset();
  if (own_exec_) {
    own_exec_.reset();
    loop_ = nullptr;
  }
  exec_.reset();
  relay_.reset();
  faulty_transport_.reset();
  faulty_remote_.reset();
  routing_.reset();
  view_.reset();
  store_.reset();
  decltype(calls_) waiting;
  {
    std::lock_guard lock(calls_mu_);
    waiting.swap(calls_);
  }
  for (auto& [k, w] : waiting) w.done(ClientReply{Status::unavailable("node stopped"), 0, {}});
}

// ---- inbound ----

void Engine::deliver(Envelope env, messaging::AckFn ack) {
  Work w;
  w.env = std::move(env);
  w.ack = std::move(ack);
  w.arrived_us = env_.clock().now_us();
  bool here = exec_ && exec_->in_this_thread();
  // A delivery (it has an ack: its sender retries) is refused while too many wait here; client
  // calls are bounded by max_pending_calls instead.
  if (w.ack && (here ? ready_.size() : c_.inbox + c_.ready) >= opts_.max_inbox) {
    c_.busy++;
    return w.ack(Status::unavailable("busy: " + std::to_string(opts_.max_inbox) + " messages wait to run here"));
  }
  if (here) {
    // On the engine's thread (the relay delivering locally, or the network that shares the
    // engine's loop): no hand-off needed.
    ready_.push_back(std::move(w));
    schedule_step();
    return;
  }
  bool wake;
  {
    std::lock_guard lock(inbox_mu_);
    inbox_.push_back(std::move(w));
    c_.inbox = inbox_.size();
    wake = !inbox_wake_;
    inbox_wake_ = true;
  }
  if (wake && exec_) exec_->post([this] { schedule_step(); });
}

// Idempotency is per (entity, client, key): the same key sent to two entities is two requests.
std::string Engine::call_key(const EntityRef& to, const std::string& client_id, const std::string& idem) {
  std::string k;
  keys::append_bytes(k, to.type);
  keys::append_bytes(k, to.key);
  keys::append_bytes(k, client_id);
  keys::append_bytes(k, idem);
  return k;
}

void Engine::call(const EntityRef& to, uint64_t payload_type, std::string payload, const std::string& client_id,
                  const std::string& idem, std::function<void(ClientReply)> done) {
  auto refuse = [&](Status s) { done(ClientReply{std::move(s), 0, {}}); };
  if (!running_) return refuse(Status::unavailable("node is not running"));
  if (auto s = validate_ref(to); !s) return refuse(s);
  if (!registry_.find(to.type)) return refuse(Status::invalid_argument("unknown entity type '" + to.type + "'"));
  if (idem.empty()) return refuse(Status::invalid_argument("a client request needs an idempotency key"));
  if (client_id.empty() || client_id.size() > kMaxEntityKeyBytes)
    return refuse(Status::invalid_argument("client id must be 1.." + std::to_string(kMaxEntityKeyBytes) + " bytes"));
  if (payload.size() > messaging::kMaxPayloadBytes)
    return refuse(Status::invalid_argument("payload too large (" + std::to_string(payload.size()) + " bytes)"));
  if (static_cast<size_t>(c_.inflight.load()) >= opts_.max_pending_calls || c_.outbox_depth >= opts_.max_outbox) {
    c_.busy++;
    return refuse(Status::overloaded(
        "busy: " + std::to_string(c_.inflight.load()) + " calls wait for replies and " + std::to_string(c_.outbox_depth.load()) +
        " outbox rows for acks here (caps " + std::to_string(opts_.max_pending_calls) + " and " +
        std::to_string(opts_.max_outbox) + "); try again later"));
  }
  {
    std::lock_guard lock(calls_mu_);
    auto key = call_key(to, client_id, idem);
    auto it = calls_.find(key);
    if (it == calls_.end()) {
      calls_.emplace(std::move(key), Waiting{placement_.entity_prefix(to), std::move(done)});
    } else {
      // The same request is already waiting: chain both callers onto the one reply.
      auto first = std::move(it->second.done);
      it->second.done = [first = std::move(first), second = std::move(done)](ClientReply r) {
        first(r);
        second(std::move(r));
      };
    }
  }
  c_.inflight++;
  Envelope env;
  env.from = EntityRef{std::string(kClientType), client_id};
  env.to = to;
  env.kind = Kind::kClientRequest;
  env.payload_type = payload_type;
  env.payload = std::move(payload);
  env.idempotency_key = idem;
  env.sent_at_ms = env_.clock().wall_ms();
  deliver(std::move(env), nullptr);
}

void Engine::complete_call(const std::string& key, ClientReply reply) {
  std::function<void(ClientReply)> fn;
  {
    std::lock_guard lock(calls_mu_);
    auto it = calls_.find(key);
    if (it == calls_.end()) return;  // the client is gone; the reply stays stored for its retry
    fn = std::move(it->second.done);
    calls_.erase(it);
  }
  c_.inflight--;
  fn(std::move(reply));
}

// ---- the loop ----

void Engine::schedule_step() {
  if (step_scheduled_ || stopped_) return;
  step_scheduled_ = true;
  exec_->post([this] { step(); });
}

void Engine::step() {
  step_scheduled_ = false;
  if (stopped_) return;
  {
    std::lock_guard lock(inbox_mu_);
    for (auto& w : inbox_) ready_.push_back(std::move(w));
    inbox_.clear();
    c_.inbox = 0;
    inbox_wake_ = false;
  }
  c_.ready = ready_.size();
  fire_due_timers();
  // Build the open group up to max_batch transitions; while a commit is in flight the group
  // keeps filling, so the next commit carries everything that arrived meanwhile.
  while (!ready_.empty() && open_.transitions < opts_.max_batch) {
    Work w = std::move(ready_.front());
    ready_.pop_front();
    process(w);
    // With fewer than two commits in flight, a group that is already large is sealed at once,
    // and the backlog continues in the next one: messages whose next hop waits for a commit
    // then spread over two groups, so the engine fills one while the committer writes the other.
    if (open_.transitions >= kEagerSeal && inflight_commits_ < 2) seal_and_commit();
  }
  c_.ready = ready_.size();
  if (inflight_commits_ == 0 && group_wanted()) seal_and_commit();
  if (lazy_writes_ > 0) arm_linger();
  if (!ready_.empty() && open_.transitions < opts_.max_batch) schedule_step();
}

// Writes the deletes of acknowledged rows that no other group took along, once they waited
// ack_delete_linger_ms (or at once when as many wait as a group may hold transitions).
void Engine::arm_linger() {
  if (linger_armed_) return;
  if (lazy_writes_ >= opts_.max_batch) {
    if (inflight_commits_ == 0) seal_and_commit();
    return;
  }
  linger_armed_ = true;
  exec_->post_after(std::chrono::milliseconds(opts_.ack_delete_linger_ms), [this] {
    linger_armed_ = false;
    if (stopped_ || lazy_writes_ == 0) return;
    if (inflight_commits_ == 0) return seal_and_commit();
    arm_linger();  // a commit is in flight: the group after it takes them, or the next round
  });
}

void Engine::process(Work& w) {
  auto& env = w.env;
  const auto* type = registry_.find(env.to.type);
  if (!type) return park(w, "unknown entity type '" + env.to.type + "'");
  // Not ours (any more), or being moved away: do not run it here.
  if ((frozen_ && frozen_(env.to)) || (hosts_ && !hosts_(env.to))) return defer_frozen(w);
  if (!w.timer_key.empty()) {
    auto row = view_->get(Cf::kTimer, w.timer_key);
    if (!row || !row->has_value()) return;  // already fired
  }
  int64_t ran_us = env_.clock().now_us();
  if (w.arrived_us) c_.queue.record(ran_us - w.arrived_us);
  Transition t(*this, *type, env, env_.clock().wall_ms());
  auto result = t.run();
  switch (result) {
    case Transition::Result::kFailed: return fail(w, t.reason(), true);
    case Transition::Result::kPark: return park(w, t.reason());
    case Transition::Result::kRefused:
      log::warn("refused {} from {} to {}: {}", messaging::kind_name(env.kind), env.from.to_string(),
                env.to.to_string(), t.reason());
      break;
    case Transition::Result::kDuplicate:
      c_.duplicates++;
      if (arrived_by_move(env.to)) sometimes(Sometimes::kDuplicateAfterMove);
      break;
    case Transition::Result::kApplied:
      c_.applied++;
      if (env.kind == messaging::Kind::kOpResult && arrived_by_move(env.to)) sometimes(Sometimes::kReplyAfterRequesterMoved);
      break;
  }
  if (w.timer_key.size()) TANDEM_CRASH_POINT("timer:fired_before_commit");
  auto& txn = t.txn();
  if (!w.row_key.empty()) txn.del(Cf::kOutbox, w.row_key);
  if (!w.timer_key.empty()) txn.del(Cf::kTimer, w.timer_key);
  for (auto& out : t.outputs()) {
    if (opts_.inline_local && is_local(out.to)) {
      Work next;
      next.env = std::move(out);
      next.inline_msg = true;
      next.arrived_us = ran_us;
      ready_.push_back(std::move(next));
    } else {
      std::string key = rows::outbox(placement_.entity_prefix(out.from), out.to, out.seq);
      txn.put(Cf::kOutbox, key, messaging::encode(out));
      open_.relay_rows.emplace_back(std::move(key), std::move(out));
    }
  }
  for (auto& c : t.client_outputs()) open_.client_replies.emplace_back(call_key(env.to, c.client_id, c.idem), std::move(c.reply));
  for (auto& tm : t.timers()) open_.timers.insert({tm.due_ms, std::move(tm.key)});
  for (auto& tm : t.cancelled_timers()) {
    TimerEntry e{tm.due_ms, std::move(tm.key)};
    if (timers_.erase(e) == 0) {
      // Scheduled in a group that has not committed yet: drop it from that group's list.
      if (open_.timers.erase(e) == 0)
        for (auto& [g, a] : committing_) a.timers.erase(e);
    }
  }
  if (w.ack) open_.acks.push_back(std::move(w.ack));
  view_->apply(std::move(txn));
  if (result == Transition::Result::kApplied && !attempts_.empty()) attempts_.erase(work_id(env));
  touch(env.to);
  open_.ran_us.push_back(ran_us);
  open_.transitions++;
}

void Engine::defer_frozen(Work& w) {
  auto& env = w.env;
  if (w.ack) {  // its sender's relay retries, and finds the new owner
    auto ack = std::move(w.ack);
    ack(Status::unavailable("moved: the partition of " + env.to.to_string() + " is moving or has moved"));
    return;
  }
  if (!w.timer_key.empty()) return;  // the timer row moves with the partition (re-armed on abort)
  if (env.kind == Kind::kClientRequest) {
    open_.client_replies.emplace_back(call_key(env.to, env.from.key, env.idempotency_key),
                                      ClientReply{Status::unavailable("moved: the partition of " + env.to.to_string() +
                                                                      " is moving or has moved"), 0, {}});
    return;
  }
  if (w.inline_msg || !w.row_key.empty()) {
    // A message from an entity here: durable in its sender's outbox; the relay delivers it to
    // whoever owns the receiver once the move is over.
    if (w.inline_msg) {
      partition::Txn txn(*view_);
      w.row_key = rows::outbox(placement_.entity_prefix(env.from), env.to, env.seq);
      txn.put(Cf::kOutbox, w.row_key, messaging::encode(env));
      view_->apply(std::move(txn));
      w.inline_msg = false;
    }
    open_.relay_rows.emplace_back(std::move(w.row_key), std::move(env));
    return;
  }
  park(w, "its partition was moving; redrive it again");
}

void Engine::flush() {
  uint64_t target = run_on<uint64_t>(env_, *exec_, [this] {
    bool open = view_->open_writes() > 0 || !open_.empty();
    if (open && inflight_commits_ == 0) seal_and_commit();
    return sealed_groups_ + ((view_->open_writes() > 0 || !open_.empty()) ? 1 : 0);
  });
  while (run_on<uint64_t>(env_, *exec_, [this] {
           if (inflight_commits_ == 0 && (view_->open_writes() > 0 || !open_.empty())) seal_and_commit();
           return committed_groups_;
         }) < target)
    env_.clock().sleep_us(1000);
}

Status Engine::load_timers(const std::vector<partition::KeyRange>& ranges) {
  for (auto& [b, e] : ranges) {
    TANDEM_TRY(store_->scan(Cf::kTimer, b, e, [&](std::string_view k, std::string_view v) {
      if (auto t = TimerRow::decode(v)) timers_.insert({t->due_ms, std::string(k)});
      return true;
    }));
  }
  c_.timers = timers_.size();
  arm_timer_wakeup();
  schedule_step();
  return Status::ok();
}

Status Engine::adopt(const std::vector<partition::KeyRange>& ranges) {
  return run_on<Status>(env_, *exec_, [&]() -> Status {
    arrived_.insert(arrived_.end(), ranges.begin(), ranges.end());
    for (auto& [b, e] : ranges) {
      view_->invalidate(b, e);
      TANDEM_TRY(store_->scan(Cf::kOutbox, b, e, [&](std::string_view k, std::string_view v) {
        if (auto env = messaging::decode_envelope(v)) relay_->add(std::string(k), std::move(*env));
        return true;
      }));
    }
    c_.outbox_depth = relay_->depth();
    return load_timers(ranges);
  });
}

bool Engine::arrived_by_move(const EntityRef& ref) const {
  if (arrived_.empty()) return false;
  std::string k = placement_.entity_prefix(ref);
  return std::any_of(arrived_.begin(), arrived_.end(), [&](auto& r) { return r.first <= k && (r.second.empty() || k < r.second); });
}

Status Engine::rearm(const std::vector<partition::KeyRange>& ranges) {
  return run_on<Status>(env_, *exec_, [&]() -> Status { return load_timers(ranges); });
}

Status Engine::release(const std::vector<partition::KeyRange>& ranges) {
  return run_on<Status>(env_, *exec_, [&]() -> Status {
    partition::WriteBatch b;
    for (auto& [begin, end] : ranges) {
      relay_->forget_range(begin, end);
      for (auto it = timers_.begin(); it != timers_.end();)
        it = it->key >= begin && it->key < end ? timers_.erase(it) : std::next(it);
      for (auto cf : {Cf::kState, Cf::kActivity, Cf::kOutbox, Cf::kTimer}) b.del_range(cf, begin, end);
    }
    TANDEM_TRY(store_->write(b, true));
    for (auto& [begin, end] : ranges) view_->invalidate(begin, end);
    // Clients waiting here for a reply from these entities: the reply will be produced (and
    // stored) at the new owner; send them there now rather than let them time out.
    std::vector<std::function<void(ClientReply)>> moved;
    {
      std::lock_guard lock(calls_mu_);
      for (auto it = calls_.begin(); it != calls_.end();) {
        bool gone = false;
        for (auto& [begin, end] : ranges) gone |= it->second.prefix >= begin && it->second.prefix < end;
        if (gone) {
          moved.push_back(std::move(it->second.done));
          it = calls_.erase(it);
        } else {
          ++it;
        }
      }
    }
    for (auto& fn : moved) {
      c_.inflight--;
      fn(ClientReply{Status::unavailable("moved: the entity's partition moved to another node"), 0, {}});
    }
    c_.outbox_depth = relay_->depth();
    c_.timers = timers_.size();
    return Status::ok();
  });
}

std::string Engine::work_id(const Envelope& env) const {
  std::string id = env.to.type + '\0' + env.to.key + '\0' + env.from.type + '\0' + env.from.key + '\0' +
                   std::to_string(env.seq) + '\0' + env.idempotency_key;
  return id;
}

void Engine::fail(Work& w, const std::string& reason, bool retryable) {
  c_.failures++;
  int n = ++attempts_[work_id(w.env)];
  if (!retryable || n >= opts_.max_attempts) {
    attempts_.erase(work_id(w.env));
    return park(w, reason + " (after " + std::to_string(n) + " attempts)");
  }
  log::warn("{} from {} to {} failed (attempt {}/{}): {}", messaging::kind_name(w.env.kind),
            w.env.from.to_string(), w.env.to.to_string(), n, opts_.max_attempts, reason);
  if (w.ack) {
    // The relay that delivered it retries with backoff.
    auto ack = std::move(w.ack);
    ack(Status::unavailable(reason));
    return;
  }
  if (w.inline_msg) {
    // Its sender commits in the open group: the message must become durable there too.
    partition::Txn txn(*view_);
    w.row_key = rows::outbox(placement_.entity_prefix(w.env.from), w.env.to, w.env.seq);
    txn.put(Cf::kOutbox, w.row_key, messaging::encode(w.env));
    view_->apply(std::move(txn));
    w.inline_msg = false;
  }
  open_.retries.push_back(std::move(w));
}

void Engine::park(Work& w, const std::string& reason) {
  auto& env = w.env;
  c_.parked++;
  std::string key(rows::kParkedPrefix);
  key += placement_.entity_prefix(env.to);
  keys::append_bytes(key, env.from.type);
  keys::append_bytes(key, env.from.key);
  keys::append_u64(key, env.seq);
  keys::append_bytes(key, env.idempotency_key);
  keys::append_u64(key, static_cast<uint64_t>(env.kind));
  log::warn("parked {} from {} to {} (seq {}): {}", messaging::kind_name(env.kind), env.from.to_string(),
            env.to.to_string(), env.seq, reason);
  partition::Txn txn(*view_);
  txn.put(Cf::kMeta, key, ParkedRow{messaging::encode(env), reason}.encode());
  if (!w.row_key.empty()) txn.del(Cf::kOutbox, w.row_key);
  if (!w.timer_key.empty()) txn.del(Cf::kTimer, w.timer_key);
  view_->apply(std::move(txn));
  if (w.ack) open_.acks.push_back(std::move(w.ack));
  if (env.kind == Kind::kClientRequest)
    open_.client_replies.emplace_back(call_key(env.to, env.from.key, env.idempotency_key),
                                      ClientReply{Status::invalid_argument("message parked: " + reason), 0, {}});
  touch(env.to);
  open_.transitions++;
}

void Engine::seal_and_commit() {
  // Messages produced in this group that did not run in it become outbox rows of it, so they
  // are durable exactly when their senders' transitions are. They stay queued in memory and
  // consume (delete) their row when they run.
  partition::Txn spill(*view_);
  for (auto& w : ready_) {
    if (!w.inline_msg) continue;
    w.row_key = rows::outbox(placement_.entity_prefix(w.env.from), w.env.to, w.env.seq);
    spill.put(Cf::kOutbox, w.row_key, messaging::encode(w.env));
    w.inline_msg = false;
  }
  if (!spill.empty()) view_->apply(std::move(spill));
  auto sealed = view_->seal();
  lazy_writes_ = 0;
  size_t n = open_.transitions;
  uint64_t mx = c_.max_per_commit.load();
  if (n > mx) c_.max_per_commit = n;
  std::vector<EntityRef> touched = std::move(open_.touched);
  committing_.emplace(sealed.group, std::move(open_));
  open_ = Actions();
  inflight_commits_++;
  sealed_groups_++;
  int64_t started = env_.clock().now_us();
  if (n <= opts_.inline_commit_max && inflight_commits_ == 1 && own_exec_) {
    // A small commit costs less than the two thread hand-offs of the commit thread. Not on a
    // borrowed loop: the network that shares it would stop reading and writing for the fsync.
    check_fence(touched);
    TANDEM_CRASH_POINT("commit:before_write");
    auto s = store_->write(sealed.batch);
    if (!s) {
      log::error("group commit failed: {}; stopping the process", s.to_string());
      std::abort();
    }
    TANDEM_CRASH_POINT("commit:after_write");
    on_committed(sealed.group, started, env_.clock().now_us());
    return;
  }
  auto batch = std::make_shared<partition::WriteBatch>(std::move(sealed.batch));
  commit_exec_->post([this, batch, group = sealed.group, started, touched = std::move(touched)]() mutable {
    check_fence(touched);
    TANDEM_CRASH_POINT("commit:before_write");
    auto s = store_->write(*batch);
    if (!s) {
      // Crash-only: the WAL holds every earlier commit; recovery replays from there.
      log::error("group commit failed: {}; stopping the process", s.to_string());
      std::abort();
    }
    TANDEM_CRASH_POINT("commit:after_write");
    int64_t written = env_.clock().now_us();
    // The batch and the entity list go back to be freed where they were built: they came from
    // the engine thread's malloc arena, and frees from this thread contend for its lock.
    exec_->post([this, group, started, written, batch = std::move(batch), touched = std::move(touched)] {
      on_committed(group, started, written);
    });
  });
}

void Engine::check_fence(const std::vector<EntityRef>& touched) {
  if (!fence_) return;
  if (auto s = fence_(touched); !s) {
    log::error("fenced: {}; stopping the process without writing the group", s.message());
    env_.stop_process(kFencedExitCode);
  }
}

void Engine::on_committed(uint64_t group, int64_t started_us, int64_t written_us) {
  TANDEM_CRASH_POINT("commit:before_ack");
  int64_t now = env_.clock().now_us();
  inflight_commits_--;
  committed_groups_++;
  c_.commits++;
  c_.commit.record(written_us - started_us);
  c_.handoff.record(now - written_us);
  view_->committed(group);
  auto node = committing_.extract(group);
  auto& a = node.mapped();
  for (int64_t ran : a.ran_us) c_.durable.record(now - ran);
  for (auto& ack : a.acks) ack(Status::ok());
  for (auto& [key, env] : a.relay_rows) relay_->add(key, std::move(env));
  for (auto& [key, reply] : a.client_replies) complete_call(key, std::move(reply));
  timers_.merge(a.timers);
  for (auto& w : a.retries) {
    int n = attempts_.count(work_id(w.env)) ? attempts_[work_id(w.env)] : 1;
    int64_t backoff_us = std::min<int64_t>(opts_.relay_backoff_min_ms * 1000 << std::min(n, 16),
                                           opts_.relay_backoff_max_ms * 1000);
    exec_->post_after(std::chrono::microseconds(backoff_us), [this, w = std::move(w)]() mutable {
      if (stopped_) return;
      ready_.push_back(std::move(w));
      schedule_step();
    });
  }
  c_.timers = timers_.size();
  c_.outbox_depth = relay_->depth();
  c_.relay_retries = relay_->retries();
  arm_timer_wakeup();
  schedule_step();
}

void Engine::on_relay_acked(const std::string& row_key) {
  TANDEM_CRASH_POINT("relay:acked_before_delete");
  partition::Txn txn(*view_);
  txn.del(Cf::kOutbox, row_key);
  view_->apply(std::move(txn));
  c_.outbox_depth = relay_->depth();
  if (opts_.ack_delete_linger_ms > 0) {
    lazy_writes_++;
    arm_linger();
    return;
  }
  schedule_step();
}

void Engine::fire_due_timers() {
  int64_t now = env_.clock().wall_ms();
  compaction_now_ms_->store(now, std::memory_order_relaxed);
  while (!timers_.empty() && timers_.begin()->due_ms <= now) {
    auto t = *timers_.begin();
    timers_.erase(timers_.begin());
    auto row = view_->get(Cf::kTimer, t.key);
    if (!row || !row->has_value()) continue;  // fired before a restart, or duplicated in the heap
    auto tr = TimerRow::decode(**row);
    auto env = tr ? messaging::decode_envelope(tr->envelope) : Result<Envelope>(Status::corruption("timer row"));
    if (!env) {
      log::error("timer row does not decode; dropping it");
      partition::Txn txn(*view_);
      txn.del(Cf::kTimer, t.key);
      view_->apply(std::move(txn));
      continue;
    }
    Work w;
    w.env = std::move(*env);
    w.timer_key = std::move(t.key);
    ready_.push_back(std::move(w));
  }
  c_.timers = timers_.size();
}

void Engine::arm_timer_wakeup() {
  if (timers_.empty()) return;
  int64_t due = timers_.begin()->due_ms;
  if (timer_wakeup_at_ != 0 && timer_wakeup_at_ <= due) return;  // an earlier wake-up is armed
  timer_wakeup_at_ = due;
  int64_t delay_ms = std::max<int64_t>(0, due - env_.clock().wall_ms());
  exec_->post_after(std::chrono::milliseconds(delay_ms), [this, due] {
    if (timer_wakeup_at_ == due) timer_wakeup_at_ = 0;
    if (stopped_) return;
    schedule_step();
    arm_timer_wakeup();
  });
}

// ---- admin ----

NodeStats Engine::stats() const {
  NodeStats s;
  s.applied = c_.applied;
  s.duplicates = c_.duplicates;
  s.parked = c_.parked;
  s.failures = c_.failures;
  s.commits = c_.commits;
  s.outbox_depth = c_.outbox_depth;
  s.relay_retries = c_.relay_retries;
  s.ready = c_.ready;
  s.busy = c_.busy;
  s.timers = c_.timers;
  s.inflight_calls = static_cast<uint64_t>(std::max(0, c_.inflight.load()));
  auto commit = c_.commit.snapshot();
  s.commit_ms_avg = commit.count() ? static_cast<double>(commit.sum_us) / 1000.0 / static_cast<double>(commit.count()) : 0;
  s.transitions_per_commit_max = c_.max_per_commit;
  s.stages = {{"queue", c_.queue.snapshot()},
              {"durable", c_.durable.snapshot()},
              {"commit", commit},
              {"handoff", c_.handoff.snapshot()},
              {"relay", c_.relay.snapshot()}};
  return s;
}

bool Engine::quiescent() const {
  if (!exec_) return true;
  return run_on<bool>(env_, *exec_, [this] {
    // Delayed fault copies first: a copy leaves the count only after it is in the inbox, so a
    // count of 0 read here means the inbox read below already holds every copy.
    bool none_delayed = (!faulty_transport_ || faulty_transport_->in_flight() == 0) &&
                        (!faulty_remote_ || faulty_remote_->in_flight() == 0);
    bool inbox_empty;
    {
      std::lock_guard lock(inbox_mu_);
      inbox_empty = inbox_.empty();
    }
    return none_delayed && inbox_empty && ready_.empty() && inflight_commits_ == 0 && open_.empty() &&
           view_->open_writes() == 0 && relay_->depth() == 0 && attempts_.empty();
  });
}

Result<std::vector<ParkedMessage>> Engine::parked() {
  std::vector<ParkedMessage> out;
  std::string begin(rows::kParkedPrefix);
  TANDEM_TRY(store_->scan(Cf::kMeta, begin, keys::prefix_successor(begin), [&](std::string_view k, std::string_view v) {
    auto row = ParkedRow::decode(v);
    if (!row) return true;
    auto env = messaging::decode_envelope(row->envelope);
    if (!env) return true;
    out.push_back({hex(k), env->to, env->from, std::string(messaging::kind_name(env->kind)), row->reason});
    return true;
  }));
  return out;
}

Status Engine::redrive(const std::string& id) {
  auto key = unhex(id);
  if (!key || key->rfind(rows::kParkedPrefix, 0) != 0) return Status::invalid_argument("not a parked message id: " + id);
  return run_on<Status>(env_, *exec_, [&]() -> Status {
    Status s;
    auto row = view_->get(Cf::kMeta, *key);
    if (!row) {
      s = row.status();
    } else if (!row->has_value()) {
      s = Status::not_found("no parked message " + id);
    } else {
      auto pr = ParkedRow::decode(**row);
      auto env = pr ? messaging::decode_envelope(pr->envelope) : Result<Envelope>(Status::corruption("parked row"));
      if (!env) {
        s = env.status();
      } else {
        // Deleting the parked row and running the message again go into the same group: if
        // the message fails again it is parked again under the same id.
        partition::Txn txn(*view_);
        txn.del(Cf::kMeta, *key);
        view_->apply(std::move(txn));
        log::info("redriving parked message to {}", env->to.to_string());
        Work w;
        w.env = std::move(*env);
        ready_.push_back(std::move(w));
        schedule_step();
      }
    }
    return s;
  });
}

}  // namespace tandem::entity
