#include "cluster.h"

#include <charconv>
#include <set>
#include <sstream>
#include <unordered_map>

#include <tandem/core/bytes.h>
#include <tandem/core/crash_point.h>
#include <tandem/core/sometimes.h>
#include <tandem/core/crypto.h>
#include <tandem/core/key_codec.h>
#include <tandem/core/log.h>

#include "records.h"
#include "row_keys.h"
#include "rpc.h"

namespace tandem::entity {

using messaging::AckFn;
using messaging::Envelope;
using messaging::Session;

namespace {
constexpr std::string_view kMapKey = "partition-map";
// A partition frozen here for a move, with the controller that froze it: kept in the store, so
// a source killed after the move's commit, before it learned of it, does not serve the partition
// from its stale copy when it comes back (with the controller out of reach, on its cached map).
constexpr std::string_view kFrozenPrefix = "frozen/";
std::string frozen_key(uint32_t pid) { return std::string(kFrozenPrefix) + std::to_string(pid); }
constexpr int64_t kReconnectBackoffMs = 200;
// While a peer stays unreachable (retried every kReconnectBackoffMs as long as messages wait
// for it), the first failure is a warning and later ones are summed up at most this often.
constexpr int64_t kUnreachableLogEveryMs = 30'000;
}  // namespace

// Carries envelopes to the nodes that own their receivers: one session per peer, connected on
// first use, re-connected (at most every kReconnectBackoffMs) after it drops. A delivery that
// cannot be made now is acked `unavailable`, and the relay retries it with backoff.
class ClusterNode::PeerTransport final : public messaging::Transport {
 public:
  explicit PeerTransport(ClusterNode& node) : node_(node) {}

  void send(const Envelope& env, AckFn ack) override {
    uint32_t owner;
    {
      std::lock_guard lock(node_.map_mu_);
      auto* p = node_.map_.find(env.to);
      if (!p || !node_.map_.node(p->owner)) return ack(Status::unavailable("no owner for " + env.to.to_string()));
      owner = p->owner;
    }
    with_session(owner, [this, env, ack = std::move(ack)](Result<std::shared_ptr<Session>> s) mutable {
      if (!s) return ack(s.status());
      (*s)->deliver(env, watch(env, std::move(ack)));
    });
  }

  // A request to node `id` over the same session (controller and partition requests).
  void request(uint32_t id, const std::string& method, std::string body, std::function<void(Status, std::string)> done) {
    with_session(id, [method, body = std::move(body), done = std::move(done)](Result<std::shared_ptr<Session>> s) mutable {
      if (!s) return done(s.status(), {});
      (*s)->request(method, std::move(body), std::move(done));
    });
  }

