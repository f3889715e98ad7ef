#include "driver.h"

#include <algorithm>
#include <condition_variable>
#include <cstdio>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "entities.h"

namespace reservation {

using tandem::EntityRef;
using tandem::entity::ClientReply;
using tandem::entity::Gateway;
using tandem::entity::Payload;

namespace {

struct Line {
  std::string item;
  uint32_t qty;
};

std::string item_key(uint64_t i) { return "sku-" + std::to_string(i); }
std::string order_key(const DemoOptions& o, uint64_t i) { return o.order_prefix + std::to_string(i); }

std::vector<Line> lines_of(uint64_t order, const DemoOptions& o) {
  tandem::Random r(o.seed * 0x9E3779B97F4A7C15ull + order);
  size_t n = 1 + r.uniform(3);
  std::vector<Line> lines;
  while (lines.size() < n && lines.size() < o.items) {
    std::string item = item_key(r.uniform(o.items));
    if (std::any_of(lines.begin(), lines.end(), [&](auto& l) { return l.item == item; })) continue;
    lines.push_back({item, static_cast<uint32_t>(1 + r.uniform(3))});
  }
  return lines;
}

// Outstanding calls, completed from runtime threads. Shared with every reply callback: a
// retried order can be answered twice, and the second answer (or a setup reply after a timeout)
// may come after run_demo has returned, so the callbacks own it too and do nothing once closed.
struct Tracker {
  std::mutex mu;
  bool closed = false;
  std::condition_variable cv;
  uint64_t outstanding = 0;
  std::map<uint64_t, int64_t> started;  // order -> first send (us)
  std::vector<double> latencies_ms;
  uint64_t confirmed = 0, cancelled = 0, broken = 0, refused = 0, busy = 0;
  std::map<uint64_t, int64_t> busy_at;  // order -> when a node answered busy (placed again later)
  std::string first_error;
};

}  // namespace

DemoResult run_demo(Gateway& node, tandem::Clock& clock, const DemoOptions& o) {
  DemoResult res;
  // 1. Items (idempotent: a rerun after a crash finds them set up).
  {
    struct Setup {
      std::mutex mu;
      std::condition_variable cv;
      uint64_t left = 0;
      std::string err;
    };
    auto su = std::make_shared<Setup>();  // the callbacks own it too: replies may outlive a timeout
    su->left = o.items;
    for (uint64_t i = 0; i < o.items; ++i) {
      node.call<SetupItem>(EntityRef{"item", item_key(i)}, "driver", "setup",
                           [&](SetupItem::Builder b) { b.setStock(o.stock); },
                           [su](ClientReply r) {
                             std::lock_guard lock(su->mu);
                             if (!r.status.is_ok() && su->err.empty()) su->err = r.status.to_string();
                             --su->left;
                             su->cv.notify_all();
                           });
    }
    std::unique_lock lock(su->mu);
    if (!su->cv.wait_for(lock, std::chrono::milliseconds(o.quiesce_timeout_ms), [&] { return su->left == 0; })) {
      res.invariant = "FAILED:item setup timed out";
      return res;
    }
    if (!su->err.empty()) {
      res.invariant = "FAILED:item setup: " + su->err;
      return res;
    }
  }

  // 2. Orders.
  auto tracker = std::make_shared<Tracker>();
  Tracker& t = *tracker;
  auto place = [&](uint64_t i) {
    auto lines = lines_of(i, o);
    node.call<PlaceOrder>(
        EntityRef{"order", order_key(o, i)}, "driver", order_key(o, i),
        [&](PlaceOrder::Builder b) {
          auto l = b.initLines(static_cast<unsigned>(lines.size()));
          for (unsigned k = 0; k < lines.size(); ++k) {
            l[k].setItem(lines[k].item);
            l[k].setQty(lines[k].qty);
          }
          b.setDeadlineMs(o.deadline_ms);
        },
        [tracker, &clock, i](ClientReply r) {
          Tracker& t = *tracker;
          std::lock_guard lock(t.mu);
          if (t.closed) return;  // run_demo has stopped counting (a retry's late second answer)
          auto it = t.started.find(i);
          if (it == t.started.end()) return;  // a retry's second answer
          if (r.status.code() == tandem::Code::kOverloaded) {  // busy: back off, then place it again
            ++t.busy;
            t.busy_at[i] = clock.now_us();
            return;
          }
          t.latencies_ms.push_back(static_cast<double>(clock.now_us() - it->second) / 1000.0);
          t.started.erase(it);
          --t.outstanding;
          if (!r.status.is_ok()) {
            ++t.refused;
            if (t.first_error.empty()) t.first_error = r.status.to_string();
          } else {
            Payload p(r.payload);
            switch (p.get<OrderResult>().getStatus()) {
              case OrderStatus::CONFIRMED: ++t.confirmed; break;
              case OrderStatus::CANCELLED: ++t.cancelled; break;
              default: ++t.broken; break;
            }
          }
          t.cv.notify_all();
        });
  };
  int64_t start_us = clock.now_us();
  int64_t last_progress = start_us;
  uint64_t next = 0, retries = 0;
  std::unique_lock lock(t.mu);
  while (next < o.orders || t.outstanding > 0) {
    while (next < o.orders && t.outstanding < o.concurrency) {
      t.started[next] = clock.now_us();
      ++t.outstanding;
      uint64_t i = next++;
      lock.unlock();
      place(i);
      lock.lock();
    }
    t.cv.wait_for(lock, std::chrono::milliseconds(100));
    int64_t now = clock.now_us();
    // Client retries: same idempotency key, so the order is placed at most once.
    std::vector<uint64_t> late;
    for (auto& [i, s] : t.started)
      if (now - s > o.reply_timeout_ms * 1000 * static_cast<int64_t>(1 + retries / std::max<uint64_t>(1, o.concurrency)))
        late.push_back(i);
    for (auto& [i, at] : t.busy_at)
      if (now - at > 100'000 && std::find(late.begin(), late.end(), i) == late.end()) late.push_back(i);
    for (auto i : late) {
      ++retries;
      t.busy_at.erase(i);
      lock.unlock();
      place(i);
      lock.lock();
    }
    if (o.progress && now - last_progress > 1'000'000) {
      last_progress = now;
      std::fprintf(stderr, "  orders %llu/%llu answered, confirmed=%llu cancelled=%llu in flight=%llu\n",
                   static_cast<unsigned long long>(next - t.outstanding), static_cast<unsigned long long>(o.orders),
                   static_cast<unsigned long long>(t.confirmed), static_cast<unsigned long long>(t.cancelled),
                   static_cast<unsigned long long>(t.outstanding));
    }
    if (now - start_us > (o.quiesce_timeout_ms + 600'000) * 1000) break;
  }
  int64_t end_us = clock.now_us();
  res.retries = retries;
  res.busy = t.busy;
  res.seconds = static_cast<double>(end_us - start_us) / 1e6;
  res.orders_per_s = res.seconds > 0 ? static_cast<double>(o.orders) / res.seconds : 0;
  auto& l = t.latencies_ms;
  std::sort(l.begin(), l.end());
  if (!l.empty()) {
    res.p50_ms = l[l.size() / 2];
    res.p99_ms = l[std::min(l.size() - 1, l.size() * 99 / 100)];
  }
  std::string refused = t.first_error;
  uint64_t refused_n = t.refused, outstanding = t.outstanding;
  uint64_t answered_confirmed = t.confirmed, answered_cancelled = t.cancelled;
  t.closed = true;
  lock.unlock();

  // 3. Quiescence: cancels and confirms still in flight after the last reply.
  int64_t deadline = clock.now_us() + o.quiesce_timeout_ms * 1000;
  auto quiet = [&] {
    auto q = node.quiescent();
    return q.is_ok() && *q;
  };
  bool quiesced = quiet();
  while (!quiesced && clock.now_us() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    quiesced = quiet();
  }
  if (!quiesced) {
    res.invariant = "FAILED:did not quiesce (messages still queued or unacknowledged)";
    return res;
  }
  // The counts printed are this run's answers; the orders the store holds under this run's
  // prefix must say the same (an earlier drive with the same prefix placed the same orders, and
  // a retried order is answered from its stored reply).
  DemoResult stored;
  res.invariant = check_invariant(node, o, &stored);
  res.orders = stored.orders;
  res.broken = stored.broken;
  res.confirmed = answered_confirmed;
  res.cancelled = answered_cancelled;
  if (res.invariant == "ok" && refused_n == 0 && outstanding == 0 &&
      (stored.confirmed != answered_confirmed || stored.cancelled != answered_cancelled))
    res.invariant = "FAILED:the replies said " + std::to_string(answered_confirmed) + " confirmed and " +
                    std::to_string(answered_cancelled) + " cancelled, the store holds " +
                    std::to_string(stored.confirmed) + " and " + std::to_string(stored.cancelled);
  auto timers = node.pending_timers();
  if (res.invariant == "ok" && (!timers || *timers != 0))
    res.invariant = "FAILED:" + (timers ? std::to_string(*timers) : timers.status().to_string()) +
                    " timers still pending after quiescence";
  if (res.invariant == "ok" && outstanding > 0)
    res.invariant = "FAILED:" + std::to_string(outstanding) + " orders never answered";
  if (res.invariant == "ok" && refused_n > 0)
    res.invariant = "FAILED:" + std::to_string(refused_n) + " orders refused, first: " + refused;
  return res;
}

std::string check_invariant(Gateway& node, const DemoOptions& o, DemoResult* counts) {
  struct ItemRow {
    uint64_t initial, stock, reserved, sold;
  };
  std::map<std::string, ItemRow> items;
  std::map<std::string, uint64_t> sold_by_orders;
  std::string problem;
  auto note = [&](std::string p) {
    if (problem.empty()) problem = std::move(p);
  };
  auto s = node.for_each_state("item", [&](const std::string& key, Payload& p) {
    auto r = p.get<ItemState>();
    items[key] = {r.getInitial(), r.getStock(), r.getReserved(), r.getSold()};
  });
  if (!s) return "FAILED:reading items: " + s.to_string();
  // Every order counts for the items' totals; this run's (by prefix) for the order counts.
  uint64_t orders = 0, confirmed = 0, cancelled = 0, broken = 0;
  s = node.for_each_state("order", [&](const std::string& key, Payload& p) {
    auto r = p.get<OrderState>();
    bool mine = key.rfind(o.order_prefix, 0) == 0;
    if (r.getStatus() == OrderStatus::CONFIRMED)
      for (auto line : r.getLines()) sold_by_orders[line.getItem().cStr()] += line.getQty();
    if (!mine) return;
    ++orders;
    switch (r.getStatus()) {
      case OrderStatus::CONFIRMED: ++confirmed; break;
      case OrderStatus::CANCELLED: ++cancelled; break;
      case OrderStatus::BROKEN: ++broken; note("order " + key + " is broken (confirmed after a provider expiry)"); break;
      default: note("order " + key + " is not terminal"); break;
    }
  });
  if (!s) return "FAILED:reading orders: " + s.to_string();
  if (counts) {
    counts->orders = orders;
    counts->confirmed = confirmed;
    counts->cancelled = cancelled;
    counts->broken = broken;
  }
  if (items.size() != o.items) note("expected " + std::to_string(o.items) + " items, found " + std::to_string(items.size()));
  if (orders != o.orders)
    note("expected " + std::to_string(o.orders) + " orders named '" + o.order_prefix + "N', found " +
         std::to_string(orders) +
         (orders > o.orders ? " (an earlier drive on this cluster placed more; a new run needs its own --order-prefix)" : ""));
  for (auto& [key, it] : items) {
    if (it.stock + it.reserved + it.sold != it.initial)
      note("item " + key + ": stock+reserved+sold=" + std::to_string(it.stock + it.reserved + it.sold) +
           " != initial " + std::to_string(it.initial));
    if (it.reserved != 0) note("item " + key + ": " + std::to_string(it.reserved) + " still reserved");
    if (it.sold != sold_by_orders[key])
      note("item " + key + ": sold " + std::to_string(it.sold) + " but confirmed orders hold " +
           std::to_string(sold_by_orders[key]));
  }
  auto parked = node.parked_count();
  if (!parked) note("reading parked messages: " + parked.status().to_string());
  else if (*parked != 0) note(std::to_string(*parked) + " parked messages (tandemctl parked lists them)");
  return problem.empty() ? "ok" : "FAILED:" + problem;
}

}  // namespace reservation
