#include <tandem/entity/client.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <sstream>

#include <tandem/core/bytes.h>
#include <tandem/core/env.h>
#include <tandem/core/key_codec.h>
#include <tandem/core/log.h>
#include <tandem/core/net.h>
#include <tandem/messaging/session.h>
#include <tandem/partition/partition_map.h>

#include "rpc.h"

namespace tandem::entity {

using messaging::Session;

struct Client::Impl {
  Options opts;
  partition::ClusterConfig config;
  std::string secret;
  std::unique_ptr<Env> own_env;
  Env* env = nullptr;
  std::unique_ptr<net::Network> net;
  mutable std::mutex mu;
  partition::PartitionMap map;
  struct Peer {
    std::shared_ptr<Session> session;
    bool connecting = false;
    std::vector<std::function<void(Result<std::shared_ptr<Session>>)>> waiting;
  };
  std::map<uint32_t, Peer> peers;

  ~Impl() {
    {
      std::lock_guard lock(mu);
      for (auto& [id, p] : peers)
        if (p.session) p.session->close();
    }
    net->stop();
  }

  std::optional<net::Endpoint> node_addr(uint32_t id) const {
    std::lock_guard lock(mu);
    if (auto* n = partition::find_node(map, config, id)) return n->addr;
    return std::nullopt;
  }

  // Runs `fn` with a ready session to `id`, connecting if needed.
  void with_session(uint32_t id, std::function<void(Result<std::shared_ptr<Session>>)> fn) {
    std::shared_ptr<Session> s;
    auto known = node_addr(id);
    net::Endpoint addr;
    {
      std::lock_guard lock(mu);
      auto& p = peers[id];
      if (p.session && !p.session->closed()) {
        s = p.session;
      } else {
        p.waiting.push_back(std::move(fn));
        if (p.connecting) return;
        p.connecting = true;
        if (!known) {
          auto waiting = std::move(p.waiting);
          p.connecting = false;
          for (auto& w : waiting) w(Status::invalid_argument("unknown node id " + std::to_string(id)));
          return;
        }
        addr = *known;
      }
    }
    if (s) return fn(s);
    messaging::SessionOptions o;
    o.secret = secret;
    o.role = opts.role;
    o.expect_node = id;
    Session::connect(*net, addr, o, {}, [this, id](Result<std::shared_ptr<Session>> r) {
      std::vector<std::function<void(Result<std::shared_ptr<Session>>)>> waiting;
      {
        std::lock_guard lock(mu);
        auto& p = peers[id];
        p.connecting = false;
        if (r) p.session = *r;
        waiting.swap(p.waiting);
      }
      for (auto& w : waiting) w(r);
    });
  }

  Result<std::string> request(uint32_t id, const std::string& method, std::string body, int64_t timeout_ms = 10'000) {
    Handoff<Result<std::string>> p(*env);
    with_session(id, [p, method, body = std::move(body)](Result<std::shared_ptr<Session>> s) mutable {
      if (!s) return p.set(s.status());
      (*s)->request(method, std::move(body), [p](Status st, std::string b) {
        if (!st) return p.set(st);
        p.set(std::move(b));
      });
    });
    if (auto r = p.wait_us(timeout_ms * 1000)) return std::move(*r);
    return Status::unavailable("node " + std::to_string(id) + " did not answer within " +
                               std::to_string(timeout_ms / 1000) + " s");
  }