  // A `moved` answer means our map is stale: refresh it; the relay's retry then re-routes.
  // Envelopes answered `moved` more than once form a forward chain (counted for the simulator;
  // the map is touched only once a delivery was answered `moved`).
  AckFn watch(const Envelope& env, AckFn ack) {
    uint64_t id = keys::stable_hash(env.from.key) ^ (keys::stable_hash(env.to.key) * 0x9E3779B97F4A7C15ull) ^ env.seq;
    return [this, id, ack = std::move(ack)](Status s) {
      bool moved = !s && s.message().rfind("moved", 0) == 0;
      if (moved) node_.refresh_map_async();
      if (moved || any_moved_.load(std::memory_order_relaxed)) {
        std::lock_guard lock(mu_);
        if (!moved) {
          moved_.erase(id);
        } else if (++moved_[id] == 2) {
          sometimes(Sometimes::kForwardChain);
        }
        if (moved_.size() > 10'000) moved_.clear();
        any_moved_ = !moved_.empty();
      }
      ack(std::move(s));
    };
  }

  // An authenticated session that node `id` opened to us: use it for our traffic to that node
  // too, so a pair of nodes shares one connection (unless both dialled at once).
  void adopt(uint32_t id, std::shared_ptr<Session> s) {
    std::vector<std::function<void(Result<std::shared_ptr<Session>>)>> waiting;
    {
      std::lock_guard lock(mu_);
      auto& peer = peers_[id];
      if (peer.session && !peer.session->closed()) return;
      peer.session = s;
      if (!peer.connecting) waiting.swap(peer.waiting);
    }
    for (auto& w : waiting) w(s);
  }

  void close_all() {
    std::lock_guard lock(mu_);
    for (auto& [id, p] : peers_)
      if (p.session) p.session->close();
  }

 private:
  using Use = std::function<void(Result<std::shared_ptr<Session>>)>;
  struct Peer {
    std::shared_ptr<Session> session;
    bool connecting = false;
    int64_t failed_at_ms = -1'000'000;
    int64_t failures = 0;                   // failed connects in a row
    std::unique_ptr<log::Throttle> outage;  // the log lines of this run of failures
    std::vector<Use> waiting;
  };

  // Runs `use` with a ready session to node `id`, connecting if needed (at most every
  // kReconnectBackoffMs after a failure). A use that cannot be served now gets `unavailable`.
  void with_session(uint32_t id, Use use) {
    std::shared_ptr<Session> session;
    net::Endpoint addr;
    {
      std::lock_guard lock(mu_);
      auto& peer = peers_[id];
      if (peer.session && !peer.session->closed()) {
        session = peer.session;
      } else {
        if (!peer.connecting) {
          int64_t now = node_.env_.clock().now_us() / 1000;
          if (now - peer.failed_at_ms < kReconnectBackoffMs) {
            use(Status::unavailable("node " + std::to_string(id) + " unreachable"));
            return;
          }
          auto a = node_.node_addr(id);
          if (!a) {
            use(Status::invalid_argument("no node " + std::to_string(id)));
            return;
          }
          addr = *a;
          peer.connecting = true;
          peer.waiting.push_back(std::move(use));
          connect(id, addr);
          return;
        }
        peer.waiting.push_back(std::move(use));
        return;
      }
    }
    use(session);
  }

  void connect(uint32_t id, const net::Endpoint& addr) {
    messaging::SessionOptions o;
    o.secret = node_.secret_;
    o.role = "node";
    o.node_id = node_.self_.id;
    o.expect_node = id;
    messaging::SessionHandlers h = node_.session_handlers("node");
    h.on_close = [this, id](Status s) {
      log::warn("node {}: connection to node {} closed: {}", node_.self_.id, id, s.message());
    };
    Session::connect(*node_.net_, addr, o, h, [this, id](Result<std::shared_ptr<Session>> r) {
      std::vector<Use> waiting;
      int64_t failures = 0, unlogged = 0;
      bool log_now = false;
      {
        std::lock_guard lock(mu_);
        auto& peer = peers_[id];
        peer.connecting = false;
        waiting.swap(peer.waiting);
        int64_t now = node_.env_.clock().now_us() / 1000;
        if (r) {
          peer.session = *r;
          failures = peer.failures;
          peer.failures = 0;
        } else {
          peer.failed_at_ms = now;
          failures = ++peer.failures;
          if (failures == 1) peer.outage = std::make_unique<log::Throttle>(1, kUnreachableLogEveryMs);
          unlogged = peer.outage->admit_at(now);
          log_now = unlogged >= 0;
        }
      }
      if (!r && log_now) {
        if (failures == 1)
          log::warn("node {}: cannot reach node {}: {} (retrying while messages wait for it; further failures are "
                    "summed up every {} s)",
                    node_.self_.id, id, r.status().message(), kUnreachableLogEveryMs / 1000);
        else
          log::warn("node {}: still cannot reach node {} ({} failed connects in a row, {} since the last line): {}",
                    node_.self_.id, id, failures, unlogged + 1, r.status().message());
      } else if (!r) {
        log::debug("node {}: cannot reach node {}: {}", node_.self_.id, id, r.status().message());
      } else if (failures > 0) {
        log::info("node {}: reached node {} again after {} failed connects", node_.self_.id, id, failures);
      }
      for (auto& w : waiting) w(r);
    });
  }

  ClusterNode& node_;
  std::mutex mu_;
  std::map<uint32_t, Peer> peers_;
  std::unordered_map<uint64_t, int> moved_;  // under mu_: envelope hash -> moved answers
  std::atomic<bool> any_moved_{false};       // moved_ is not empty
};

ClusterNode::ClusterNode(Env& env, const Registry& registry, partition::ClusterConfig config, uint32_t node_id,
                         NodeOptions base)
    : env_(env), registry_(registry), config_(std::move(config)), opts_(std::move(base)) {
  if (auto* n = config_.node(node_id)) self_ = *n;
}

ClusterNode::~ClusterNode() { stop(); }

Status ClusterNode::load_map() {
  // The store is opened briefly here, before the engine opens it, to read (or, at the
  // controller, create) the map that routing needs from the first delivery on.
  auto store = open_store_({opts_.data_dir, partition::Durability::kStrict});
  // A previous process of this node that was just killed may hold the store's lock for a few
  // more milliseconds while its threads exit: wait for it (bounded) rather than fail.
  for (int attempt = 0; attempt < 50 && !stopping_ && !store && store.status().message().find("LOCK") != std::string::npos;
       ++attempt) {
    env_.clock().sleep_us(100'000);
    store = open_store_({opts_.data_dir, partition::Durability::kStrict});
  }
  if (!store && stopping_) return Status::unavailable("stopped while waiting for the store's lock");
  if (!store) return store.status();
  {
    std::string begin(kFrozenPrefix);
    std::lock_guard lock(map_mu_);
    TANDEM_TRY((*store)->scan(partition::Cf::kMeta, begin, keys::prefix_successor(begin), [&](std::string_view k, std::string_view v) {
      uint32_t pid = 0, by = 0;
      auto id = k.substr(begin.size());
      std::from_chars(id.data(), id.data() + id.size(), pid);
      std::from_chars(v.data(), v.data() + v.size(), by);
      if (pid) frozen_[pid] = by;
      return true;
    }));
    if (!frozen_.empty())
      log::warn("node {}: {} partition(s) stay frozen for a move that was under way when this node stopped", self_.id,
                frozen_.size());
  }
  auto cached = (*store)->get(partition::Cf::kMeta, kMapKey);
  if (!cached) return cached.status();
  std::optional<partition::PartitionMap> mine;
  if (cached->has_value()) {
    auto m = partition::PartitionMap::decode(**cached);
    if (!m) return m.status();
    mine = std::move(*m);
  }
  if (meta_) {
    // etcd is authoritative; the local copy is only a cache for tools that read the store.
    auto m = meta_->load_or_create(partition::PartitionMap::initial(config_.nodes, config_.types), 30'000);
    if (!m) return m.status();
    if (mine && mine->epoch > m->epoch)
      log::warn("node {}: the local copy of the map (epoch {}) is newer than etcd's (epoch {}); using etcd's", self_.id,
                mine->epoch, m->epoch);
    partition::WriteBatch b;
    b.put(partition::Cf::kMeta, kMapKey, m->encode());
    TANDEM_TRY((*store)->write(b));
    std::lock_guard lock(map_mu_);
    map_ = std::move(*m);
    return Status::ok();
  }
  uint32_t controller = config_.nodes.front().id;
  for (auto& n : config_.nodes) controller = std::min(controller, n.id);
  controller_ = controller;
  if (self_.id == controller) {
    if (!mine) {
      mine = partition::PartitionMap::initial(config_.nodes, config_.types);
      partition::WriteBatch b;
      b.put(partition::Cf::kMeta, kMapKey, mine->encode());
      TANDEM_TRY((*store)->write(b));
      log::info("node {}: created the partition map: epoch {}, {} partitions", self_.id, mine->epoch,
                mine->partitions.size());
    }
  } else {
    // Fetch from the controller; fall back to the cached copy when it is down.
    auto* c = config_.node(controller);
    for (int attempt = 0; attempt < 300 && !stopping_; ++attempt) {
      Handoff<Result<std::string>> p(env_);
      messaging::SessionOptions o;
      o.secret = secret_;
      o.role = "node";
      o.node_id = self_.id;
      o.expect_node = controller;
      Session::connect(*net_, c->addr, o, {}, [p](Result<std::shared_ptr<Session>> s) {
        if (!s) return p.set(s.status());
        auto session = *s;
        session->request("map", "", [p, session](Status st, std::string body) {
          session->close();
          if (!st) return p.set(st);
          p.set(std::move(body));
        });
      });
      auto answer = await(p, 10'000);
      if (!answer && stopping_) break;
      auto r = std::move(answer).value_or(Status::unavailable("the controller did not answer within 10 s"));
      if (r) {
        auto m = partition::PartitionMap::decode(*r);
        if (!m) return m.status();
        if (!mine || m->epoch >= mine->epoch) {
          mine = std::move(*m);
          partition::WriteBatch b;
          b.put(partition::Cf::kMeta, kMapKey, mine->encode());
          TANDEM_TRY((*store)->write(b));
        }
        break;
      }
      if (mine) {
        log::warn("node {}: controller {} unreachable ({}); using the cached map at epoch {}", self_.id, controller,
                  r.status().message(), mine->epoch);
        break;
      }
      if (attempt % 20 == 0)
        log::info("node {}: waiting for the controller (node {}) to serve the partition map: {}", self_.id, controller,
                  r.status().message());
      env_.clock().sleep_us(100'000);
    }
    if (!mine && stopping_) return Status::unavailable("stopped while waiting for the controller's partition map");
    if (!mine) return Status::unavailable("no partition map: the controller never answered");
  }
  std::lock_guard lock(map_mu_);
  map_ = std::move(*mine);
  return Status::ok();
}

Status ClusterNode::start() {
  if (self_.id == 0) return Status::invalid_argument("this node id is not in the cluster config");
  auto secret = config_.read_secret();
  if (!secret) return secret.status();
  secret_ = *secret;
  if (config_.insecure_dev)
    log::warn("node {}: INSECURE: the cluster config says insecure-dev, so its secret is public and anyone who can "
              "reach this node can send it messages and admin commands; never use it beyond a throwaway local cluster",
              self_.id);
  for (auto& t : config_.types)
    if (!registry_.find(t.name))
      return Status::invalid_argument("the config lists entity type '" + t.name + "' that this binary does not register");
  started_ms_ = env_.clock().wall_ms();
  if (opts_.data_dir.empty())
    opts_.data_dir = self_.data_dir.empty() || self_.data_dir[0] == '/' ? self_.data_dir : config_.dir + "/" + self_.data_dir;
  opts_.durability = config_.durability;
  if (config_.max_pending_calls) opts_.max_pending_calls = config_.max_pending_calls;
  if (config_.max_outbox) opts_.max_outbox = config_.max_outbox;
  if (config_.max_inbox) opts_.max_inbox = config_.max_inbox;
  loop_ = env_.make_executor("tandem-run");
  net_ = env_.make_network_on(*loop_);
  ctl_exec_ = env_.make_executor("tandem-ctl");
  part_exec_ = env_.make_executor("tandem-part");
  copy_exec_ = env_.make_executor("tandem-copy");
  if (config_.meta != "embedded") {
    auto addr = EtcdAddress::parse(config_.meta);
    if (!addr) return addr.status();
    meta_ = std::make_unique<EtcdMeta>(env_, *addr, self_.id, &stopping_);
  }
  TANDEM_TRY(load_map());
  if (stopping_) return Status::unavailable("stopped while starting");

  engine_ = std::make_unique<Engine>(env_, registry_, opts_);
  engine_->set_store_opener(open_store_);
  engine_->set_executor(loop_.get());
  {
    std::lock_guard lock(map_mu_);
    engine_->set_placement(map_.placement());
  }
  engine_->set_router([this](const EntityRef& r) { return owns(r); });
  engine_->set_frozen([this](const EntityRef& r) { return frozen(r); });
  engine_->set_fence([this](const std::vector<EntityRef>& touched) { return fence(touched); });
  peers_ = std::make_unique<PeerTransport>(*this);
  engine_->set_remote_transport(peers_.get());
  TANDEM_TRY(engine_->start());

  messaging::SessionOptions o;
  o.secret = secret_;
  o.node_id = self_.id;
  auto port = net_->listen(self_.addr, [this, o](std::shared_ptr<net::Connection> c) {
    Session::accept(*net_, std::move(c), o, [this](const std::shared_ptr<Session>& s) {
      if (s->peer_role() == "node" && s->peer_node() != self_.id && node_addr(s->peer_node()))
        peers_->adopt(s->peer_node(), s);
      return session_handlers(s->peer_role());
    });
  });
  if (!port) return port.status();
  auto admin = net_->listen(self_.admin, [this](std::shared_ptr<net::Connection> c) { serve_metrics(std::move(c)); });
  if (!admin) return admin.status();
  if (meta_) {
    EtcdMeta::Hooks hooks;
    hooks.on_map = [this](partition::PartitionMap m) {
      part_exec_->post([this, m = std::move(m)]() mutable {
        uint64_t from = map_copy().epoch, to = m.epoch;
        if (to <= from) return;
        auto st = adopt_map(std::move(m));
        log::info("node {}: partition map from etcd: epoch {} -> {}: {}", self_.id, from, to, st.to_string());
      });
    };
    hooks.on_controller = [this](uint32_t c) {
      uint32_t before = controller_.exchange(c);
      log::info("node {}: controller is node {} (was {})", self_.id, c, before);
      if (c == self_.id && before != c) ctl_exec_->post([this] { take_control(); });
      if (c != 0 && before != c) part_exec_->post([this, c] { thaw_orphans(c); });
    };
    TANDEM_TRY(meta_->start(std::move(hooks)));
  } else if (self_.id == controller_) {
    TANDEM_TRY(engine_->release(ranges_of(not_mine())));
    ctl_exec_->post([this] { take_control(); });
  } else {
    check_map_periodically();
  }
  log::info("node {} serving on {} (metrics on http://{}/metrics), data {}, durability {}, metadata {}", self_.id,
            self_.addr.to_string(), self_.admin.to_string(), opts_.data_dir, opts_.durability, config_.meta);
  return Status::ok();
}

void ClusterNode::finish_abort() {
  if (!unfreeze_pending_) return;
  auto [pid, from] = *unfreeze_pending_;
  unfreeze_pending_.reset();
  for (int attempt = 1; !stopping_ && controller_.load() == self_.id; ++attempt) {
    env_.clock().sleep_us(std::min<int64_t>(200'000LL << std::min(attempt, 5), 5'000'000));
    if (call_node(from, "unfreeze", ByteWriter().varint(pid).take())) {
      log::info("move of partition {}: node {} took the unfreeze", pid, from);
      return;
    }
  }
}

void ClusterNode::check_map_periodically() {
  net_->after(kMapCheckMs, [this] {
    if (stopping_) return;
    refresh_map_async();
    check_map_periodically();
  });
}

void ClusterNode::take_control() {
  // The map in the store (etcd's, or this node's own) is authoritative: drop what a move that
  // died after its commit left here, and tell every node the current map (one may have missed
  // it, and a source may still hold a partition frozen for a move that did not finish).
  // Runs on ctl_exec_, so map changes asked for meanwhile wait until every node has the map.
  if (meta_) {
    if (auto m = meta_->newest()) adopt_map(*m).ignore_error("logged by adopt_map's callers; re-sent below");
  }
  std::string enc;
  {
    std::lock_guard lock(map_mu_);
    enc = map_.encode();
  }
  for (auto& n : map_copy().nodes) {  // this node too: it may hold a partition frozen for that move
    // A node that stays unreachable learns the map when it starts (or from its next `moved`).
    int64_t give_up_us = env_.clock().now_us() + 10'000'000;
    while (!stopping_ && controller_.load() == self_.id && env_.clock().now_us() < give_up_us) {
      if (call_node(n.id, "map-reset", enc)) break;
      env_.clock().sleep_us(200'000);
    }
  }
  log::info("node {}: controller: every node has the map at epoch {}", self_.id, map_copy().epoch);
}

void ClusterNode::thaw_orphans(uint32_t controller) {
  std::vector<uint32_t> thawed;
  auto newest = meta_ ? meta_->newest() : nullptr;
  {
    std::lock_guard lock(map_mu_);
    const partition::PartitionMap& m = newest_locked(newest);
    for (auto it = frozen_.begin(); it != frozen_.end();) {
      auto* p = m.partition(it->first);
      if (it->second != controller && p && p->owner == self_.id) {
        thawed.push_back(it->first);
        it = frozen_.erase(it);
      } else {
        ++it;
      }
    }
  }
  if (thawed.empty()) return;
  if (auto st = forget_frozen(thawed); !st) log::error("node {}: forgetting frozen partitions: {}", self_.id, st.to_string());
  log::warn("node {}: thawing {} partition(s) frozen by a controller that lost the role", self_.id, thawed.size());
  if (auto st = engine_->rearm(ranges_of(thawed)); !st) log::error("node {}: rearm: {}", self_.id, st.to_string());
}

const partition::PartitionMap& ClusterNode::newest_locked(const std::shared_ptr<const partition::PartitionMap>& newest) const {
  return newest && newest->epoch > map_.epoch ? *newest : map_;
}

Status ClusterNode::forget_frozen(const std::vector<uint32_t>& pids) {
  if (pids.empty()) return Status::ok();
  partition::WriteBatch b;
  for (auto id : pids) b.del(partition::Cf::kMeta, frozen_key(id));
  return engine_->store().write(b, true);
}

std::vector<partition::KeyRange> ClusterNode::owned_ranges(const partition::PartitionMap& m) const {
  std::vector<partition::KeyRange> out;
  for (auto& p : m.partitions)
    if (p.owner == self_.id) out.push_back(m.key_range(p));
  return out;
}

std::vector<uint32_t> ClusterNode::not_mine() const {
  std::lock_guard lock(map_mu_);
  std::vector<uint32_t> out;
  for (auto& p : map_.partitions)
    if (p.owner != self_.id) out.push_back(p.id);
  return out;
}

void ClusterNode::progress(std::string step) {
  if (!step.empty()) log::info("{}", step);
  std::lock_guard lock(progress_mu_);
  progress_ = std::move(step);
}

Status ClusterNode::commit_map(const partition::PartitionMap& next) {
  if (meta_) return meta_->commit(next);
  return persist_map(next);
}

Status ClusterNode::fence(const std::vector<EntityRef>& touched) {
  std::shared_ptr<const partition::PartitionMap> newest;
  if (meta_) {
    // Without a live lease nothing is written: the commit waits (the node stalls, and its
    // callers see timeouts and busy answers) until the lease is renewed and the map re-read.
    for (int waited_s = 0; !meta_->lease_valid(); waited_s += 30) {
      log::warn("node {}: no valid etcd lease for {} s: holding this commit until it is renewed", self_.id, waited_s);
      if (meta_->wait_lease(30'000)) break;
      if (stopping_) return Status::unavailable("stopping without a valid etcd lease");
    }
    newest = meta_->newest();
  }
  std::lock_guard lock(map_mu_);
  const partition::PartitionMap& m = newest_locked(newest);
  for (auto& r : touched) {
    auto* p = m.find(r);
    if (p && p->owner != self_.id)
      return Status::conflict(r.to_string() + " is in partition " + std::to_string(p->id) + ", owned by node " +
                              std::to_string(p->owner) + " at epoch " + std::to_string(m.epoch));
  }
  return Status::ok();
}

messaging::SessionHandlers ClusterNode::session_handlers(const std::string& role) {
  messaging::SessionHandlers h;
  if (role == "node") {
    h.on_deliver = [this](Envelope env, AckFn ack) {
      if (!owns(env.to)) return ack(Status::unavailable(moved_message(env.to)));
      engine_->deliver(std::move(env), std::move(ack));
    };
  }
  h.on_request = [this, role](const std::string& m, std::string body, messaging::RespondFn respond) {
    on_request(role, m, std::move(body), std::move(respond));
  };
  return h;
}

// Order matters: the network posts requests to the executors, and executor tasks wait for
// network answers. So: refuse new work, stop the network (no callbacks after this; waiting
// calls see `stopping_` and give up), then the executors, then the engine. The loop they share
// keeps running until the node is destroyed; what is left queued on it does nothing.
void ClusterNode::stop() {
  stopping_ = true;
  if (meta_) meta_->stop();
  if (peers_) peers_->close_all();
  if (net_) net_->stop();
  ctl_exec_.reset();
  part_exec_.reset();
  copy_exec_.reset();
  if (engine_) engine_->stop();
  if (meta_) meta_->release();
}

void ClusterNode::refresh_map_async() {
  int64_t now = env_.clock().now_us() / 1000;
  int64_t last = last_refresh_ms_.load();
  if (now - last < 200 || !last_refresh_ms_.compare_exchange_strong(last, now)) return;
  if (meta_) {  // the watch brings every map; adopt the newest seen if it is still pending
    part_exec_->post([this] {
      auto m = meta_->newest();
      if (m && m->epoch > map_copy().epoch) adopt_map(*m).ignore_error("the watch brings it again");
    });
    return;
  }
  uint32_t c = controller_.load();
  if (c == self_.id || !config_.node(c)) return;
  // Over the session this node keeps to the controller anyway (the periodic check must not
  // open a connection every time).
  peers_->request(c, "map", "", [this](Status st, std::string body) {
    if (!st) return;
    auto m = partition::PartitionMap::decode(body);
    if (!m) return;
    part_exec_->post([this, m = std::move(*m)]() mutable {
      uint64_t from = 0, to = m.epoch;
      {
        std::lock_guard lock(map_mu_);
        from = map_.epoch;
      }
      if (to <= from) return;
      auto st = adopt_map(std::move(m));
      log::info("node {}: partition map refreshed: epoch {} -> {}: {}", self_.id, from, to, st.to_string());
    });
  });
}

std::optional<net::Endpoint> ClusterNode::node_addr(uint32_t id) const {
  std::lock_guard lock(map_mu_);
  if (auto* n = partition::find_node(map_, config_, id)) return n->addr;
  return std::nullopt;
}

partition::PartitionMap ClusterNode::map_copy() const {
  std::lock_guard lock(map_mu_);
  return map_;
}

void ClusterNode::announce(const partition::PartitionMap& m, std::initializer_list<uint32_t> skip) {
  std::string enc = m.encode();
  for (auto& n : m.nodes) {
    if (n.id == self_.id || std::find(skip.begin(), skip.end(), n.id) != skip.end()) continue;
    call_node(n.id, "map-update", enc).status().ignore_error("a node that missed it learns it from its next moved answer");
  }
}

bool ClusterNode::frozen(const EntityRef& ref) const {
  std::lock_guard lock(map_mu_);
  if (frozen_.empty()) return false;
  auto* p = map_.find(ref);
  return p && frozen_.count(p->id);
}

std::vector<partition::KeyRange> ClusterNode::ranges_of(const std::vector<uint32_t>& pids) const {
  std::lock_guard lock(map_mu_);
  std::vector<partition::KeyRange> out;
  for (auto id : pids)
    if (auto* p = map_.partition(id)) out.push_back(map_.key_range(*p));
  return out;
}

Result<std::string> ClusterNode::call_node(uint32_t id, const std::string& method, std::string body) {
  if (id == self_.id) return handle_partition_request(method, std::move(body));
  if (stopping_) return Status::unavailable("this node is stopping");
  Handoff<Result<std::string>> p(env_);
  peers_->request(id, method, std::move(body), [p](Status st, std::string b) {
    if (!st) return p.set(st);
    p.set(std::move(b));
  });
  // Copying a partition's rows takes time in proportion to its size; every other request is
  // quick, and a node that does not answer it within 10 s is taken as stalled.
  const int limit_ms = method == "export" || method == "ingest" ? 120'000 : 10'000;
  if (auto r = await(p, limit_ms)) return std::move(*r);
  if (stopping_) return Status::unavailable("this node is stopping");
  return Status::unavailable("node " + std::to_string(id) + " did not answer " + method + " within " +
                             std::to_string(limit_ms / 1000) + " s");
}

template <class T>
std::optional<T> ClusterNode::await(const Handoff<T>& h, int limit_ms) const {
  for (int waited_ms = 0; !stopping_ && waited_ms <= limit_ms; waited_ms += 100)
    if (auto r = h.wait_us(100'000)) return r;
  return std::nullopt;
}

Status ClusterNode::persist_map(const partition::PartitionMap& m) {
  partition::WriteBatch b;
  b.put(partition::Cf::kMeta, kMapKey, m.encode());
  return engine_->store().write(b, true);
}

Status ClusterNode::adopt_map(partition::PartitionMap next) {
  std::vector<uint32_t> gained, lost, thawed;
  {
    std::lock_guard lock(map_mu_);
    if (next.epoch <= map_.epoch) return Status::ok();
    for (auto& p : next.partitions) {
      auto* old = map_.partition(p.id);
      bool had = old ? old->owner == self_.id : false;
      if (!old) {  // a split half: owned iff the partition it came from was
        had = p.owner == self_.id;
      }
      if (p.owner == self_.id && !had) gained.push_back(p.id);
      if (p.owner != self_.id && had) lost.push_back(p.id);
    }
  }
  TANDEM_TRY(persist_map(next));
  // What this node gives up: the ranges its lost partitions had in the map it held, less what
  // it owns in the new one. A node that missed a split still holds the partition whole; the
  // half that stays here must not be deleted with the half that left.
  std::vector<partition::KeyRange> lost_ranges = ranges_of(lost);
  if (!lost_ranges.empty()) {
    auto kept = partition::subtract_ranges(lost_ranges, owned_ranges(next));
    if (kept != lost_ranges)
      log::warn("node {}: the map jumped to epoch {} past a split; keeping the rows of the partitions it still owns",
                self_.id, next.epoch);
    lost_ranges = std::move(kept);
  }
  std::vector<partition::KeyRange> gained_ranges;
  for (auto id : gained) gained_ranges.push_back(next.key_range(*next.partition(id)));
  // Arrived partitions start (outbox rows, timers) before this node routes to them, so what
  // is loaded is exactly what was committed: no transition of theirs has run here yet.
  if (!gained_ranges.empty()) TANDEM_TRY(engine_->adopt(gained_ranges));
  {
    std::lock_guard lock(map_mu_);
    if (next.epoch <= map_.epoch) return Status::ok();  // a newer map was adopted meanwhile
    map_ = std::move(next);
    for (auto id : lost)
      if (frozen_.erase(id)) thawed.push_back(id);
  }
  if (!lost_ranges.empty()) TANDEM_TRY(engine_->release(lost_ranges));
  TANDEM_TRY(forget_frozen(thawed));  // the partitions this node froze for the moves that took them
  return Status::ok();
}

// Requests the controller sends to nodes during moves and splits. Bodies are ByteWriter records.
Result<std::string> ClusterNode::handle_partition_request(const std::string& method, std::string body) {
  ByteReader r(body);
  if (method == "ingest") {
    // (cf, key, value) triples of a partition arriving here.
    partition::WriteBatch b;
    auto n = r.varint();
    if (!n) return Status::invalid_argument("malformed ingest");
    for (uint64_t i = 0; i < *n; ++i) {
      auto cf = r.u8();
      auto k = r.bytes();
      auto v = r.bytes();
      if (!cf || *cf > 3 || !k || !v) return Status::invalid_argument("malformed ingest row");
      b.put(static_cast<partition::Cf>(*cf), *k, *v);
    }
    TANDEM_CRASH_POINT("move:ingest_before_write");
    TANDEM_TRY(engine_->store().write(b, true));
    TANDEM_CRASH_POINT("move:ingested");
    return std::to_string(*n);
  }
  if (method == "map-update" || method == "adopt" || method == "release" || method == "map-reset") {
    auto m = partition::PartitionMap::decode(body);
    if (!m) return m.status();
    if (method == "adopt") TANDEM_CRASH_POINT("move:adopt");
    TANDEM_TRY(adopt_map(std::move(*m)));
    if (method == "map-reset") {
      // Sent by a controller that just started, so no move is under way: whatever this node
      // holds of partitions it does not own is left over from a move that died; drop it. A
      // partition it still owns but froze for that move is thawed.
      std::vector<uint32_t> thawed, all;
      {
        std::lock_guard lock(map_mu_);
        for (auto [id, by] : frozen_) {
          auto* p = map_.partition(id);
          if (p && p->owner == self_.id) thawed.push_back(id);
          all.push_back(id);
        }
        frozen_.clear();
      }
      TANDEM_TRY(engine_->release(ranges_of(not_mine())));
      TANDEM_TRY(forget_frozen(all));
      if (!thawed.empty()) {
        log::warn("node {}: thawing {} partition(s) frozen for a move that did not finish", self_.id, thawed.size());
        TANDEM_TRY(engine_->rearm(ranges_of(thawed)));
      }
    }
    return std::string("ok");
  }
  auto pid = r.varint();
  if (!pid) return Status::invalid_argument("malformed " + method + " request");
  if (*pid > UINT32_MAX) return Status::invalid_argument("no partition " + std::to_string(*pid));
  auto ranges = ranges_of({static_cast<uint32_t>(*pid)});
  if (ranges.empty()) return Status::invalid_argument("no partition " + std::to_string(*pid));
  if (method == "freeze") {
    auto asked_by = r.varint();  // the controller asking (absent from an older controller)
    if (asked_by && *asked_by > UINT32_MAX) return Status::invalid_argument("malformed freeze request: no node " + std::to_string(*asked_by));
    uint32_t by = asked_by ? static_cast<uint32_t>(*asked_by) : 0;
    {
      std::lock_guard lock(map_mu_);
      frozen_[static_cast<uint32_t>(*pid)] = by;
    }
    partition::WriteBatch b;
    b.put(partition::Cf::kMeta, frozen_key(static_cast<uint32_t>(*pid)), std::to_string(by));
    TANDEM_TRY(engine_->store().write(b, true));
    TANDEM_CRASH_POINT("move:frozen_before_flush");
    engine_->flush();  // every transition of the partition is committed from here on
    return std::string("frozen");
  }
  if (method == "unfreeze") {
    {
      std::lock_guard lock(map_mu_);
      frozen_.erase(static_cast<uint32_t>(*pid));
    }
    TANDEM_TRY(forget_frozen({static_cast<uint32_t>(*pid)}));
    TANDEM_TRY(engine_->rearm(ranges));
    return std::string("unfrozen");
  }
  if (method == "drop") {  // an aborted move's partial copy, or a stale one before a move
    // Never the rows of a partition this node owns (a map older than the controller's may see
    // the partition whole where a split gave a half of it to this node).
    auto stale = partition::subtract_ranges(ranges, owned_ranges(map_copy()));
    if (stale != ranges)
      log::warn("node {}: drop of partition {}: keeping the rows of partitions this node owns", self_.id, *pid);
    TANDEM_TRY(engine_->release(stale));
    return std::string("dropped");
  }
  if (method == "median") {
    std::vector<std::string> keys_seen;
    auto& placement = engine_->placement();
    TANDEM_TRY(engine_->store().scan(partition::Cf::kState, ranges[0].first, ranges[0].second,
                                     [&](std::string_view k, std::string_view) {
                                       EntityRef ref;
                                       std::string_view rest;
                                       if (placement.decode_entity(k, ref, rest) && rest == "s") keys_seen.push_back(ref.key);
                                       return true;
                                     }));
    if (keys_seen.size() < 2) return Status::invalid_argument("partition " + std::to_string(*pid) + " holds fewer than 2 entities");
    return keys_seen[keys_seen.size() / 2];
  }
  if (method == "export") {
    auto to = r.varint();
    if (!to || *to > UINT32_MAX) return Status::invalid_argument("malformed export");
    // Stream every row of the partition's ranges to the target in chunks of about 1 MiB.
    uint64_t rows = 0, in_chunk = 0;
    ByteWriter chunk;
    std::string pending;
    auto send = [&]() -> Status {
      if (in_chunk == 0) return Status::ok();
      std::string b = ByteWriter().varint(in_chunk).take() + pending;
      auto res = call_node(static_cast<uint32_t>(*to), "ingest", std::move(b));
      pending.clear();
      in_chunk = 0;
      return res.status();
    };
    for (auto cf : {partition::Cf::kState, partition::Cf::kActivity, partition::Cf::kOutbox, partition::Cf::kTimer}) {
      Status inner;
      TANDEM_TRY(engine_->store().scan(cf, ranges[0].first, ranges[0].second, [&](std::string_view k, std::string_view v) {
        pending += ByteWriter().u8(static_cast<uint8_t>(cf)).bytes(k).bytes(v).take();
        ++in_chunk;
        ++rows;
        if (pending.size() > (1 << 20)) {
          inner = send();
          if (!inner) return false;
        }
        return true;
      }));
      TANDEM_TRY(inner);
    }
    TANDEM_TRY(send());
    TANDEM_CRASH_POINT("move:exported");
    return std::to_string(rows);
  }
  return Status::invalid_argument("unknown partition request '" + method + "'");
}

Result<std::string> ClusterNode::move(uint32_t pid, uint32_t to) {
  partition::PartitionMap current = map_copy();
  auto next = current.with_move(pid, to);
  if (!next) return next.status();
  const auto* p = current.partition(pid);
  uint32_t from = p->owner;
  int64_t t0 = env_.clock().now_us();
  std::string what = "move of partition " + std::to_string(pid) + " (" + p->type + ") from node " + std::to_string(from) +
                     " to node " + std::to_string(to);
  progress(what + ": freezing at node " + std::to_string(from));
  auto abort = [&](const Status& why) -> Status {
    log::warn("move of partition {} aborted: {}", pid, why.to_string());
    // The source must thaw, or the partition's messages wait forever. When it does not answer
    // now (cut off, stopped), the controller task retries after answering the caller
    // (finish_abort), still holding ctl_busy_, so no later move's freeze can be overtaken.
    if (auto r = call_node(from, "unfreeze", ByteWriter().varint(pid).take()); !r) {
      log::warn("move of partition {}: node {} did not take the unfreeze ({}); retrying until it does", pid, from,
                r.status().message());
      unfreeze_pending_ = {pid, from};
    }
    call_node(to, "drop", ByteWriter().varint(pid).take()).status().ignore_error("best effort");
    return Status::unavailable("move aborted, partition " + std::to_string(pid) + " stays on node " + std::to_string(from) +
                               ": " + why.message());
  };
  // Both ends first take the map this move starts from: a node that missed an announcement
  // (a split, say) would otherwise freeze, copy or drop the partition's range as it was.
  std::string current_enc = current.encode();
  for (uint32_t n : {to, from})
    if (auto u = call_node(n, "map-update", current_enc); !u)
      return Status::unavailable("move refused, partition " + std::to_string(pid) + " stays on node " + std::to_string(from) +
                                 ": node " + std::to_string(n) + " is unreachable: " + u.status().message());
  // A stale copy at the target (an earlier move that died before its commit) must not mix in.
  if (auto d = call_node(to, "drop", ByteWriter().varint(pid).take()); !d)
    return Status::unavailable("move refused, partition " + std::to_string(pid) + " stays on node " + std::to_string(from) +
                               ": node " + std::to_string(to) + " is unreachable: " + d.status().message());
  if (auto f = call_node(from, "freeze", ByteWriter().varint(pid).varint(self_.id).take()); !f) return abort(f.status());
  progress(what + ": copying its rows to node " + std::to_string(to));
  auto exported = call_node(from, "export", ByteWriter().varint(pid).varint(to).take());
  if (!exported) return abort(exported.status());
  // The commit point: from here on `to` owns the partition.
  progress(what + ": " + *exported + " rows copied; committing epoch " + std::to_string(next->epoch));
  TANDEM_CRASH_POINT("move:before_commit");
  if (auto c = commit_map(*next); !c) {
    // Not known to be written: leave the partition frozen at the source; the next controller's
    // map-reset thaws or releases it by what the store holds.
    if (c.code() == Code::kUnknownOutcome) return c;
    return abort(c);
  }
  TANDEM_CRASH_POINT("move:committed");
  progress(what + ": committed at epoch " + std::to_string(next->epoch) + "; starting it at node " + std::to_string(to));
  // Each node switches its own map in adopt_map (the controller too, last), so a node that
  // gains or loses the partition starts or stops it as it switches.
  std::string enc = next->encode();
  for (uint32_t n : {to, from}) {
    int64_t give_up_us = env_.clock().now_us() + 15'000'000;
    for (int attempt = 0;; ++attempt) {
      auto r = call_node(n, n == to ? "adopt" : "release", enc);
      if (r) break;
      if (stopping_ || env_.clock().now_us() > give_up_us) {
        log::error("move of partition {}: node {} did not take epoch {}: {}; it will learn it when it asks", pid, n,
                   next->epoch, r.status().to_string());
        break;
      }
      env_.clock().sleep_us(100'000);
    }
  }
  announce(*next, {to, from});
  TANDEM_TRY(adopt_map(*next));  // a no-op when this node was `to` or `from`
  double ms = static_cast<double>(env_.clock().now_us() - t0) / 1000.0;
  std::string out = "moved partition " + std::to_string(pid) + " (" + p->type + ") from node " + std::to_string(from) +
                    " to node " + std::to_string(to) + ": " + *exported + " rows in " + std::to_string(static_cast<int64_t>(ms)) +
                    " ms; epoch " + std::to_string(next->epoch);
  log::info("{}", out);
  return out;
}

Result<std::string> ClusterNode::split(uint32_t pid, const std::string& at_arg) {
  partition::PartitionMap current = map_copy();
  const auto* p = current.partition(pid);
  if (!p) return Status::invalid_argument("no partition " + std::to_string(pid));
  std::string at = at_arg;
  auto* t = current.type(p->type);
  if (at.empty() && t->scheme.kind == partition::TypeScheme::Kind::kRange) {
    auto m = call_node(p->owner, "median", ByteWriter().varint(pid).take());
    if (!m) return m.status();
    at = *m;
  }
  auto next = current.with_split(pid, at);
  if (!next) return next.status();
  TANDEM_CRASH_POINT("split:before_commit");
  TANDEM_TRY(commit_map(*next));
  TANDEM_CRASH_POINT("split:committed");
  TANDEM_TRY(adopt_map(*next));
  TANDEM_CRASH_POINT("split:adopted");
  announce(*next, {});
  auto& half = next->partitions.back();
  std::string out = "split partition " + std::to_string(pid) + " (" + p->type + ") at " +
                    (t->scheme.kind == partition::TypeScheme::Kind::kHash ? "slot " + std::to_string(half.slot_begin)
                                                                          : "key '" + half.key_begin + "'") +
                    ": new partition " + std::to_string(half.id) + " on node " + std::to_string(half.owner) + "; epoch " +
                    std::to_string(next->epoch);
  log::info("{}", out);
  return out;
}

Result<std::string> ClusterNode::merge(uint32_t a, uint32_t b) {
  partition::PartitionMap current = map_copy();
  auto next = current.with_merge(a, b);
  if (!next) return next.status();
  TANDEM_TRY(commit_map(*next));
  TANDEM_TRY(adopt_map(*next));
  announce(*next, {});
  std::string out = "merged partition " + std::to_string(b) + " into " + std::to_string(a) + "; epoch " + std::to_string(next->epoch);
  log::info("{}", out);
  return out;
}

Result<std::string> ClusterNode::run_plan(const std::vector<std::pair<uint32_t, uint32_t>>& plan) {
  std::string out;
  for (auto& [pid, to] : plan) {
    auto r = move(pid, to);
    if (!r) return Status::from_code(r.status().code(), out + "stopped: " + r.status().message());
    out += *r + "\n";
  }
  return out;
}

Result<std::string> ClusterNode::drain(uint32_t node) {
  partition::PartitionMap next;
  {
    std::lock_guard lock(map_mu_);
    if (!map_.node(node)) return Status::invalid_argument("no node " + std::to_string(node));
    if (map_.is_draining(node)) return Status::invalid_argument("node " + std::to_string(node) + " is already draining");
    next = map_;
  }
  if (next.draining.size() + 1 >= next.nodes.size()) return Status::invalid_argument("cannot drain the last node that is not draining");
  std::string left_out;
  auto down = not_answering(left_out);
  if (down.count(node))
    return Status::unavailable("node " + std::to_string(node) + " does not answer: its partitions cannot be copied off it; nothing changed");
  size_t takers = 0;  // nodes that answer and may take its partitions
  for (auto& n : next.nodes) takers += n.id != node && !next.is_draining(n.id) && !down.count(n.id);
  if (takers == 0)
    return Status::unavailable(left_out + "no other node that answers can take the partitions of node " + std::to_string(node) +
                               "; nothing changed");
  next.draining.push_back(node);
  ++next.epoch;
  TANDEM_TRY(commit_map(next));
  TANDEM_TRY(adopt_map(next));
  announce(next, {});
  auto r = run_plan(next.rebalance_plan(down));
  if (!r) return r.status();
  return left_out + *r + "node " + std::to_string(node) + " is drained: it owns no partition and takes none";
}

Result<std::string> ClusterNode::add_node(uint32_t id, const std::string& addrs) {
  // addrs: "<host:port> <admin host:port>"
  auto sp = addrs.find(' ');
  if (sp == std::string::npos) return Status::invalid_argument("add-node needs ADDRESS and ADMIN_ADDRESS");
  auto addr = net::Endpoint::parse(addrs.substr(0, sp));
  auto admin = net::Endpoint::parse(addrs.substr(sp + 1));
  if (!addr) return addr.status();
  if (!admin) return admin.status();
  auto next = map_copy().with_node({id, *addr, *admin, ""});
  if (!next) return next.status();
  // The new node must already serve with the cluster secret: ask it for its status first.
  messaging::SessionOptions o;
  o.secret = secret_;
  o.role = "node";
  o.node_id = self_.id;
  o.expect_node = id;  // and be the node it is added as
  Handoff<Status> reached(env_);
  Session::connect(*net_, *addr, o, {}, [reached](Result<std::shared_ptr<Session>> s) {
    if (s) (*s)->close();
    reached.set(s.status());
  });
  if (auto st = await(reached, 30'000).value_or(Status::unavailable(stopping_ ? "this node is stopping" : "no answer within 30 s")); !st)
    return Status::unavailable("node " + std::to_string(id) + " is not serving at " + addr->to_string() + ": " + st.message());
  TANDEM_TRY(commit_map(*next));
  TANDEM_TRY(adopt_map(*next));
  announce(*next, {});
  std::string out = "added node " + std::to_string(id) + " at " + addr->to_string() + "; it owns no partition yet "
                    "(tandemctl rebalance moves some to it); epoch " + std::to_string(next->epoch);
  log::info("{}", out);
  return out;
}

std::set<uint32_t> ClusterNode::not_answering(std::string& said) {
  // A node that does not answer can give no partition and take none: plans leave it out.
  std::set<uint32_t> down;
  for (auto& n : map_copy().nodes) {
    if (n.id == self_.id) continue;
    if (auto r = call_node(n.id, "status", ""); !r) {
      down.insert(n.id);
      said += "node " + std::to_string(n.id) + " left out (it did not answer: " + r.status().message() + ")\n";
    }
  }
  return down;
}

Result<std::string> ClusterNode::rebalance(bool dry_run) {
  std::string left_out;
  auto down = not_answering(left_out);
  std::vector<std::pair<uint32_t, uint32_t>> plan;
  {
    std::lock_guard lock(map_mu_);
    plan = map_.rebalance_plan(down);
  }
  if (plan.empty()) return left_out + "balanced: nothing to move";
  if (dry_run) {
    std::string out = left_out + "plan (" + std::to_string(plan.size()) + " moves, not executed):\n";
    for (auto& [pid, to] : plan) out += "  move partition " + std::to_string(pid) + " to node " + std::to_string(to) + "\n";
    return out;
  }
  auto done = run_plan(plan);
  if (!done) return done;
  return left_out + *done;
}

bool ClusterNode::owns(const EntityRef& ref) const {
  std::lock_guard lock(map_mu_);
  auto* p = map_.find(ref);
  return !p || p->owner == self_.id;  // a type the map does not know stays here and is parked as unknown
}

std::string ClusterNode::moved_message(const EntityRef& ref) const {
  std::lock_guard lock(map_mu_);
  auto* p = map_.find(ref);
  return "moved: " + ref.to_string() + " is owned by node " + std::to_string(p ? p->owner : 0) + " at epoch " +
         std::to_string(map_.epoch);
}

void ClusterNode::on_request(const std::string& role, const std::string& method, std::string body,
                             messaging::RespondFn respond) {
  if (stopping_) return respond(Status::unavailable("this node is stopping"), {});
  const bool admin = role == "admin";
  if (method == "map") {
    std::lock_guard lock(map_mu_);
    return respond(Status::ok(), map_.encode());
  }
  if (method == "progress") {
    std::lock_guard lock(progress_mu_);
    return respond(Status::ok(), progress_);
  }
  if (method == "controller") {
    if (controller_.load() == 0) return respond(Status::unavailable("no controller elected yet"), {});
    return respond(Status::ok(), std::to_string(controller_.load()));
  }
  if (method == "call") {
    auto c = rpc::Call::decode(body);
    if (!c) return respond(Status::invalid_argument("malformed call"), {});
    if (!owns(c->to)) return respond(Status::unavailable(moved_message(c->to)), {});
    engine_->call(c->to, c->payload_type, std::move(c->payload), c->client_id, c->idempotency_key,
                  [respond](ClientReply r) { respond(r.status, rpc::Reply{r.payload_type, std::move(r.payload)}.encode()); });
    return;
  }
  if (method == "move" || method == "split" || method == "merge" || method == "drain" || method == "rebalance" ||
      method == "add-node") {
    if (!admin) return respond(Status::invalid_argument(method + " needs an admin connection"), {});
    if (self_.id != controller_.load())
      return respond(Status::invalid_argument("node " + std::to_string(self_.id) + " is not the controller (node " +
                                              std::to_string(controller_.load()) + " is)"), {});
    if (ctl_busy_.exchange(true))
      return respond(Status::conflict("another move or split is in progress; nothing changed"), {});
    ctl_exec_->post([this, method, body = std::move(body), respond_to_caller = std::move(respond)] {
      // The command is over before its answer leaves, so a caller may send the next one the
      // moment it has this one's answer. Only a thaw still owed to a source node (finish_abort)
      // keeps the controller busy past the answer; the guard ends it then.
      struct Done {
        ClusterNode& node;
        bool released = false;
        void release() {
          if (released) return;
          released = true;
          node.progress("");
          node.ctl_busy_ = false;
        }
        ~Done() { release(); }
      } done{*this};
      auto respond = [&](const Status& s, std::string reply) {
        if (!unfreeze_pending_) done.release();
        respond_to_caller(s, std::move(reply));
      };
      ByteReader r(body);
      auto pid = r.varint();
      auto arg = r.bytes();
      if (!pid || !arg) return respond(Status::invalid_argument("malformed " + method + " request"), {});
      // Partition and node ids are 32 bits: a larger one names nothing (and must not wrap onto one that exists).
      if (method != "rebalance" && *pid > UINT32_MAX)
        return respond(Status::invalid_argument((method == "add-node" ? "no node id " : "no partition ") + std::to_string(*pid)), {});
      Result<std::string> out = Status::ok();
      auto number = [](const std::string& a, uint64_t& v) {
        auto [ptr, ec] = std::from_chars(a.data(), a.data() + a.size(), v);
        return ec == std::errc() && ptr == a.data() + a.size() && v > 0 && v <= UINT32_MAX;
      };
      uint64_t n = 0;
      if (method == "move") {
        if (!number(*arg, n)) return respond(Status::invalid_argument("target node must be a node id, not '" + *arg + "'"), {});
        out = move(static_cast<uint32_t>(*pid), static_cast<uint32_t>(n));
      } else if (method == "merge") {
        if (!number(*arg, n)) return respond(Status::invalid_argument("a partition id, not '" + *arg + "'"), {});
        out = merge(static_cast<uint32_t>(*pid), static_cast<uint32_t>(n));
      } else if (method == "drain") {
        out = drain(static_cast<uint32_t>(*pid));
      } else if (method == "add-node") {
        out = add_node(static_cast<uint32_t>(*pid), *arg);
      } else if (method == "rebalance") {
        out = rebalance(*pid == 1);
      } else {
        out = split(static_cast<uint32_t>(*pid), *arg);
      }
      if (!out) respond(out.status(), {});
      else respond(Status::ok(), std::move(*out));
      finish_abort();
    });
    return;
  }
  if (method == "ingest" || method == "freeze" || method == "unfreeze" || method == "export" || method == "adopt" ||
      method == "release" || method == "drop" || method == "map-update" || method == "map-reset" || method == "median") {
    if (role != "node") return respond(Status::invalid_argument(method + " is for nodes only"), {});
    // Ingest and drop too, on their own thread (see copy_exec_): each writes with an fsync, which
    // on the network's thread (the engine's too) would hold up every session and transition of
    // this node meanwhile.
    auto& exec = method == "ingest" || method == "drop" ? *copy_exec_ : *part_exec_;
    exec.post([this, method, body = std::move(body), respond = std::move(respond)]() mutable {
      auto r = handle_partition_request(method, std::move(body));
      respond(r.status(), r ? std::move(*r) : std::string());
    });
    return;
  }
  if ((method == "scan" || method == "parked" || method == "inspect" || method == "redrive" || method == "quiescent") &&
      !part_exec_->in_this_thread()) {
    // These scan the store or wait for the engine thread: not on the network thread, which
    // serves every session of this node.
    part_exec_->post([this, role, method, body = std::move(body), respond = std::move(respond)]() mutable {
      on_request(role, method, std::move(body), std::move(respond));
    });
    return;
  }
  if (method == "status") return respond(Status::ok(), status_text());
  if (method == "stages") {  // one line per stage: name, then Histogram::Snapshot::encode()
    std::string out;
    for (auto& [name, h] : engine_->stats().stages) out += name + " " + h.encode() + "\n";
    return respond(Status::ok(), out);
  }
  if (method == "quiescent") return respond(Status::ok(), engine_->quiescent() ? "1" : "0");
  if (method == "timers") return respond(Status::ok(), std::to_string(engine_->stats().timers));
  if (method == "scan") {
    // body: type, begin, end. The committed state rows of that type in [begin, end), answered
    // only if this node owns all of the range, at one map epoch, for the whole read; otherwise
    // `unavailable` (the client cuts the range along a fresh map and asks again).
    ByteReader br(body);
    auto type = br.bytes();
    auto begin = br.bytes();
    auto end = br.bytes();
    if (!type || !begin || !end || !br.done()) return respond(Status::invalid_argument("malformed scan request"), {});
    std::string tp = partition::Placement::type_prefix(*type);
    if (*begin < tp || *end > keys::prefix_successor(tp) || !(*begin < *end))
      return respond(Status::invalid_argument("scan range outside type '" + *type + "'"), {});
    auto owned_epoch = [&]() -> std::optional<uint64_t> {
      std::lock_guard lock(map_mu_);
      if (!partition::subtract_ranges({{*begin, *end}}, owned_ranges(map_)).empty()) return std::nullopt;
      return map_.epoch;
    };
    auto before = owned_epoch();
    if (!before) return respond(Status::unavailable("moved: node " + std::to_string(self_.id) + " does not own all of the range"), {});
    // One page of about opts_.scan_page_bytes (a frame has a limit): the first element is the key
    // to go on from ("" when the range is done), then key, state pairs.
    std::vector<std::string> out{""};
    size_t bytes = 0;
    auto& placement = engine_->placement();
    auto st = engine_->store().scan(partition::Cf::kState, *begin, *end, [&](std::string_view k, std::string_view v) {
      if (bytes >= opts_.scan_page_bytes) {
        out[0] = std::string(k);
        return false;
      }
      EntityRef ref;
      std::string_view rest;
      if (placement.decode_entity(k, ref, rest) && rest == "s") {
        out.push_back(ref.key);
        out.emplace_back(v);
        bytes += ref.key.size() + v.size() + 16;
      }
      return true;
    });
    if (!st) return respond(st, {});
    if (owned_epoch() != before) return respond(Status::unavailable("moved: the map changed during the scan"), {});
    return respond(Status::ok(), rpc::encode_list(out));
  }
  if (method == "parked") {
    auto p = engine_->parked();
    if (!p) return respond(p.status(), {});
    std::vector<std::string> out;
    for (auto& m : *p) {
      out.push_back(m.id);
      out.push_back(m.to.to_string());
      out.push_back(m.from.to_string());
      out.push_back(m.kind);
      out.push_back(m.reason);
    }
    return respond(Status::ok(), rpc::encode_list(out));
  }
  if (method == "redrive") {
    if (!admin) return respond(Status::invalid_argument("redrive needs an admin connection"), {});
    return respond(engine_->redrive(body), {});
  }
  if (method == "inspect") {
    // body: type \0 key. Answers text lines: state, activities, operations, pending outbox rows.
    auto nul = body.find('\0');
    if (nul == std::string::npos) return respond(Status::invalid_argument("inspect needs TYPE and KEY"), {});
    EntityRef ref{body.substr(0, nul), body.substr(nul + 1)};
    if (auto v = validate_ref(ref); !v) return respond(v, {});
    if (!owns(ref)) return respond(Status::unavailable(moved_message(ref)), {});
    std::ostringstream out;
    std::string prefix = engine_->placement().entity_prefix(ref);
    auto state = engine_->store().get(partition::Cf::kState, rows::state(prefix));
    if (!state) return respond(state.status(), {});
    out << "entity " << ref.to_string() << " on node " << self_.id << "\n";
    out << "state " << (state->has_value() ? std::to_string((*state)->size()) + " bytes" : "none") << "\n";
    // Activities (dedup records and operations).
    std::string ap = prefix + 'p';
    auto st = engine_->store().scan(partition::Cf::kActivity, ap, keys::prefix_successor(ap),
                                    [&](std::string_view k, std::string_view v) {
                                      keys::Reader r(k.substr(ap.size()));
                                      auto t = r.bytes();
                                      auto key = r.bytes();
                                      auto tag = r.u8();
                                      if (!t || !key || !tag) return true;
                                      std::string partner = EntityRef{*t, *key}.to_string();
                                      if (*tag == 'd') {
                                        if (auto d = messaging::Dedup::decode(v))
                                          out << "activity " << partner << " applied<=" << d->watermark() << " +"
                                              << d->above_count() << " sent=" << d->last_out_seq() << "\n";
                                      } else if (*tag == 'o') {
                                        auto id = r.u64();
                                        auto op = ProviderOp::decode(v);
                                        if (id && op)
                                          out << "operation " << partner << " #" << *id << " provider "
                                              << op_status_name(op->status) << "\n";
                                      } else if (*tag == 'q') {
                                        auto id = r.u64();
                                        if (id) out << "operation " << partner << " #" << *id << " requester\n";
                                      } else if (*tag == 'r') {
                                        out << "client-reply " << partner << "\n";
                                      }
                                      return true;
                                    });
    if (!st) return respond(st, {});
    st = engine_->store().scan(partition::Cf::kOutbox, prefix, keys::prefix_successor(prefix),
                               [&](std::string_view, std::string_view v) {
                                 if (auto e = messaging::decode_envelope(v))
                                   out << "outbox " << messaging::kind_name(e->kind) << " to " << e->to.to_string()
                                       << " seq " << e->seq << "\n";
                                 return true;
                               });
    if (!st) return respond(st, {});
    return respond(Status::ok(), out.str());
  }
  respond(Status::invalid_argument("unknown request '" + method + "'"), {});
}

std::string ClusterNode::status_text() {
  auto s = engine_->stats();
  size_t owned = 0, total = 0;
  uint64_t epoch;
  {
    std::lock_guard lock(map_mu_);
    epoch = map_.epoch;
    total = map_.partitions.size();
    for (auto& p : map_.partitions) owned += p.owner == self_.id;
  }
  std::ostringstream out;
  out << "node " << self_.id << "\n"
      << "address " << self_.addr.to_string() << "\n"
      << "epoch " << epoch << "\n"
      << "partitions " << owned << "\n"
      << "partitions_total " << total << "\n"
      << "outbox_depth " << s.outbox_depth << "\n"
      << "ready " << s.ready << "\n"
      << "timers " << s.timers << "\n"
      << "applied " << s.applied << "\n"
      << "duplicates " << s.duplicates << "\n"
      << "parked " << s.parked << "\n"
      << "commits " << s.commits << "\n"
      << "uptime_s " << (env_.clock().wall_ms() - started_ms_) / 1000 << "\n"
      << "controller " << controller_.load() << "\n"
      << "meta " << config_.meta << "\n"
      << "busy " << s.busy << "\n"
      << "calls_pending " << s.inflight_calls << "\n";
  return out.str();
}

std::string ClusterNode::metrics_text() {
  auto s = engine_->stats();
  std::ostringstream out;
  auto metric = [&](const char* name, const char* type, const char* help, double v) {
    out << "# HELP " << name << " " << help << "\n# TYPE " << name << " " << type << "\n"
        << name << "{node=\"" << self_.id << "\"} " << v << "\n";
  };
  metric("tandem_messages_applied_total", "counter", "Transitions committed.", static_cast<double>(s.applied));
  metric("tandem_duplicates_dropped_total", "counter", "Deliveries recognised as already applied.",
         static_cast<double>(s.duplicates));
  metric("tandem_parked_total", "counter", "Messages parked since start.", static_cast<double>(s.parked));
  metric("tandem_handler_failures_total", "counter", "Handler failures (retried or parked).",
         static_cast<double>(s.failures));
  metric("tandem_commits_total", "counter", "Group commits.", static_cast<double>(s.commits));
  metric("tandem_commit_latency_ms_avg", "gauge", "Average group commit latency.", s.commit_ms_avg);
  metric("tandem_outbox_depth", "gauge", "Outbox rows not yet acknowledged.", static_cast<double>(s.outbox_depth));
  metric("tandem_relay_retries_total", "counter", "Outbox deliveries retried.", static_cast<double>(s.relay_retries));
  metric("tandem_ready_messages", "gauge", "Messages queued for processing.", static_cast<double>(s.ready));
  metric("tandem_timers_pending", "gauge", "Durable timers pending.", static_cast<double>(s.timers));
  metric("tandem_calls_pending", "gauge", "Client calls waiting for a reply.", static_cast<double>(s.inflight_calls));
  metric("tandem_busy_refusals_total", "counter", "Calls and deliveries refused at a backpressure cap.",
         static_cast<double>(s.busy));
  metric("tandem_connections_refused_total", "counter",
         "Connections closed before they authenticated (wrong secret, malformed handshake, timeout; not port probes that send nothing).",
         static_cast<double>(messaging::Session::closed_before_auth()));
  // One histogram over the stages of a message (NodeStats::stages), in seconds; the buckets are
  // microseconds up to each power of two (2^k - 1).
  out << "# HELP tandem_stage_seconds Where a message's time goes: queue, durable, commit, handoff, relay.\n"
      << "# TYPE tandem_stage_seconds histogram\n";
  for (auto& [name, h] : s.stages) {
    std::string labels = "node=\"" + std::to_string(self_.id) + "\",stage=\"" + name + "\"";
    uint64_t seen = 0;
    for (int b = 0; b < Histogram::kBuckets - 1; ++b) {
      seen += h.counts[static_cast<size_t>(b)];
      if (b % Histogram::kSub == Histogram::kSub - 1)  // every power of two
        out << "tandem_stage_seconds_bucket{" << labels << ",le=\"" << static_cast<double>(Histogram::upper_us(b)) / 1e6
            << "\"} " << seen << "\n";
    }
    out << "tandem_stage_seconds_bucket{" << labels << ",le=\"+Inf\"} " << h.count() << "\n"
        << "tandem_stage_seconds_sum{" << labels << "} " << static_cast<double>(h.sum_us) / 1e6 << "\n"
        << "tandem_stage_seconds_count{" << labels << "} " << h.count() << "\n";
  }
  return out.str();
}

void ClusterNode::serve_metrics(std::shared_ptr<net::Connection> c) {
  // Anyone on the host can open this port: at most kMaxMetricsConnections at once, a request
  // must arrive whole within kMetricsReadMs and its answer be read within kMetricsWriteMs, or
  // the connection is dropped (a client that stops reading must not hold a slot for ever).
  constexpr int kMaxMetricsConnections = 32;
  constexpr int64_t kMetricsReadMs = 5'000;
  constexpr int64_t kMetricsWriteMs = 10'000;
  if (metrics_conns_.fetch_add(1) >= kMaxMetricsConnections) {
    metrics_conns_.fetch_sub(1);
    return c->close();
  }
  auto buf = std::make_shared<std::string>();
  auto answered = std::make_shared<bool>(false);
  std::weak_ptr<net::Connection> weak = c;
  net_->after(kMetricsReadMs, [weak, answered] {
    if (auto conn = weak.lock(); conn && !*answered) conn->abort();
  });
  c->start(
      [this, buf, answered, weak](std::string_view bytes) {
        auto conn = weak.lock();
        if (!conn || *answered) return;
        buf->append(bytes);
        if (buf->size() > 8192) return conn->close();
        if (buf->find("\r\n\r\n") == std::string::npos) return;
        // Request line: METHOD SP TARGET SP VERSION.
        std::string line = buf->substr(0, buf->find("\r\n"));
        auto sp1 = line.find(' '), sp2 = line.rfind(' ');
        std::string method = line.substr(0, sp1);
        std::string target = sp1 == std::string::npos || sp2 <= sp1 ? "" : line.substr(sp1 + 1, sp2 - sp1 - 1);
        std::string path = target.substr(0, target.find('?'));
        std::string body, status = "200 OK", extra;
        if (path != "/metrics") {
          status = "404 Not Found";
          body = "try GET /metrics\n";
        } else if (method != "GET") {
          status = "405 Method Not Allowed";
          extra = "Allow: GET\r\n";
          body = "only GET /metrics\n";
        } else {
          body = metrics_text();
        }
        *answered = true;
        conn->send("HTTP/1.0 " + status + "\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: " +
                   std::to_string(body.size()) + "\r\n" + extra + "Connection: close\r\n\r\n" + body);
        conn->close();
        net_->after(kMetricsWriteMs, [weak] {
          if (auto conn = weak.lock()) conn->abort();
        });
      },
      [this, c](Status) { metrics_conns_.fetch_sub(1); });
}

}  // namespace tandem::entity
