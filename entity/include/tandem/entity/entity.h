// Entity: the scale-agnostic unit of application code. An entity class registers handlers for
// its message types; the runtime runs one message of one entity at a time, each in its own
// atomic transaction. Entity objects hold no per-entity data: state lives behind the Context.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <unordered_map>

#include <tandem/entity/context.h>
#include <tandem/entity/payload.h>

namespace tandem::entity {

// A provider's answer to a tentative operation.
struct Decision {
  bool accepted = false;
  std::string reason;
  static Decision accept() { return {true, {}}; }
  static Decision reject(std::string why) { return {false, std::move(why)}; }
};

struct EscrowResult {
  enum class Outcome : uint8_t {
    kConfirmed,  // every operation accepted, then confirmed
    kCancelled,  // a provider rejected or the deadline passed; every accepted one was cancelled
    kBroken,     // confirmed, but a provider had already expired an operation (deadline + grace
                 // was shorter than the delivery delay): needs compensation by the application
  };
  uint64_t group = 0;
  Outcome outcome = Outcome::kCancelled;
  std::string reason;
};

class Handlers {
 public:
  using Raw = std::function<void(Context&, Payload&)>;
  using RawTry = std::function<Decision(Context&, Payload&)>;

  // Handles M as a request, a reply, a client request or a timer.
  template <class M, class F>
  void on(F fn) {
    messages_[capnp::typeId<M>()] = [fn](Context& c, Payload& p) { fn(c, p.get<M>()); };
  }
  // Provider side of a tentative operation of kind M.
  template <class M, class F>
  void on_try(F fn) {
    tries_[capnp::typeId<M>()] = [fn](Context& c, Payload& p) -> Decision { return fn(c, p.get<M>()); };
  }
  // Runs exactly once per accepted operation that is confirmed; gets the try's payload.
  template <class M, class F>
  void on_confirm(F fn) {
    confirms_[capnp::typeId<M>()] = [fn](Context& c, Payload& p) { fn(c, p.get<M>()); };
  }
  // Runs exactly once per accepted operation that is cancelled or expires.
  template <class M, class F>
  void on_cancel(F fn) {
    cancels_[capnp::typeId<M>()] = [fn](Context& c, Payload& p) { fn(c, p.get<M>()); };
  }
  void on_escrow_done(std::function<void(Context&, const EscrowResult&)> fn) { escrow_done_ = std::move(fn); }

  // Lookups for the runtime; nullptr when no handler is registered.
  const Raw* message(uint64_t type) const { return find(messages_, type); }
  const RawTry* try_handler(uint64_t type) const { return find(tries_, type); }
  const Raw* confirm(uint64_t type) const { return find(confirms_, type); }
  const Raw* cancel(uint64_t type) const { return find(cancels_, type); }
  const std::function<void(Context&, const EscrowResult&)>& escrow_done() const { return escrow_done_; }

 private:
  template <class Map>
  static const typename Map::mapped_type* find(const Map& m, uint64_t type) {
    auto it = m.find(type);
    return it == m.end() ? nullptr : &it->second;
  }
  std::unordered_map<uint64_t, Raw> messages_;
  std::unordered_map<uint64_t, RawTry> tries_;
  std::unordered_map<uint64_t, Raw> confirms_;
  std::unordered_map<uint64_t, Raw> cancels_;
  std::function<void(Context&, const EscrowResult&)> escrow_done_;
};

// Base class of entity types. A subclass declares `static constexpr std::string_view kType`
// and registers its handlers.
class Entity {
 public:
  virtual ~Entity() = default;
  virtual void handlers(Handlers& h) = 0;
};

// How an entity type is placed in the key space: hash over `slots` slots (default) or
// key ranges (keeps keys in order, so partitions can split at any key).
struct Placement {
  enum class Kind : uint8_t { kHash, kRange };
  Kind kind = Kind::kHash;
  uint16_t slots = 256;
};

// The entity types one node hosts. Built in main, explicitly; no self-registration.
class Registry {
 public:
  struct Type {
    std::string name;
    Placement placement;
    Handlers handlers;
  };
  template <class E>
  void add(Placement placement = {}) {
    E e;
    Type t{std::string(E::kType), placement, {}};
    e.handlers(t.handlers);
    types_[t.name] = std::move(t);
  }
  const Type* find(std::string_view name) const {
    auto it = types_.find(std::string(name));
    return it == types_.end() ? nullptr : &it->second;
  }
  const std::unordered_map<std::string, Type>& types() const { return types_; }

 private:
  std::unordered_map<std::string, Type> types_;
};

}  // namespace tandem::entity
