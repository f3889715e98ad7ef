// The network seam: TCP listeners and connections as byte streams. Only core's real
// implementation touches sockets (Asio); messaging frames, authenticates and batches on top.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include <tandem/core/status.h>

namespace tandem {
class Executor;
}

namespace tandem::net {

struct Endpoint {
  std::string host = "127.0.0.1";
  uint16_t port = 0;
  std::string to_string() const { return host + ":" + std::to_string(port); }
  // "host:port"; kInvalidArgument when malformed.
  static Result<Endpoint> parse(std::string_view s);
};

// A byte stream. Thread-safe. Shared ownership (stated reason): in-flight reads and writes on
// the network thread keep the connection alive after its user lets go of it.
class Connection {
 public:
  virtual ~Connection() = default;
  // Starts reading. `on_data` gets every chunk read; `on_close` is called once, when the peer
  // closes, an I/O error occurs or close() is called. Both run on the network thread.
  virtual void start(std::function<void(std::string_view)> on_data, std::function<void(Status)> on_close) = 0;
  // Queues bytes; sends that arrive while a write is in flight are coalesced into one write.
  virtual void send(std::string bytes) = 0;
  // Bytes queued but not yet written (for backpressure).
  virtual size_t queued_bytes() const = 0;
  // Closes once the bytes queued so far are written (a peer that never reads keeps it open).
  virtual void close() = 0;
  // Closes now, dropping bytes not yet written: for a peer that may have stopped reading.
  virtual void abort() { close(); }
  virtual std::string peer() const = 0;
};

class Network {
 public:
  virtual ~Network() = default;
  // Listens on `at` (port 0 picks a free port). Returns the bound port.
  virtual Result<uint16_t> listen(const Endpoint& at, std::function<void(std::shared_ptr<Connection>)> on_accept) = 0;
  // Connects; `done` runs on the network thread with the connection or kUnavailable.
  virtual void connect(const Endpoint& to, std::function<void(Result<std::shared_ptr<Connection>>)> done) = 0;
  // Runs `fn` on the network thread after `delay_ms`.
  virtual void after(int64_t delay_ms, std::function<void()> fn) = 0;
  // Closes listeners and connections; no callback of this network runs after it returns. A
  // network with its own thread joins it. Must not be called on the network thread.
  virtual void stop() = 0;
};

// Asio on one dedicated thread.
std::unique_ptr<Network> make_real_network();
// Asio on `loop`, which must be the real Env's executor (otherwise: a thread of its own, as
// make_real_network). See Env::make_network_on.
std::unique_ptr<Network> make_real_network_on(Executor& loop);

}  // namespace tandem::net