  // request() retried while the node is unreachable (it may be restarting), up to 60 s.
  Result<std::string> request_retrying(uint32_t id, const std::string& method, const std::string& body) {
    int64_t deadline = env->clock().now_us() + 60'000'000;
    while (true) {
      auto r = request(id, method, body);
      if (r || r.status().code() != Code::kUnavailable || env->clock().now_us() > deadline) return r;
      env->clock().sleep_us(100'000);
    }
  }

  void refresh_map() {
    for (auto& n : config.nodes) {
      auto r = request(n.id, "map", "");
      if (!r) continue;
      auto m = partition::PartitionMap::decode(*r);
      if (!m) continue;
      std::lock_guard lock(mu);
      if (m->epoch >= map.epoch) map = std::move(*m);
      return;
    }
  }

  // Asks one node (round-robin) for the map without blocking; at most one request in flight.
  void refresh_map_async() {
    if (refreshing.exchange(true)) return;
    uint32_t id = config.nodes[next_refresh++ % config.nodes.size()].id;
    with_session(id, [this](Result<std::shared_ptr<Session>> s) {
      if (!s) {
        refreshing = false;
        return;
      }
      (*s)->request("map", "", [this](Status st, std::string body) {
        if (st) {
          auto m = partition::PartitionMap::decode(body);
          std::lock_guard lock(mu);
          if (m && m->epoch > map.epoch) map = std::move(*m);
        }
        refreshing = false;
      });
    });
  }
  std::atomic<bool> refreshing{false};
  std::atomic<uint64_t> next_refresh{0};

  struct CallState {
    rpc::Call call;
    std::function<void(ClientReply)> done;
    int attempt = 0;
    int64_t deadline_us = 0;
  };

  void attempt(std::shared_ptr<CallState> st) {
    uint32_t owner = 0;
    {
      std::lock_guard lock(mu);
      auto* p = map.find(st->call.to);
      if (!p)
        return st->done(ClientReply{Status::invalid_argument("unknown entity type '" + st->call.to.type + "'"), 0, {}});
      owner = p->owner;
    }
    with_session(owner, [this, st](Result<std::shared_ptr<Session>> s) {
      if (!s) return retry(st, s.status());
      (*s)->request("call", st->call.encode(), [this, st](Status status, std::string body) {
        if (status.code() == Code::kUnavailable) {
          if (status.message().rfind("moved", 0) == 0) refresh_map_async();
          return retry(st, status);
        }
        ClientReply r{status, 0, {}};
        if (status) {
          auto reply = rpc::Reply::decode(body);
          if (!reply) {
            r.status = Status::corruption("malformed reply");
          } else {
            r.payload_type = reply->payload_type;
            r.payload = std::move(reply->payload);
          }
        }
        st->done(std::move(r));
      });
    });
  }

  void retry(std::shared_ptr<CallState> st, const Status& why) {
    if (env->clock().now_us() > st->deadline_us) return st->done(ClientReply{why, 0, {}});
    int64_t backoff = std::min<int64_t>(20 << std::min(st->attempt, 5), 500);
    ++st->attempt;
    net->after(backoff, [this, st] { attempt(st); });
  }
};

Client::Client(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Client::~Client() = default;

Result<std::unique_ptr<Client>> Client::connect(const Options& opts) {
  auto impl = std::make_unique<Impl>();
  impl->opts = opts;
  if (!opts.env) impl->own_env = make_real_env();
  impl->env = opts.env ? opts.env : impl->own_env.get();
  impl->net = impl->env->make_network();
  auto config = partition::ClusterConfig::load(opts.config_path);
  if (!config) return config.status();
  impl->config = std::move(*config);
  auto secret = impl->config.read_secret();
  if (!secret) return secret.status();
  impl->secret = *secret;
  // Nodes may still be starting (or busy): go round them until one serves the map, for up to
  // connect_timeout_ms. A wrong secret is final at once.
  Status last = Status::unavailable("no node listed");
  int64_t deadline = impl->env->clock().now_us() + opts.connect_timeout_ms * 1000;
  do {
    for (auto& n : impl->config.nodes) {
      auto r = impl->request(n.id, "map", "", 5'000);
      if (!r) {
        if (r.status().code() == Code::kInvalidArgument) return r.status();
        last = Status::unavailable("node " + std::to_string(n.id) + " at " + n.addr.to_string() + ": " + r.status().message());
        continue;
      }
      auto m = partition::PartitionMap::decode(*r);
      if (!m) return m.status();
      impl->map = std::move(*m);
      return std::unique_ptr<Client>(new Client(std::move(impl)));
    }
    impl->env->clock().sleep_us(200'000);
  } while (impl->env->clock().now_us() < deadline);
  return last;
}

void Client::call(const EntityRef& to, uint64_t payload_type, std::string payload, const std::string& client_id,
                  const std::string& idempotency_key, std::function<void(ClientReply)> done) {
  if (auto s = validate_ref(to); !s) return done(ClientReply{s, 0, {}});
  auto st = std::make_shared<Impl::CallState>();
  st->call = rpc::Call{to, payload_type, std::move(payload), client_id, idempotency_key};
  st->done = std::move(done);
  st->deadline_us = impl_->env->clock().now_us() + impl_->opts.call_deadline_ms * 1000;
  impl_->attempt(std::move(st));
}

Status Client::for_each_state(const std::string& type, const std::function<void(const std::string&, Payload&)>& fn) {
  // Piece by piece: each partition's key range is asked of its owner, which answers only if it
  // owns all of it for the whole of its read. A piece whose owner answers otherwise (a move or
  // a split under way, the node restarting) is cut along a fresh map and asked again, so every
  // entity is read once, from the node that owned it while its piece was read, even while the
  // map keeps changing.
  auto pieces_of = [&](const partition::KeyRange& within) {
    std::deque<std::pair<partition::KeyRange, uint32_t>> out;
    std::lock_guard lock(impl_->mu);
    auto& m = impl_->map;
    for (auto& p : m.partitions) {
      if (p.type != type) continue;
      auto r = m.key_range(p);
      partition::KeyRange piece{std::max(r.first, within.first), std::min(r.second, within.second)};
      if (piece.first < piece.second) out.emplace_back(std::move(piece), p.owner);
    }
    return out;
  };
  {
    std::lock_guard lock(impl_->mu);
    if (!impl_->map.type(type)) return Status::invalid_argument("unknown entity type '" + type + "'");
  }
  std::string tp = partition::Placement::type_prefix(type);
  auto todo = pieces_of({tp, keys::prefix_successor(tp)});
  int64_t deadline = impl_->env->clock().now_us() + 120'000'000;
  while (!todo.empty()) {
    auto [range, owner] = std::move(todo.front());
    todo.pop_front();
    auto r = impl_->request(owner, "scan", ByteWriter().bytes(type).bytes(range.first).bytes(range.second).take());
    if (!r) {
      if (r.status().code() != Code::kUnavailable || impl_->env->clock().now_us() > deadline) return r.status();
      impl_->env->clock().sleep_us(50'000);
      impl_->refresh_map();
      auto again = pieces_of(range);
      todo.insert(todo.begin(), again.begin(), again.end());
      continue;
    }
    // A page: where to go on from ("" when the piece is done), then key, state pairs.
    auto l = rpc::decode_list(*r);
    if (!l || l->empty() || l->size() % 2 == 0) return Status::corruption("malformed scan answer from node " + std::to_string(owner));
    for (size_t i = 1; i + 1 < l->size(); i += 2) {
      Payload p((*l)[i + 1]);
      fn((*l)[i], p);
    }
    const std::string& next = (*l)[0];
    if (!next.empty()) {
      if (next <= range.first || next >= range.second)
        return Status::corruption("scan answer from node " + std::to_string(owner) + " goes on outside its range");
      todo.emplace_front(partition::KeyRange{next, range.second}, owner);
    }
  }
  return Status::ok();
}

void Client::request_async(uint32_t node, const std::string& method, std::string body,
                           std::function<void(Result<std::string>)> done) {
  impl_->with_session(node, [method, body = std::move(body), done = std::move(done)](Result<std::shared_ptr<Session>> s) mutable {
    if (!s) return done(s.status());
    (*s)->request(method, std::move(body), [done](Status st, std::string b) {
      if (!st) return done(st);
      done(std::move(b));
    });
  });
}

Result<bool> Client::quiescent() {
  for (auto id : node_ids()) {
    auto r = impl_->request_retrying(id, "quiescent", "");
    if (!r) return r.status();
    if (*r != "1") return false;
  }
  return true;
}

Result<uint64_t> Client::parked_count() {
  uint64_t n = 0;
  for (auto id : node_ids()) {
    auto r = impl_->request_retrying(id, "parked", "");
    if (!r) return r.status();
    auto l = rpc::decode_list(*r);
    if (!l) return Status::corruption("malformed parked list");
    n += l->size() / 5;
  }
  return n;
}

Result<uint64_t> Client::pending_timers() {
  uint64_t n = 0;
  for (auto id : node_ids()) {
    auto r = impl_->request_retrying(id, "timers", "");
    if (!r) return r.status();
    n += std::stoull(*r);
  }
  return n;
}

size_t Client::nodes() const { return node_ids().size(); }

Result<std::string> Client::request(uint32_t node, const std::string& method, std::string body, int64_t timeout_ms) {
  return impl_->request(node, method, std::move(body), timeout_ms);
}

Result<std::vector<std::pair<std::string, Histogram::Snapshot>>> Client::stages(uint32_t node) {
  auto r = impl_->request(node, "stages", "");
  if (!r) return r.status();
  // One line per stage: its name, then Histogram::Snapshot::encode().
  std::vector<std::pair<std::string, Histogram::Snapshot>> out;
  std::istringstream in(*r);
  std::string name, rest;
  while (in >> name && std::getline(in, rest)) {
    Histogram::Snapshot h;
    if (!Histogram::Snapshot::decode(rest, &h)) return Status::corruption("malformed stages answer from node " + std::to_string(node));
    out.emplace_back(std::move(name), h);
  }
  return out;
}

void Client::refresh() { impl_->refresh_map(); }

Client::MapSummary Client::map_summary() const {
  std::lock_guard lock(impl_->mu);
  return MapSummary{impl_->map.epoch, impl_->map.moves, impl_->map.splits, impl_->map.partitions.size()};
}

Result<uint32_t> Client::controller() {
  auto ids = node_ids();
  std::sort(ids.begin(), ids.end());
  Status why = Status::unavailable("no node listed");
  for (int attempt = 0; attempt < 40; ++attempt) {
    for (auto id : ids) {
      auto r = request(id, "controller", "", 2000);
      if (!r) {
        why = r.status();
        continue;
      }
      uint32_t ctl = static_cast<uint32_t>(std::strtoul(r->c_str(), nullptr, 10));
      auto confirm = ctl == id ? r : request(ctl, "controller", "", 2000);
      if (confirm && *confirm == std::to_string(ctl)) return ctl;
      why = confirm ? Status::unavailable("node " + std::to_string(ctl) + " does not hold the controller role")
                    : confirm.status();
      break;
    }
    impl_->env->clock().sleep_us(250'000);
  }
  return why;
}

std::vector<uint32_t> Client::node_ids() const {
  std::lock_guard lock(impl_->mu);
  std::vector<uint32_t> ids;
  for (auto& n : impl_->map.nodes) ids.push_back(n.id);
  return ids;
}

uint32_t Client::owner_of(const EntityRef& ref) const {
  std::lock_guard lock(impl_->mu);
  auto* p = impl_->map.find(ref);
  return p ? p->owner : 0;
}

std::string Client::durability() const { return impl_->config.durability; }

std::string Client::map_bytes() const {
  std::lock_guard lock(impl_->mu);
  return impl_->map.encode();
}

}  // namespace tandem::entity
