#include <tandem/messaging/session.h>

#include <capnp/message.h>
#include <capnp/serialize.h>
#include <kj/exception.h>

#include <atomic>

#include <tandem/core/crypto.h>
#include <tandem/core/log.h>

#include "schema/envelope.capnp.h"

namespace tandem::messaging {

namespace {

constexpr size_t kNonceBytes = 32;
// First segment of a frame's builder, in words. Cap'n Proto's default (1024 words) is a zeroed
// 8 KiB allocation per frame; control frames fit in a few dozen words.
constexpr unsigned kFrameWords = 32;
// The same for a frame carrying `body`.
unsigned frame_words(const std::string& body) { return kFrameWords + body.size() / sizeof(capnp::word); }

std::string to_bytes(capnp::MessageBuilder& mb) {
  auto words = capnp::messageToFlatArray(mb);
  auto bytes = words.asBytes();
  return std::string(reinterpret_cast<const char*>(bytes.begin()), bytes.size());
}

capnp::Data::Reader as_data(std::string_view s) {
  return capnp::Data::Reader(reinterpret_cast<const kj::byte*>(s.data()), s.size());
}

std::string str(capnp::Data::Reader d) { return std::string(reinterpret_cast<const char*>(d.begin()), d.size()); }

const std::string kProofTag = "tandem/" + std::to_string(kWireProtocol);

std::string client_proof(const std::string& secret, const std::string& server_nonce, const std::string& client_nonce,
                         const std::string& role, uint32_t node) {
  return crypto::hmac_sha256(secret, kProofTag + " client|" + server_nonce + "|" + client_nonce + "|" + role + "|" +
                                         std::to_string(node));
}

std::atomic<uint64_t> g_closed_before_auth{0};

std::string server_proof(const std::string& secret, const std::string& server_nonce, const std::string& client_nonce,
                         uint32_t node) {
  return crypto::hmac_sha256(secret, kProofTag + " server|" + client_nonce + "|" + server_nonce + "|" + std::to_string(node));
}

}  // namespace

// ---- framing ----

std::string Session::frame(std::string_view body) {
  std::string out;
  out.reserve(body.size() + 4);
  uint32_t n = static_cast<uint32_t>(body.size());
  for (int shift = 24; shift >= 0; shift -= 8) out.push_back(static_cast<char>((n >> shift) & 0xFF));
  out.append(body);
  return out;
}

Status Session::FrameReader::feed(std::string_view bytes) {
  if (pos_ > 0 && pos_ == buf_.size()) {
    buf_.clear();
    pos_ = 0;
  }
  buf_.append(bytes);
  if (buf_.size() - pos_ >= 4) {
    uint32_t n = 0;
    for (int i = 0; i < 4; ++i) n = (n << 8) | static_cast<uint8_t>(buf_[pos_ + i]);
    if (n > max_) return Status::invalid_argument("frame of " + std::to_string(n) + " bytes exceeds the limit of " +
                                                  std::to_string(max_));
  }
  return Status::ok();
}

std::optional<std::string> Session::FrameReader::next() {
  if (buf_.size() - pos_ < 4) return std::nullopt;
  uint32_t n = 0;
  for (int i = 0; i < 4; ++i) n = (n << 8) | static_cast<uint8_t>(buf_[pos_ + i]);
  if (n > max_ || buf_.size() - pos_ - 4 < n) return std::nullopt;
  std::string body = buf_.substr(pos_ + 4, n);
  pos_ += 4 + n;
  if (pos_ > (1 << 20)) {  // compact now and then
    buf_.erase(0, pos_);
    pos_ = 0;
  }
  return body;
}

// ---- session ----

uint64_t Session::closed_before_auth() { return g_closed_before_auth.load(std::memory_order_relaxed); }

Session::Session(net::Network& net, std::shared_ptr<net::Connection> conn, SessionOptions opts, bool client)
    : net_(net), conn_(std::move(conn)), opts_(std::move(opts)), client_(client) {}

Session::~Session() = default;

void Session::connect(net::Network& net, const net::Endpoint& to, SessionOptions opts, SessionHandlers handlers,
                      std::function<void(Result<std::shared_ptr<Session>>)> done) {
  net.connect(to, [&net, opts = std::move(opts), handlers = std::move(handlers), done = std::move(done)](
                      Result<std::shared_ptr<net::Connection>> c) mutable {
    if (!c) return done(c.status());
    auto s = std::make_shared<Session>(net, std::move(*c), std::move(opts), true);
    s->handlers_ = std::move(handlers);
    s->start(std::move(done), nullptr);
  });
}

void Session::accept(net::Network& net, std::shared_ptr<net::Connection> conn, SessionOptions opts,
                     std::function<SessionHandlers(const std::shared_ptr<Session>&)> ready) {
  auto s = std::make_shared<Session>(net, std::move(conn), std::move(opts), false);
  s->start(nullptr, std::move(ready));
}

void Session::start(std::function<void(Result<std::shared_ptr<Session>>)> client_done,
                    std::function<SessionHandlers(const std::shared_ptr<Session>&)> server_ready) {
  client_done_ = std::move(client_done);
  server_ready_ = std::move(server_ready);
  auto self = shared_from_this();
  conn_->start([self](std::string_view b) { self->on_bytes(b); }, [self](Status s) { self->fail(std::move(s)); });
  if (!client_) {
    my_nonce_ = crypto::random_bytes(kNonceBytes);
    capnp::MallocMessageBuilder mb(kFrameWords);
    auto f = mb.initRoot<schema::Frame>();
    f.setChallenge(as_data(my_nonce_));
    f.setNode(opts_.node_id);
    f.setProtocol(kWireProtocol);
    send_frame(to_bytes(mb));
  }
  std::weak_ptr<Session> weak = self;
  net_.after(opts_.handshake_timeout_ms, [weak] {
    if (auto s = weak.lock(); s && s->phase_ == Phase::kHandshake) {
      s->timed_out_ = true;
      s->fail(Status::unavailable("handshake timed out" + (s->reader_.partial() ? " with " + std::to_string(s->reader_.partial()) +
                                                                                      " bytes of an unfinished frame"
                                                                                : std::string())));
    }
  });
}

void Session::send_frame(std::string body) { conn_->send(frame(body)); }

void Session::refuse(const std::string& why) {
  // Said to the peer before the close, so that a client with the wrong secret (or build) stops
  // and says why instead of retrying a connection that looks lost.
  capnp::MallocMessageBuilder mb(kFrameWords);
  mb.initRoot<schema::Frame>().setRefused(why);
  send_frame(to_bytes(mb));
  fail(Status::invalid_argument(why));
}

void Session::on_bytes(std::string_view bytes) {
  if (phase_ == Phase::kClosed) return;
  heard_ = true;
  if (auto s = reader_.feed(bytes); !s) {
    // The commonest stranger on a node port: a browser or curl that meant the metrics port. Its
    // first four bytes, however they were split, are the length prefix the reader refused.
    if (phase_ == Phase::kHandshake && !client_)
      for (std::string_view verb : {"GET ", "POST", "HEAD", "PUT "})
        if (reader_.prefix() == verb)
          return fail(Status::invalid_argument("an HTTP request on the node port (metrics are on the node's admin port)"));
    return fail(s);
  }
  while (phase_ != Phase::kClosed) {
    auto f = reader_.next();
    if (!f) break;
    on_frame(*f);
  }
}

void Session::on_frame(const std::string& body) {
  if (body.empty() || body.size() % sizeof(capnp::word) != 0)
    return fail(Status::invalid_argument("malformed frame (" + std::to_string(body.size()) + " bytes)"));
  try {
    auto words = kj::heapArray<capnp::word>(body.size() / sizeof(capnp::word));
    memcpy(words.begin(), body.data(), body.size());
    capnp::ReaderOptions ro;
    ro.traversalLimitInWords = words.size() * 2 + 64;
    ro.nestingLimit = 16;
    capnp::FlatArrayMessageReader mr(words, ro);
    auto f = mr.getRoot<schema::Frame>();
    if (phase_ == Phase::kHandshake) {
      if (client_ && f.isChallenge()) {
        peer_nonce_ = str(f.getChallenge());
        peer_node_ = f.getNode();
        if (f.getProtocol() != kWireProtocol)
          return fail(Status::invalid_argument(
              "the node at " + conn_->peer() + " speaks wire protocol " + std::to_string(f.getProtocol()) +
              ", this build speaks " + std::to_string(kWireProtocol) + " (every node and tool of a cluster must be the same build)"));
        if (opts_.expect_node != 0 && peer_node_ != opts_.expect_node)
          return fail(Status::invalid_argument("the node at " + conn_->peer() + " is node " + std::to_string(peer_node_) +
                                               ", not node " + std::to_string(opts_.expect_node) +
                                               " as the config says (is the config out of date?)"));
        my_nonce_ = crypto::random_bytes(kNonceBytes);
        capnp::MallocMessageBuilder mb(kFrameWords);
        auto a = mb.initRoot<schema::Frame>().initAuth();
        a.setRole(opts_.role);
        a.setNodeId(opts_.node_id);
        a.setNonce(as_data(my_nonce_));
        a.setProtocol(kWireProtocol);
        a.setMac(as_data(client_proof(opts_.secret, peer_nonce_, my_nonce_, opts_.role, opts_.node_id)));
        send_frame(to_bytes(mb));
        return;
      }
      if (client_ && f.isRefused()) {
        std::string why(f.getRefused().cStr(), f.getRefused().size());
        return fail(Status::invalid_argument("the node at " + conn_->peer() + " refused the handshake: " + why +
                                             " (does the config name this cluster's secret file?)"));
      }
      if (client_ && f.isWelcome()) {
        if (peer_nonce_.empty() || !crypto::equal(str(f.getWelcome()), server_proof(opts_.secret, peer_nonce_, my_nonce_, peer_node_)))
          return fail(Status::invalid_argument("server did not prove the cluster secret"));
        phase_ = Phase::kReady;
        reader_.set_max(kMaxFrameBytes);
        if (auto done = std::move(client_done_)) done(shared_from_this());
        return;
      }
      if (!client_ && f.isAuth()) {
        auto a = f.getAuth();
        std::string role(a.getRole().cStr(), a.getRole().size());
        std::string nonce = str(a.getNonce());
        if (a.getProtocol() != kWireProtocol)
          return refuse("the peer speaks wire protocol " + std::to_string(a.getProtocol()) + ", this node speaks " +
                        std::to_string(kWireProtocol) + " (every node and tool of a cluster must be the same build)");
        if (nonce.size() != kNonceBytes || (role != "node" && role != "client" && role != "admin") ||
            !crypto::equal(str(a.getMac()), client_proof(opts_.secret, my_nonce_, nonce, role, a.getNodeId())))
          return refuse("wrong cluster secret or malformed handshake");
        peer_role_ = role;
        peer_node_ = a.getNodeId();
        capnp::MallocMessageBuilder mb(kFrameWords);
        mb.initRoot<schema::Frame>().setWelcome(as_data(server_proof(opts_.secret, my_nonce_, nonce, opts_.node_id)));
        send_frame(to_bytes(mb));
        phase_ = Phase::kReady;
        reader_.set_max(kMaxFrameBytes);
        if (auto ready = std::move(server_ready_)) handlers_ = ready(shared_from_this());
        return;
      }
      return fail(Status::invalid_argument("unexpected frame before authentication"));
    }
    switch (f.which()) {
      case schema::Frame::DELIVER: {
        auto d = f.getDeliver();
        uint64_t id = d.getId();
        auto self = shared_from_this();
        AckFn ack = [self, id](Status s) {
          capnp::MallocMessageBuilder mb(kFrameWords);
          auto a = mb.initRoot<schema::Frame>().initAck();
          a.setId(id);
          a.setCode(static_cast<uint8_t>(s.code()));
          a.setMessage(s.message());
          self->send_frame(to_bytes(mb));
        };
        auto env = decode_envelope(str(d.getEnvelope()));
        if (!env) {
          log::warn("malformed envelope from {}: {}", conn_->peer(), env.status().to_string());
          return ack(env.status());
        }
        if (!handlers_.on_deliver) return ack(Status::unavailable("this peer accepts no envelopes"));
        handlers_.on_deliver(std::move(*env), std::move(ack));
        return;
      }
      case schema::Frame::ACK: {
        auto a = f.getAck();
        AckFn fn;
        {
          std::lock_guard lock(mu_);
          auto it = acks_.find(a.getId());
          if (it == acks_.end()) return;
          fn = std::move(it->second);
          acks_.erase(it);
        }
        fn(a.getCode() == 0 ? Status::ok()
                            : Status::from_code(static_cast<Code>(a.getCode()), a.getMessage().cStr()));
        return;
      }
      case schema::Frame::REQUEST: {
        auto r = f.getRequest();
        uint64_t id = r.getId();
        std::string method(r.getMethod().cStr());
        auto self = shared_from_this();
        RespondFn respond = [self, id](Status s, std::string body) {
          capnp::MallocMessageBuilder mb(frame_words(body));
          auto p = mb.initRoot<schema::Frame>().initResponse();
          p.setId(id);
          p.setCode(static_cast<uint8_t>(s.code()));
          p.setMessage(s.message());
          p.setBody(as_data(body));
          self->send_frame(to_bytes(mb));
        };
        if (!handlers_.on_request) return respond(Status::invalid_argument("no requests accepted here"), {});
        handlers_.on_request(method, str(r.getBody()), std::move(respond));
        return;
      }
      case schema::Frame::RESPONSE: {
        auto r = f.getResponse();
        std::function<void(Status, std::string)> fn;
        {
          std::lock_guard lock(mu_);
          auto it = calls_.find(r.getId());
          if (it == calls_.end()) return;
          fn = std::move(it->second);
          calls_.erase(it);
        }
        fn(r.getCode() == 0 ? Status::ok() : Status::from_code(static_cast<Code>(r.getCode()), r.getMessage().cStr()),
           str(r.getBody()));
        return;
      }
      default:
        return fail(Status::invalid_argument("unexpected frame after authentication"));
    }
  } catch (const kj::Exception& e) {
    // Before authentication the close is logged (throttled) by fail().
    if (phase_ == Phase::kReady)
      log::warn("closing connection from {}: malformed frame: {}", conn_->peer(), e.getDescription().cStr());
    fail(Status::invalid_argument(std::string("malformed frame: ") + e.getDescription().cStr()));
  }
}

void Session::deliver(const Envelope& env, AckFn ack) {
  uint64_t id;
  {
    std::lock_guard lock(mu_);
    if (closed_) {
      ack(Status::unavailable("session closed"));
      return;
    }
    id = next_id_++;
    acks_.emplace(id, std::move(ack));
  }
  std::string body = encode(env);
  capnp::MallocMessageBuilder mb(frame_words(body));
  auto d = mb.initRoot<schema::Frame>().initDeliver();
  d.setId(id);
  d.setEnvelope(as_data(body));
  send_frame(to_bytes(mb));
}

void Session::request(const std::string& method, std::string body, std::function<void(Status, std::string)> done) {
  uint64_t id;
  {
    std::lock_guard lock(mu_);
    if (closed_) {
      done(Status::unavailable("session closed"), {});
      return;
    }
    id = next_id_++;
    calls_.emplace(id, std::move(done));
  }
  capnp::MallocMessageBuilder mb(frame_words(body));
  auto r = mb.initRoot<schema::Frame>().initRequest();
  r.setId(id);
  r.setMethod(method);
  r.setBody(as_data(body));
  send_frame(to_bytes(mb));
}

void Session::close() { conn_->close(); }

void Session::fail(Status why) {
  std::map<uint64_t, AckFn> acks;
  std::map<uint64_t, std::function<void(Status, std::string)>> calls;
  {
    std::lock_guard lock(mu_);
    if (closed_) return;
    closed_ = true;
    acks.swap(acks_);
    calls.swap(calls_);
  }
  Phase was = phase_;
  phase_ = Phase::kClosed;
  conn_->close();
  Status gone = Status::unavailable("connection to " + conn_->peer() + " lost: " + why.message());
  for (auto& [id, fn] : acks) fn(gone);
  for (auto& [id, fn] : calls) fn(gone, {});
  if (was == Phase::kHandshake && !client_) {
    // Anyone who can reach the port can cause this line: every such close is counted, but
    // only so many are written. A peer that hung up without a word is a port probe
    // (tandem-cluster's readiness check, a health check): neither counted nor logged above debug.
    static log::Throttle throttle(20, 10'000);
    if (!heard_ && !timed_out_) {
      log::debug("connection from {} closed before it sent anything: {}", conn_->peer(), why.message());
    } else {
      g_closed_before_auth.fetch_add(1, std::memory_order_relaxed);
      if (int64_t unlogged = throttle.admit(); unlogged >= 0)
        log::warn("closed connection from {} before authentication: {}{}", conn_->peer(), why.message(),
                  unlogged ? " (and " + std::to_string(unlogged) + " more such closes not logged)" : std::string());
    }
  }
  if (was == Phase::kHandshake) {
    if (auto done = std::move(client_done_)) done(why.code() == Code::kInvalidArgument ? why : gone);
    return;
  }
  if (handlers_.on_close) handlers_.on_close(why);
}

}  // namespace tandem::messaging
