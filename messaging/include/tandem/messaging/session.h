// Session: one authenticated connection between two Tandem processes (node-node, client-node,
// admin-node). Length-prefixed Cap'n Proto frames; many frames per write. Before any other
// frame is handled both sides prove they hold the cluster secret (HMAC-SHA256 challenge /
// response over fresh nonces); a peer that fails gets the connection closed and a log line.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include <tandem/core/net.h>
#include <tandem/messaging/envelope.h>
#include <tandem/messaging/transport.h>

namespace tandem::messaging {

inline constexpr size_t kMaxFrameBytes = 16 << 20;    // after authentication
inline constexpr size_t kMaxHandshakeFrameBytes = 1024;
// The handshake and frame format this build speaks. Both sides say it (the challenge, the Auth)
// and the proofs cover it; a peer of another version is refused with both numbers named, so a
// cluster of mixed builds says so instead of failing as a wrong secret. Builds before the
// field existed read as 0. 2: the challenge names the server's node id.
inline constexpr uint16_t kWireProtocol = 2;

struct SessionOptions {
  std::string secret;
  std::string role = "node";  // what this side is: "node", "client" or "admin"
  uint32_t node_id = 0;  // this side's node id (0: not a cluster node); a server says it in its challenge
  // Client: the node the config names at the address. A server that is another node is refused
  // (a config that is out of date or wrong must not send one node's traffic to another).
  uint32_t expect_node = 0;
  int64_t handshake_timeout_ms = 5'000;
};

using RespondFn = std::function<void(Status, std::string body)>;

struct SessionHandlers {
  // An envelope arrived; call `ack` once its effect is committed (or it is refused).
  std::function<void(Envelope, AckFn ack)> on_deliver;
  // A request arrived; call `respond` exactly once.
  std::function<void(const std::string& method, std::string body, RespondFn respond)> on_request;
  // The session closed (after it was ready).
  std::function<void(Status)> on_close;
};

// Thread-safe. Handlers run on the network thread.
class Session : public std::enable_shared_from_this<Session> {
 public:
  // Client side: connects and authenticates; `done` gets the ready session or the failure
  // (kUnavailable: cannot connect; kInvalidArgument: the server refused our secret or its
  // proof was wrong).
  static void connect(net::Network& net, const net::Endpoint& to, SessionOptions opts, SessionHandlers handlers,
                      std::function<void(Result<std::shared_ptr<Session>>)> done);
  // Server side: authenticates an accepted connection; `ready` runs once it has. A client that
  // fails is disconnected and logged; `ready` is not called.
  static void accept(net::Network& net, std::shared_ptr<net::Connection> conn, SessionOptions opts,
                     std::function<SessionHandlers(const std::shared_ptr<Session>&)> ready);

  void deliver(const Envelope& env, AckFn ack);
  void request(const std::string& method, std::string body, std::function<void(Status, std::string)> done);
  void close();
  bool closed() const { return closed_; }
  // What the peer authenticated as (on a client: the node id the server named).
  const std::string& peer_role() const { return peer_role_; }
  uint32_t peer_node() const { return peer_node_; }
  std::string peer_address() const { return conn_->peer(); }
  size_t queued_bytes() const { return conn_->queued_bytes(); }

  // Splits a byte stream into frames (exposed for tests and fuzzing).
  class FrameReader {
   public:
    explicit FrameReader(size_t max) : max_(max) {}
    void set_max(size_t max) { max_ = max; }
    // Appends bytes; kInvalidArgument when a frame announces more than the limit.
    Status feed(std::string_view bytes);
    // The next complete frame's body, if any.
    std::optional<std::string> next();
    // Bytes received that make no whole frame yet.
    size_t partial() const { return buf_.size() - pos_; }
    // The next frame's 4-byte length prefix as received (fewer bytes if not all have come).
    std::string_view prefix() const { return std::string_view(buf_).substr(pos_, 4); }

   private:
    size_t max_;
    std::string buf_;
    size_t pos_ = 0;
  };
  static std::string frame(std::string_view body);
  // Connections this process accepted and closed before they authenticated (wrong secret,
  // garbage, a timeout), logged or not.
  static uint64_t closed_before_auth();

  Session(net::Network& net, std::shared_ptr<net::Connection> conn, SessionOptions opts, bool client);
  ~Session();

 private:
  enum class Phase { kHandshake, kReady, kClosed };
  void start(std::function<void(Result<std::shared_ptr<Session>>)> client_done,
             std::function<SessionHandlers(const std::shared_ptr<Session>&)> server_ready);
  void on_bytes(std::string_view bytes);
  void on_frame(const std::string& body);
  void fail(Status why);
  // Server, before authentication: tells the peer why (a refused frame), then closes.
  void refuse(const std::string& why);
  void send_frame(std::string body);

  net::Network& net_;
  std::shared_ptr<net::Connection> conn_;
  SessionOptions opts_;
  bool client_;
  Phase phase_ = Phase::kHandshake;
  bool heard_ = false;      // the peer has sent a byte
  bool timed_out_ = false;  // the handshake timer closed it
  FrameReader reader_{kMaxHandshakeFrameBytes};
  std::string my_nonce_, peer_nonce_;
  std::string peer_role_;
  uint32_t peer_node_ = 0;
  SessionHandlers handlers_;
  std::function<void(Result<std::shared_ptr<Session>>)> client_done_;
  std::function<SessionHandlers(const std::shared_ptr<Session>&)> server_ready_;

  std::mutex mu_;
  uint64_t next_id_ = 1;
  std::map<uint64_t, AckFn> acks_;
  std::map<uint64_t, std::function<void(Status, std::string)>> calls_;
  std::atomic<bool> closed_{false};
};

}  // namespace tandem::messaging
