#include "etcd_meta.h"

#include <charconv>

#include <tandem/core/log.h>

namespace tandem::entity {

namespace {
constexpr int kTickMs = 500;  // renewals per TTL: 6, so one slow answer does not lapse the lease

uint32_t parse_id(const std::string& s) {
  uint32_t v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  return ec == std::errc() && p == s.data() + s.size() ? v : 0;
}
}  // namespace

EtcdMeta::EtcdMeta(Env& env, EtcdAddress addr, uint32_t node_id, const std::atomic<bool>* interrupted)
    : env_(env), client_(std::move(addr), 2000), id_(node_id), interrupted_(interrupted) {}

bool EtcdMeta::interrupted() const { return interrupted_ && interrupted_->load(); }

EtcdMeta::~EtcdMeta() { release(); }

Result<partition::PartitionMap> EtcdMeta::load_or_create(const partition::PartitionMap& initial, int wait_ms) {
  int64_t deadline = env_.clock().now_us() + int64_t{wait_ms} * 1000;
  Status last;
  for (int attempt = 0;; ++attempt) {
    auto got = client_.get(client_.key("map"));
    if (got && !got->has_value()) {
      std::optional<EtcdValue> cur;
      auto created = client_.create(client_.key("map"), initial.encode(), 0, &cur);
      if (created && *created) {
        log::info("node {}: created the partition map in {}: epoch {}, {} partitions", id_, client_.address().to_string(),
                  initial.epoch, initial.partitions.size());
        got = client_.get(client_.key("map"));
      } else if (created) {
        got = std::optional<EtcdValue>(cur);
      } else {
        got = created.status();
      }
    }
    if (got && got->has_value()) {
      auto m = partition::PartitionMap::decode((*got)->value);
      if (!m) return Status::corruption("the partition map in etcd does not decode: " + m.status().message());
      std::lock_guard lock(mu_);
      newest_ = std::make_shared<partition::PartitionMap>(*m);
      newest_rev_ = (*got)->mod_revision;
      return *m;
    }
    last = got ? Status::unavailable("no map") : got.status();
    if (interrupted()) return Status::unavailable("stopped while waiting for etcd");
    if (env_.clock().now_us() > deadline) break;
    if (attempt % 10 == 0) log::info("node {}: waiting for etcd at {}: {}", id_, client_.address().to_string(), last.message());
    env_.clock().sleep_us(200'000);
  }
  return Status::unavailable("etcd at " + client_.address().to_string() + " did not answer: " + last.message());
}

Status EtcdMeta::start(Hooks hooks) {
  hooks_ = std::move(hooks);
  bool ok = false;
  for (int attempt = 0; attempt < 20 && !(ok = renew()) && !interrupted(); ++attempt) {
    env_.clock().sleep_us(250'000);
  }
  if (!ok && interrupted()) return Status::unavailable("stopped while waiting for etcd");
  if (!ok) return Status::unavailable("cannot take a lease from etcd at " + client_.address().to_string());
  campaign();
  keeper_ = env_.make_executor("tandem-etcd-keep");
  watcher_ = env_.make_executor("tandem-etcd-watch");
  // Each loop re-posts itself on the executor it runs on, never through keeper_ / watcher_: stop()
  // nulls those before the executor's destructor waits for a task that may be running.
  watcher_->post([this, &w = *watcher_] { watch_loop(w); });
  keeper_->post_after(std::chrono::milliseconds(kTickMs), [this, &k = *keeper_] { tick(k); });
  return Status::ok();
}

void EtcdMeta::stop() {
  if (stop_.exchange(true)) return;
  keeper_.reset();
  watcher_.reset();
}

void EtcdMeta::release() {
  stop();
  valid_until_us_ = 0;
  // Let the controller role pass on at once rather than when the lease runs out.
  if (int64_t l = lease_.exchange(0)) client_.revoke(l).ignore_error("the lease runs out by itself");
}

bool EtcdMeta::lease_valid() const { return env_.clock().now_us() < valid_until_us_.load(); }

bool EtcdMeta::wait_lease(int limit_ms) const {
  int64_t end = env_.clock().now_us() + int64_t{limit_ms} * 1000;
  while (!lease_valid()) {
    if (stop_ || env_.clock().now_us() > end) return false;
    env_.clock().sleep_us(20'000);
  }
  return true;
}

std::shared_ptr<const partition::PartitionMap> EtcdMeta::newest() const {
  std::lock_guard lock(mu_);
  return newest_;
}

bool EtcdMeta::renew() {
  int64_t t0 = env_.clock().now_us();
  if (int64_t lease = lease_.load()) {
    auto ttl = client_.keepalive(lease);
    if (!ttl) return false;  // etcd unreachable: the validity runs out by itself
    if (*ttl > 0) {
      valid_until_us_ = t0 + *ttl * 1'000'000;
      return true;
    }
    log::warn("node {}: the etcd lease expired (paused or cut off for over {} s): not writing until a new lease is "
              "held and the map is re-read", id_, kLeaseTtlS);
    valid_until_us_ = 0;
    lease_ = 0;
    if (controller_.load() == id_) {
      controller_ = 0;
      if (hooks_.on_controller) hooks_.on_controller(0);
    }
  }
  t0 = env_.clock().now_us();
  auto lease = client_.grant(kLeaseTtlS);
  if (!lease) return false;
  if (auto r = client_.put(client_.key("nodes/" + std::to_string(id_)), "up", *lease); !r) {
    client_.revoke(*lease).ignore_error("it runs out");
    return false;
  }
  // The map may have changed while this node held no lease: read it before writing again.
  auto got = client_.get(client_.key("map"));
  if (!got) {
    client_.revoke(*lease).ignore_error("it runs out");
    return false;
  }
  if (got->has_value()) saw(**got);
  lease_ = *lease;
  valid_until_us_ = t0 + int64_t{kLeaseTtlS} * 1'000'000;
  return true;
}

void EtcdMeta::campaign() {
  int64_t lease = lease_.load();
  if (!lease || !lease_valid()) return;
  std::optional<EtcdValue> cur;
  auto won = client_.create(client_.key("controller"), std::to_string(id_), lease, &cur);
  if (!won) return;
  uint32_t c = *won ? id_ : (cur ? parse_id(cur->value) : 0);
  if (!*won && c == id_ && cur && cur->lease != lease) {
    // The key of an earlier run of this node (killed before it gave the role back): that
    // process is gone, so its lease is revoked now rather than left to run out.
    log::info("node {}: revoking lease {} of an earlier run of this node that held the controller role", id_, cur->lease);
    client_.revoke(cur->lease).ignore_error("it runs out by itself");
    return;  // campaign again at the next tick
  }
  if (*won) log::info("node {}: elected controller (etcd lease {})", id_, lease);
  if (controller_.exchange(c) != c && hooks_.on_controller) hooks_.on_controller(c);
}

void EtcdMeta::poll_map() {
  auto got = client_.get(client_.key("map"));
  if (got && got->has_value()) saw(**got);
}

void EtcdMeta::saw(const EtcdValue& v) {
  auto m = partition::PartitionMap::decode(v.value);
  if (!m) {
    log::error("node {}: the partition map in etcd does not decode: {}", id_, m.status().message());
    return;
  }
  {
    std::lock_guard lock(mu_);
    if (v.mod_revision <= newest_rev_) return;
    newest_rev_ = v.mod_revision;
    if (newest_ && newest_->epoch >= m->epoch) return;
    newest_ = std::make_shared<partition::PartitionMap>(*m);
  }
  if (hooks_.on_map) hooks_.on_map(std::move(*m));
}

void EtcdMeta::tick(Executor& keeper) {
  if (stop_) return;
  renew();
  campaign();
  if (!watching_) poll_map();  // while the watch is down (it replays from its revision when back)
  keeper.post_after(std::chrono::milliseconds(kTickMs), [this, &keeper] { tick(keeper); });
}

void EtcdMeta::watch_loop(Executor& watcher) {
  if (stop_) return;
  int64_t from;
  {
    std::lock_guard lock(mu_);
    from = newest_rev_ + 1;
  }
  watching_ = true;
  auto st = client_.watch(client_.key("map"), from, [this](const EtcdValue& v) { saw(v); return !stop_.load(); },
                          [] { return true; }, stop_);
  watching_ = false;
  if (stop_) return;
  log::debug("node {}: etcd watch ended ({}); watching again", id_, st.to_string());
  watcher.post_after(std::chrono::milliseconds(200), [this, &watcher] { watch_loop(watcher); });
}

Status EtcdMeta::commit(const partition::PartitionMap& next) {
  std::shared_ptr<const partition::PartitionMap> base;
  int64_t rev;
  {
    std::lock_guard lock(mu_);
    base = newest_;
    rev = newest_rev_;
  }
  if (!base || base->epoch + 1 != next.epoch)
    return Status::conflict("the partition map in etcd is at epoch " + std::to_string(base ? base->epoch : 0) +
                            ", this change was made against epoch " + std::to_string(next.epoch - 1) + "; nothing changed");
  if (controller_.load() != id_ || !lease_valid())
    return Status::conflict("node " + std::to_string(id_) + " no longer holds the controller role; nothing changed");
  std::string enc = next.encode();
  auto r = client_.put_if(client_.key("map"), enc, rev, client_.key("controller"), lease_.load());
  if (!r) {
    // The answer was lost: read back what etcd holds to learn whether the write happened.
    for (int attempt = 0; attempt < 10; ++attempt) {
      auto got = client_.get(client_.key("map"));
      if (!got) continue;
      if (got->has_value() && (*got)->value == enc) {
        saw(**got);
        return Status::ok();
      }
      if (got->has_value()) saw(**got);
      return Status::conflict("the map change was not written (" + r.status().message() + "); nothing changed");
    }
    return Status::unknown_outcome("etcd did not answer whether the map at epoch " + std::to_string(next.epoch) +
                                   " was written: " + r.status().message());
  }
  if (!r->has_value()) {
    poll_map();
    auto holder = client_.get(client_.key("controller"));
    std::string who = holder && holder->has_value() ? "node " + (*holder)->value : "nobody";
    return Status::conflict("the partition map in etcd changed or node " + std::to_string(id_) +
                            " lost the controller role meanwhile (" + who + " holds it); nothing changed");
  }
  std::lock_guard lock(mu_);
  if (**r > newest_rev_) {
    newest_rev_ = **r;
    newest_ = std::make_shared<partition::PartitionMap>(next);
  }
  return Status::ok();
}

}  // namespace tandem::entity
