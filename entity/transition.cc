#include "transition.h"

#include <algorithm>
#include <cstring>

#include <kj/exception.h>

#include <tandem/core/key_codec.h>
#include <tandem/core/sometimes.h>

#include "engine.h"
#include "row_keys.h"

namespace tandem::entity {

using messaging::Envelope;
using messaging::Kind;
using partition::Cf;

namespace {

bool is_cancelled(OpStatus s) { return s == OpStatus::kCancelled || s == OpStatus::kAlreadyCancelled; }

uint64_t request_hash(const Envelope& env) {
  std::string b(reinterpret_cast<const char*>(&env.payload_type), sizeof env.payload_type);
  b += env.payload;
  return keys::stable_hash(b);
}

}  // namespace

Transition::Transition(Engine& engine, const Registry::Type& type, const Envelope& env, int64_t now_ms)
    : engine_(engine), type_(type), env_(env), now_ms_(now_ms),
      prefix_(engine.placement_.entity_prefix(env.to)), txn_(*engine.view_) {}

Transition::~Transition() = default;

std::optional<std::string> Transition::get(Cf cf, const std::string& key) {
  auto r = txn_.get(cf, key);
  if (!r) throw std::runtime_error("store read failed: " + r.status().to_string());
  return std::move(*r);
}

Transition::Result Transition::run() {
  try {
    Result r;
    switch (env_.kind) {
      case Kind::kClientRequest: r = run_client_request(); break;
      case Kind::kInternal: r = run_internal(); break;
      case Kind::kTimer: {
        auto* h = type_.handlers.message(env_.payload_type);
        if (!h) {
          reason_ = "entity type '" + env_.to.type + "' has no handler for timer message type " +
                    std::to_string(env_.payload_type);
          return Result::kPark;
        }
        Payload p(env_.payload);
        (*h)(*this, p);
        r = Result::kApplied;
        break;
      }
      default: r = run_entity_message(); break;
    }
    if (r == Result::kApplied) flush();
    return r;
  } catch (const kj::Exception& e) {
    // Cap'n Proto refused the bytes: retrying cannot help.
    reason_ = std::string("malformed payload: ") + e.getDescription().cStr();
    return Result::kPark;
  } catch (const std::exception& e) {
    reason_ = std::string("handler failed: ") + e.what();
    return Result::kFailed;
  } catch (...) {
    reason_ = "handler failed: unknown exception";
    return Result::kFailed;
  }
}

Transition::Result Transition::run_client_request() {
  std::string base = rows::partner(prefix_, env_.from);
  std::string rk = rows::client_reply(base, env_.idempotency_key);
  uint64_t h = request_hash(env_);
  if (auto row = get(Cf::kActivity, rk)) {
    auto rr = ReplyRow::decode(*row);
    if (rr && rr->expires_ms > now_ms_) {
      if (rr->request_hash != h) {
        reason_ = "idempotency key '" + env_.idempotency_key + "' was already used with a different request";
        client_outputs_.push_back({env_.from.key, env_.idempotency_key,
                                   ClientReply{Status::invalid_argument(reason_), 0, {}}});
        return Result::kRefused;
      }
      if (rr->done) {
        ClientReply reply;
        if (rr->code != 0)
          reply.status = Status::invalid_argument("request refused earlier");
        reply.payload_type = rr->payload_type;
        reply.payload = std::move(rr->payload);
        client_outputs_.push_back({env_.from.key, env_.idempotency_key, std::move(reply)});
      }
      return Result::kDuplicate;  // a pending reply reaches the client when it is produced
    }
  }
  auto* handler = type_.handlers.message(env_.payload_type);
  if (!handler) {
    reason_ = "entity type '" + env_.to.type + "' has no handler for message type " + std::to_string(env_.payload_type);
    client_outputs_.push_back({env_.from.key, env_.idempotency_key,
                               ClientReply{Status::invalid_argument(reason_), 0, {}}});
    return Result::kRefused;
  }
  ReplyRow pending;
  pending.request_hash = h;
  pending.expires_ms = now_ms_ + engine_.opts_.reply_retention_ms;
  txn_.put(Cf::kActivity, rk, pending.encode());
  Payload p(env_.payload);
  (*handler)(*this, p);
  return Result::kApplied;
}

Transition::Result Transition::run_entity_message() {
  auto& d = dedup(env_.from);
  if (d.applied(env_.seq)) return Result::kDuplicate;
  switch (env_.kind) {
    case Kind::kRequest:
    case Kind::kReply: {
      auto* h = type_.handlers.message(env_.payload_type);
      if (!h) {
        reason_ = "entity type '" + env_.to.type + "' has no handler for message type " +
                  std::to_string(env_.payload_type);
        return Result::kPark;
      }
      Payload p(env_.payload);
      (*h)(*this, p);
      break;
    }
    case Kind::kTry: run_try(); break;
    case Kind::kConfirm: run_confirm_or_cancel(true); break;
    case Kind::kCancel: run_confirm_or_cancel(false); break;
    case Kind::kOpResult: run_op_result(); break;
    default:
      reason_ = std::string("unexpected message kind ") + std::string(messaging::kind_name(env_.kind));
      return Result::kPark;
  }
  if (!reason_.empty()) return Result::kPark;
  if (!dedup(env_.from).mark(env_.seq)) {
    reason_ = "dedup window full for partner " + env_.from.to_string();
    return Result::kFailed;
  }
  return Result::kApplied;
}

Transition::Result Transition::run_internal() {
  if (env_.payload_type == kOpExpire)
    run_op_expire();
  else if (env_.payload_type == kEscrowDeadline)
    run_escrow_deadline();
  return reason_.empty() ? Result::kApplied : Result::kPark;
}

// ---- operations: provider side ----

void Transition::run_try() {
  std::string ok = rows::provider_op(rows::partner(prefix_, env_.from), env_.correlation);
  ProviderOp op;
  if (auto row = get(Cf::kActivity, ok)) {
    // Only a cancel that overtook this try leaves a record before it: answer with it.
    auto existing = ProviderOp::decode(*row);
    if (!existing) throw std::runtime_error("corrupt operation record");
    send_env(env_.from, Kind::kOpResult, env_.correlation, env_.payload_type, {},
             static_cast<uint32_t>(is_cancelled(existing->status) ? OpStatus::kAlreadyCancelled : existing->status));
    return;
  }
  op.payload_type = env_.payload_type;
  op.payload = env_.payload;
  op.deadline_ms = env_.deadline_ms;
  if (env_.deadline_ms != 0 && env_.deadline_ms <= now_ms_) {
    op.status = OpStatus::kRejected;  // arrived after the requester's deadline
  } else {
    auto* h = type_.handlers.try_handler(env_.payload_type);
    if (!h) {
      reason_ = "entity type '" + env_.to.type + "' has no on_try handler for message type " +
                std::to_string(env_.payload_type);
      return;
    }
    Payload p(env_.payload);
    Decision d = (*h)(*this, p);
    op.status = d.accepted ? OpStatus::kAccepted : OpStatus::kRejected;
    if (d.accepted) {
      // Never expire before the requester's deadline plus grace.
      int64_t due = (env_.deadline_ms ? env_.deadline_ms : now_ms_) + engine_.opts_.op_grace_ms;
      std::string payload = ByteWriter().bytes(env_.from.type).bytes(env_.from.key).varint(env_.correlation).take();
      op.expiry_timer = schedule_internal(due, Kind::kInternal, kOpExpire, std::move(payload));
    }
  }
  txn_.put(Cf::kActivity, ok, op.encode());
  send_env(env_.from, Kind::kOpResult, env_.correlation, env_.payload_type, {}, static_cast<uint32_t>(op.status));
}

void Transition::run_confirm_or_cancel(bool confirm) {
  std::string ok = rows::provider_op(rows::partner(prefix_, env_.from), env_.correlation);
  auto row = get(Cf::kActivity, ok);
  std::optional<ProviderOp> op;
  if (row) {
    op = ProviderOp::decode(*row);
    if (!op) throw std::runtime_error("corrupt operation record");
  }
  OpStatus answer;
  if (!op || op->status == OpStatus::kRejected) {
    if (!op) {
      // A cancel (or confirm) that overtook its try: remember it so the try is refused.
      ProviderOp tomb;
      tomb.status = OpStatus::kCancelled;
      txn_.put(Cf::kActivity, ok, tomb.encode());
    }
    answer = confirm ? OpStatus::kAlreadyCancelled : OpStatus::kCancelled;
  } else if (op->status == OpStatus::kAccepted) {
    const auto* h = confirm ? type_.handlers.confirm(op->payload_type) : type_.handlers.cancel(op->payload_type);
    if (h) {
      Payload p(op->payload);
      (*h)(*this, p);
    }
    op->status = confirm ? OpStatus::kConfirmed : OpStatus::kCancelled;
    cancel_timer(op->expiry_timer);
    txn_.put(Cf::kActivity, ok, op->encode());
    answer = op->status;
  } else if (op->status == OpStatus::kConfirmed) {
    answer = confirm ? OpStatus::kConfirmed : OpStatus::kAlreadyConfirmed;
  } else {
    answer = confirm ? OpStatus::kAlreadyCancelled : OpStatus::kCancelled;
  }
  send_env(env_.from, Kind::kOpResult, env_.correlation, op ? op->payload_type : env_.payload_type, {},
           static_cast<uint32_t>(answer));
}

void Transition::run_op_expire() {
  ByteReader r(env_.payload);
  auto t = r.bytes();
  auto k = r.bytes();
  auto id = r.varint();
  if (!t || !k || !id) {
    reason_ = "malformed operation-expiry timer";
    return;
  }
  EntityRef requester{std::move(*t), std::move(*k)};
  std::string ok = rows::provider_op(rows::partner(prefix_, requester), *id);
  auto row = get(Cf::kActivity, ok);
  if (!row) return;
  auto op = ProviderOp::decode(*row);
  if (!op || op->status != OpStatus::kAccepted) return;
  if (auto* h = type_.handlers.cancel(op->payload_type)) {
    Payload p(op->payload);
    (*h)(*this, p);
  }
  op->status = OpStatus::kCancelled;
  op->expiry_timer.clear();  // this is the timer firing: the engine deletes its row
  txn_.put(Cf::kActivity, ok, op->encode());
  send_env(requester, Kind::kOpResult, *id, op->payload_type, {}, static_cast<uint32_t>(OpStatus::kCancelled));
}

// ---- operations: requester side (escrow groups) ----

uint64_t Transition::begin_escrow(int64_t deadline_ms) {
  std::string rk = rows::runtime(prefix_);
  uint64_t next = 1;
  if (auto row = get(Cf::kState, rk)) {
    ByteReader r(*row);
    auto v = r.u8();
    auto n = r.varint();
    if (v && n) next = *n + 1;
  }
  txn_.put(Cf::kState, rk, ByteWriter().u8(kRecordV1).varint(next).take());
  EscrowGroup g;
  g.deadline_ms = now_ms_ + deadline_ms;
  g.deadline_timer = schedule_internal(g.deadline_ms, Kind::kInternal, kEscrowDeadline, ByteWriter().varint(next).take());
  groups_[next] = std::move(g);
  return next;
}

EscrowGroup* Transition::group(uint64_t id) {
  auto it = groups_.find(id);
  if (it != groups_.end()) return &it->second;
  auto row = get(Cf::kActivity, rows::group(prefix_, id));
  if (!row) return nullptr;
  auto g = EscrowGroup::decode(*row);
  if (!g) throw std::runtime_error("corrupt escrow group record");
  return &(groups_[id] = std::move(*g));
}

void Transition::try_raw(uint64_t gid, const EntityRef& provider, uint64_t type, std::string payload) {
  auto* g = group(gid);
  if (!g) throw std::invalid_argument("try_op: unknown escrow group " + std::to_string(gid));
  if (g->state != EscrowGroup::State::kOpen) throw std::invalid_argument("try_op: escrow group already decided");
  auto st = validate_ref(provider);
  if (!st) throw std::invalid_argument("try_op: " + st.to_string());
  uint64_t op_id = dedup(provider).last_out_seq() + 1;  // the try's own seq names the operation
  send_env(provider, Kind::kTry, op_id, type, std::move(payload), 0, g->deadline_ms);
  g->ops.push_back({provider, op_id, OpStatus::kPending});
  txn_.put(Cf::kActivity, rows::requester_op(rows::partner(prefix_, provider), op_id), RequesterOp{gid}.encode());
}

void Transition::run_op_result() {
  auto row = get(Cf::kActivity, rows::requester_op(rows::partner(prefix_, env_.from), env_.correlation));
  if (!row) return;  // not an operation of ours: nothing to update
  auto rq = RequesterOp::decode(*row);
  if (!rq) throw std::runtime_error("corrupt requester operation record");
  auto* g = group(rq->group);
  if (!g) return;
  for (auto& op : g->ops)
    if (op.provider == env_.from && op.id == env_.correlation) op.status = static_cast<OpStatus>(env_.status);
  decide_group(rq->group, *g);
}

void Transition::decide_group(uint64_t id, EscrowGroup& g) {
  using S = EscrowGroup::State;
  auto all = [&](auto pred) { return std::all_of(g.ops.begin(), g.ops.end(), pred); };
  auto any = [&](auto pred) { return std::any_of(g.ops.begin(), g.ops.end(), pred); };
  if (g.state == S::kOpen) {
    if (any([](auto& o) { return o.status == OpStatus::kRejected || is_cancelled(o.status); })) {
      cancel_group(id, g, "rejected by a provider");
    } else if (!g.ops.empty() && all([](auto& o) { return o.status == OpStatus::kAccepted; })) {
      g.state = S::kConfirming;
      cancel_timer(g.deadline_timer);
      for (auto& o : g.ops) send_env(o.provider, Kind::kConfirm, o.id, 0, {});
    }
  } else if (g.state == S::kConfirming) {
    if (any([](auto& o) { return is_cancelled(o.status); })) {
      g.state = S::kBroken;
      sometimes(Sometimes::kExpiryRacesConfirm);
      finish_group(id, EscrowResult::Outcome::kBroken, "a provider expired an operation before the confirm");
    } else if (all([](auto& o) { return o.status == OpStatus::kConfirmed; })) {
      g.state = S::kConfirmed;
      finish_group(id, EscrowResult::Outcome::kConfirmed, "");
    }
  }
}

void Transition::cancel_group(uint64_t id, EscrowGroup& g, const std::string& reason) {
  g.state = EscrowGroup::State::kCancelled;
  if (env_.kind != Kind::kInternal) cancel_timer(g.deadline_timer);  // else it is this firing
  g.deadline_timer.clear();
  for (auto& o : g.ops)
    if (o.status != OpStatus::kRejected && !is_cancelled(o.status)) send_env(o.provider, Kind::kCancel, o.id, 0, {});
  finish_group(id, EscrowResult::Outcome::kCancelled, reason);
}

void Transition::finish_group(uint64_t id, EscrowResult::Outcome outcome, const std::string& reason) {
  if (auto& done = type_.handlers.escrow_done()) done(*this, EscrowResult{id, outcome, reason});
}

void Transition::run_escrow_deadline() {
  ByteReader r(env_.payload);
  auto id = r.varint();
  if (!id) {
    reason_ = "malformed escrow-deadline timer";
    return;
  }
  auto* g = group(*id);
  if (g && g->state == EscrowGroup::State::kOpen) cancel_group(*id, *g, "deadline passed");
}

// ---- state, kv, activities ----

std::optional<std::string_view> Transition::raw_state() {
  if (!state_) state_ = get(Cf::kState, rows::state(prefix_));
  if (!*state_) return std::nullopt;
  return std::string_view(**state_);
}

void Transition::put_state(std::string bytes) {
  state_ = std::optional<std::string>(std::move(bytes));
  state_dirty_ = true;
}

void Transition::delete_state() {
  state_ = std::optional<std::string>();
  state_dirty_ = true;
}

std::optional<std::string> Transition::kv_get(std::string_view key) { return get(Cf::kState, rows::kv(prefix_, key)); }
void Transition::kv_put(std::string_view key, std::string_view value) {
  txn_.put(Cf::kState, rows::kv(prefix_, key), std::string(value));
}
void Transition::kv_del(std::string_view key) { txn_.del(Cf::kState, rows::kv(prefix_, key)); }

ActivityInfo Transition::activity(const EntityRef& partner) {
  auto& d = dedup(partner);
  ActivityInfo a;
  a.partner = partner;
  a.applied_watermark = d.watermark();
  a.applied_above = d.above_count();
  a.last_sent_seq = d.last_out_seq();
  return a;
}

capnp::MessageReader& Transition::reader_for(std::optional<std::string_view> bytes) {
  kj::Array<capnp::word> words;
  if (bytes && bytes->size() >= sizeof(capnp::word)) {
    words = kj::heapArray<capnp::word>(bytes->size() / sizeof(capnp::word));
    memcpy(words.begin(), bytes->data(), words.size() * sizeof(capnp::word));
  } else {
    // One segment of one word holding a null root pointer: every field reads as its default.
    static const uint32_t kEmpty[4] = {0, 1, 0, 0};
    words = kj::heapArray<capnp::word>(2);
    memcpy(words.begin(), kEmpty, sizeof kEmpty);
  }
  auto reader = std::make_unique<capnp::FlatArrayMessageReader>(words.asPtr());
  auto& ref = *reader;
  readers_.emplace_back(std::move(words), std::move(reader));
  return ref;
}

messaging::Dedup& Transition::dedup(const EntityRef& partner) {
  std::string key = rows::dedup(rows::partner(prefix_, partner));
  auto it = dedups_.find(key);
  if (it != dedups_.end()) return it->second;
  messaging::Dedup d;
  if (auto row = get(Cf::kActivity, key)) {
    auto r = messaging::Dedup::decode(*row);
    if (!r) throw std::runtime_error("corrupt dedup record: " + r.status().to_string());
    d = std::move(*r);
  }
  return dedups_.emplace(std::move(key), std::move(d)).first->second;
}

// ---- messages ----

void Transition::send_env(const EntityRef& to, Kind kind, uint64_t correlation, uint64_t type, std::string payload,
                          uint32_t status, int64_t deadline_ms) {
  if (payload.size() > messaging::kMaxPayloadBytes)
    throw std::invalid_argument("message payload too large (" + std::to_string(payload.size()) + " bytes)");
  Envelope e;
  e.from = env_.to;
  e.to = to;
  e.seq = dedup(to).next_out_seq();
  e.kind = kind;
  e.correlation = correlation;
  e.payload_type = type;
  e.payload = std::move(payload);
  e.trace_id = env_.trace_id;
  e.sent_at_ms = now_ms_;
  e.status = status;
  e.deadline_ms = deadline_ms;
  outputs_.push_back(std::move(e));
}

void Transition::send_raw(const EntityRef& to, uint64_t type, std::string payload) {
  auto st = validate_ref(to);
  if (!st) throw std::invalid_argument("send: " + st.to_string());
  if (is_client(to)) throw std::invalid_argument("send: clients are answered with reply/reply_to");
  send_env(to, Kind::kRequest, 0, type, std::move(payload));
}

std::string Transition::current_reply_token() {
  if (env_.kind == Kind::kClientRequest)
    return ByteWriter().u8('c').bytes(env_.from.key).bytes(env_.idempotency_key).take();
  if (env_.kind == Kind::kRequest)
    return ByteWriter().u8('e').bytes(env_.from.type).bytes(env_.from.key).varint(env_.seq).take();
  throw std::logic_error("reply: the current message is not a request");
}

std::string Transition::defer_reply() { return current_reply_token(); }

void Transition::reply_raw(const std::string& token, uint64_t type, std::string payload) {
  ByteReader r(token);
  auto tag = r.u8();
  if (tag && *tag == 'c') {
    auto client = r.bytes();
    auto idem = r.bytes();
    if (!client || !idem) throw std::invalid_argument("reply: malformed reply token");
    EntityRef partner{std::string(kClientType), *client};
    std::string rk = rows::client_reply(rows::partner(prefix_, partner), *idem);
    // The request wrote this row when it ran. No row: it was answered and dropped by a
    // compaction after its retention, and nobody waits for a reply any more.
    auto existing = get(Cf::kActivity, rk);
    if (!existing) return;
    ReplyRow row;
    if (auto d = ReplyRow::decode(*existing)) row = std::move(*d);
    if (row.done) return;  // already answered: replies are idempotent
    row.done = true;
    row.payload_type = type;
    row.payload = payload;
    if (row.expires_ms == 0) row.expires_ms = now_ms_ + engine_.opts_.reply_retention_ms;
    txn_.put(Cf::kActivity, rk, row.encode());
    client_outputs_.push_back({*client, *idem, ClientReply{Status::ok(), type, std::move(payload)}});
    return;
  }
  if (tag && *tag == 'e') {
    auto t = r.bytes();
    auto k = r.bytes();
    auto seq = r.varint();
    if (!t || !k || !seq) throw std::invalid_argument("reply: malformed reply token");
    send_env(EntityRef{*t, *k}, Kind::kReply, *seq, type, std::move(payload));
    return;
  }
  throw std::invalid_argument("reply: malformed reply token");
}

void Transition::schedule_raw(int64_t delay_ms, uint64_t type, std::string payload) {
  schedule_internal(now_ms_ + std::max<int64_t>(0, delay_ms), Kind::kTimer, type, std::move(payload));
}

void Transition::cancel_timer(std::string& key) {
  if (key.empty()) return;
  txn_.del(Cf::kTimer, key);
  // The due time is encoded right after the placement prefix.
  keys::Reader r(std::string_view(key).substr(prefix_.size()));
  timers_cancelled_.push_back({static_cast<int64_t>(r.u64().value_or(0)), std::move(key)});
  key.clear();
}

std::string Transition::schedule_internal(int64_t due_ms, Kind kind, uint64_t type, std::string payload) {
  Envelope e;
  e.from = env_.to;
  e.to = env_.to;
  e.kind = kind;
  e.payload_type = type;
  e.payload = std::move(payload);
  e.sent_at_ms = now_ms_;
  std::string key = rows::timer(prefix_, due_ms, ++engine_.timer_ids_);
  txn_.put(Cf::kTimer, key, TimerRow{due_ms, messaging::encode(e)}.encode());
  timers_out_.push_back({due_ms, key});
  return key;
}

void Transition::flush() {
  if (state_dirty_) {
    if (*state_)
      txn_.put(Cf::kState, rows::state(prefix_), std::move(**state_));
    else
      txn_.del(Cf::kState, rows::state(prefix_));
  }
  for (auto& [key, d] : dedups_) txn_.put(Cf::kActivity, key, d.encode());
  for (auto& [id, g] : groups_) txn_.put(Cf::kActivity, rows::group(prefix_, id), g.encode());
}

}  // namespace tandem::entity
