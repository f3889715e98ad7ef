// Gateway: how an external client reaches entities: an in-process Node, or a Client connected
// to a cluster over the network. The demo driver and tools are written against this interface.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include <tandem/core/ids.h>
#include <tandem/core/status.h>
#include <tandem/entity/payload.h>

namespace tandem::entity {

struct ClientReply {
  Status status;  // not ok: the request was refused (bad input, parked, unreachable, ...)
  uint64_t payload_type = 0;
  std::string payload;
};

class Gateway {
 public:
  virtual ~Gateway() = default;

  // Sends a client request. `done` runs once, on a runtime thread, with the reply (possibly a
  // stored reply when `idempotency_key` was used before with the same payload).
  virtual void call(const EntityRef& to, uint64_t payload_type, std::string payload, const std::string& client_id,
                    const std::string& idempotency_key, std::function<void(ClientReply)> done) = 0;
  template <class M, class F>
  void call(const EntityRef& to, const std::string& client_id, const std::string& idempotency_key, F&& fill,
            std::function<void(ClientReply)> done) {
    call(to, capnp::typeId<M>(), build<M>(std::forward<F>(fill)), client_id, idempotency_key, std::move(done));
  }

  // Calls fn for every stored state of `type` (committed data).
  virtual Status for_each_state(const std::string& type,
                                const std::function<void(const std::string& key, Payload&)>& fn) = 0;
  // True when nothing is queued, committing or waiting for an ack, anywhere behind the gateway.
  virtual Result<bool> quiescent() = 0;
  virtual Result<uint64_t> parked_count() = 0;
  virtual Result<uint64_t> pending_timers() = 0;
  // How many processes serve behind this gateway (for reports).
  virtual size_t nodes() const = 0;
};

}  // namespace tandem::entity
