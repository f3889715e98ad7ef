#include <tandem/entity/node.h>

#include <capnp/serialize.h>

#include <tandem/core/key_codec.h>

#include "engine.h"
#include "records.h"
#include "row_keys.h"

namespace tandem::entity {

// ---- Payload ----

struct Payload::Impl {
  kj::Array<capnp::word> words;
  std::unique_ptr<capnp::FlatArrayMessageReader> reader;
};

Payload::Payload(std::string_view bytes) : impl_(std::make_unique<Impl>()) {
  if (bytes.size() % sizeof(capnp::word) != 0 || bytes.empty())
    KJ_FAIL_REQUIRE("payload is not a whole number of 8-byte words", bytes.size());
  impl_->words = kj::heapArray<capnp::word>(bytes.size() / sizeof(capnp::word));
  memcpy(impl_->words.begin(), bytes.data(), bytes.size());
  capnp::ReaderOptions o;
  o.traversalLimitInWords = bytes.size() / sizeof(capnp::word) * 4 + 64;
  o.nestingLimit = 32;
  impl_->reader = std::make_unique<capnp::FlatArrayMessageReader>(impl_->words.asPtr(), o);
}
Payload::~Payload() = default;
Payload::Payload(Payload&&) noexcept = default;
capnp::MessageReader& Payload::reader() { return *impl_->reader; }

std::string to_bytes(capnp::MessageBuilder& mb) {
  auto words = capnp::messageToFlatArray(mb);
  auto bytes = words.asBytes();
  return std::string(reinterpret_cast<const char*>(bytes.begin()), bytes.size());
}

std::string_view op_status_name(OpStatus s) {
  switch (s) {
    case OpStatus::kPending: return "pending";
    case OpStatus::kAccepted: return "accepted";
    case OpStatus::kRejected: return "rejected";
    case OpStatus::kConfirmed: return "confirmed";
    case OpStatus::kCancelled: return "cancelled";
    case OpStatus::kAlreadyCancelled: return "already-cancelled";
    case OpStatus::kAlreadyConfirmed: return "already-confirmed";
  }
  return "?";
}

// ---- Node ----

Node::Node(Env& env, const Registry& registry, NodeOptions opts)
    : env_(env), engine_(std::make_unique<Engine>(env, registry, std::move(opts))) {}
Node::~Node() { stop(); }
Status Node::start() { return engine_->start(); }

// Marks one thread inside a call into the engine. stop() sets closed_ and then waits until no
// entry is left, so an entry that saw the node open keeps the engine alive until it leaves
// (both atomics are sequentially consistent: an entry and stop() cannot both miss the other).
class Node::Entry {
 public:
  explicit Entry(const Node& n) : n_(n) {
    n_.entered_++;
    open_ = !n_.closed_;
  }
  ~Entry() { n_.entered_--; }
  Entry(const Entry&) = delete;
  Entry& operator=(const Entry&) = delete;
  bool open() const { return open_ && n_.engine_->running(); }

 private:
  const Node& n_;
  bool open_ = false;
};

void Node::stop() {
  closed_ = true;
  while (entered_.load() > 0) env_.clock().sleep_us(100);
  engine_->stop();
}

namespace {
Status not_running() { return Status::unavailable("node is not running"); }
}  // namespace

void Node::call(const EntityRef& to, uint64_t payload_type, std::string payload, const std::string& client_id,
                const std::string& idempotency_key, std::function<void(ClientReply)> done) {
  {
    Entry e(*this);
    if (e.open()) return engine_->call(to, payload_type, std::move(payload), client_id, idempotency_key, std::move(done));
  }
  done(ClientReply{not_running(), 0, {}});  // outside the entry: `done` may call this node again
}

NodeStats Node::stats() const { return engine_->stats(); }  // counters only: safe at any time
bool Node::idle() const {
  Entry e(*this);
  return !e.open() || engine_->quiescent();  // a stopped node does nothing more
}

Result<uint64_t> Node::parked_count() {
  auto p = parked();
  if (!p) return p.status();
  return static_cast<uint64_t>(p->size());
}
Result<std::vector<ParkedMessage>> Node::parked() {
  Entry e(*this);
  if (!e.open()) return not_running();
  return engine_->parked();
}
Status Node::redrive(const std::string& id) {
  Entry e(*this);
  if (!e.open()) return not_running();
  return engine_->redrive(id);
}

Status Node::for_each_state(const std::string& type, const std::function<void(const std::string&, Payload&)>& fn) {
  Entry e(*this);
  if (!e.open()) return not_running();
  std::string begin = partition::Placement::type_prefix(type);
  auto& placement = engine_->placement();
  return engine_->store().scan(partition::Cf::kState, begin, keys::prefix_successor(begin),
                               [&](std::string_view k, std::string_view v) {
                                 EntityRef ref;
                                 std::string_view rest;
                                 if (!placement.decode_entity(k, ref, rest) || rest != "s") return true;
                                 Payload p(v);
                                 fn(ref.key, p);
                                 return true;
                               });
}

Result<std::vector<ActivityInfo>> Node::activities(const EntityRef& ref) {
  Entry e(*this);
  if (!e.open()) return not_running();
  std::vector<ActivityInfo> out;
  std::string prefix = engine_->placement().entity_prefix(ref) + 'p';
  Status st = engine_->store().scan(
      partition::Cf::kActivity, prefix, keys::prefix_successor(prefix), [&](std::string_view k, std::string_view v) {
        keys::Reader r(k.substr(prefix.size()));
        auto t = r.bytes();
        auto key = r.bytes();
        auto tag = r.u8();
        if (!t || !key || !tag) return true;
        EntityRef partner{*t, *key};
        if (out.empty() || out.back().partner != partner) {
          ActivityInfo fresh;
          fresh.partner = partner;
          out.push_back(std::move(fresh));
        }
        auto& a = out.back();
        if (*tag == 'd') {
          if (auto d = messaging::Dedup::decode(v)) {
            a.applied_watermark = d->watermark();
            a.applied_above = d->above_count();
            a.last_sent_seq = d->last_out_seq();
          }
        } else if (*tag == 'o' || *tag == 'q') {
          auto id = r.u64();
          if (!id) return true;
          OpStatus status = OpStatus::kPending;
          if (*tag == 'o') {
            if (auto op = ProviderOp::decode(v)) status = op->status;
          }
          a.ops.push_back({*id, *tag == 'o', status});
        }
        return true;
      });
  if (!st) return st;
  return out;
}

}  // namespace tandem::entity
