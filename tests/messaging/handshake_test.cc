// The session handshake under attack: every case below must end with the connection closed
// by the side that was lied to, and no frame of the attacker's handled (no session ready, no
// envelope delivered, no request answered). A raw peer speaks the frame format by hand.
#include <tandem/messaging/session.h>

#include <capnp/message.h>
#include <capnp/serialize.h>

#include <atomic>
#include <doctest/doctest.h>
#include <future>
#include <mutex>

#include <tandem/core/crypto.h>

#include "schema/envelope.capnp.h"
#include "test_util.h"

using namespace tandem;
using namespace tandem::messaging;

namespace {

constexpr const char* kSecret = "the-right-cluster-secret";

struct Server {
  std::unique_ptr<net::Network> net = net::make_real_network();
  uint16_t port = 0;
  std::atomic<int> ready{0}, delivered{0}, requests{0};
  explicit Server(int64_t handshake_timeout_ms = 400) {
    SessionOptions o;
    o.secret = kSecret;
    o.handshake_timeout_ms = handshake_timeout_ms;
    auto p = net->listen({"127.0.0.1", 0}, [this, o](std::shared_ptr<net::Connection> c) {
      Session::accept(*net, std::move(c), o, [this](const std::shared_ptr<Session>&) {
        ++ready;
        SessionHandlers h;
        h.on_deliver = [this](Envelope, AckFn ack) {
          ++delivered;
          ack(Status::ok());
        };
        h.on_request = [this](const std::string&, std::string body, RespondFn respond) {
          ++requests;
          respond(Status::ok(), body);
        };
        return h;
      });
    });
    REQUIRE(p.is_ok());
    port = *p;
  }
  ~Server() { net->stop(); }
};

std::string flat(capnp::MessageBuilder& mb) {
  auto words = capnp::messageToFlatArray(mb);
  auto bytes = words.asBytes();
  return std::string(reinterpret_cast<const char*>(bytes.begin()), bytes.size());
}
capnp::Data::Reader data(const std::string& s) {
  return capnp::Data::Reader(reinterpret_cast<const kj::byte*>(s.data()), s.size());
}
std::string client_mac(const std::string& secret, const std::string& server_nonce, const std::string& client_nonce,
                       const std::string& role, uint32_t node) {
  return crypto::hmac_sha256(secret, "tandem/" + std::to_string(kWireProtocol) + " client|" + server_nonce + "|" + client_nonce + "|" + role + "|" +
                                         std::to_string(node));
}
std::string auth_frame(const std::string& role, uint32_t node, const std::string& nonce, const std::string& mac,
                       uint16_t protocol = kWireProtocol) {
  capnp::MallocMessageBuilder mb;
  auto a = mb.initRoot<schema::Frame>().initAuth();
  a.setProtocol(protocol);
  a.setRole(role);
  a.setNodeId(node);
  a.setNonce(data(nonce));
  a.setMac(data(mac));
  return Session::frame(flat(mb));
}
std::string deliver_frame() {
  capnp::MallocMessageBuilder mb;
  auto d = mb.initRoot<schema::Frame>().initDeliver();
  d.setId(1);
  d.setEnvelope(data(std::string(64, 'x')));
  return Session::frame(flat(mb));
}
std::string request_frame() {
  capnp::MallocMessageBuilder mb;
  auto r = mb.initRoot<schema::Frame>().initRequest();
  r.setId(1);
  r.setMethod("status");
  return Session::frame(flat(mb));
}
std::string data_frame(bool welcome, const std::string& bytes, uint32_t node = 0, uint16_t protocol = kWireProtocol) {
  capnp::MallocMessageBuilder mb;
  auto f = mb.initRoot<schema::Frame>();
  if (welcome) f.setWelcome(data(bytes));
  else f.setChallenge(data(bytes));
  f.setNode(node);
  f.setProtocol(protocol);
  return Session::frame(flat(mb));
}

// A hand-driven peer on a raw connection: sees the frames the other side sends and whether it
// hung up.
struct RawPeer {
  std::shared_ptr<net::Connection> conn;
  std::mutex mu;
  Session::FrameReader reader{1 << 20};
  std::vector<std::string> frames;
  std::promise<void> closed_p;
  std::shared_future<void> closed = closed_p.get_future().share();

  void attach(std::shared_ptr<net::Connection> c) {
    conn = std::move(c);
    conn->start(
        [this](std::string_view b) {
          std::lock_guard lock(mu);
          if (!reader.feed(b)) return;
          while (auto f = reader.next()) frames.push_back(*f);
        },
        [this](Status) { closed_p.set_value(); });
  }
  bool wait_closed(int ms = 5000) { return closed.wait_for(std::chrono::milliseconds(ms)) == std::future_status::ready; }
  // The server's challenge nonce (its first frame).
  std::string challenge() {
    REQUIRE(testing::wait_until([&] {
      std::lock_guard lock(mu);
      return !frames.empty();
    }));
    std::lock_guard lock(mu);
    auto words = kj::heapArray<capnp::word>(frames[0].size() / sizeof(capnp::word));
    memcpy(words.begin(), frames[0].data(), frames[0].size());
    capnp::FlatArrayMessageReader mr(words);
    auto f = mr.getRoot<schema::Frame>();
    REQUIRE(f.isChallenge());
    auto c = f.getChallenge();
    return std::string(reinterpret_cast<const char*>(c.begin()), c.size());
  }
  size_t frame_count() {
    std::lock_guard lock(mu);
    return frames.size();
  }
  // Whether frame i is the server's refusal (which says why it hangs up, and grants nothing).
  bool is_refusal(size_t i) {
    std::lock_guard lock(mu);
    if (i >= frames.size()) return false;
    auto words = kj::heapArray<capnp::word>(frames[i].size() / sizeof(capnp::word));
    memcpy(words.begin(), frames[i].data(), frames[i].size());
    capnp::FlatArrayMessageReader mr(words);
    return mr.getRoot<schema::Frame>().isRefused();
  }
};

std::unique_ptr<RawPeer> dial(net::Network& net, uint16_t port) {
  auto peer = std::make_unique<RawPeer>();
  std::promise<void> up;
  net.connect({"127.0.0.1", port}, [&](Result<std::shared_ptr<net::Connection>> c) {
    REQUIRE(c.is_ok());
    peer->attach(*c);
    up.set_value();
  });
  REQUIRE(up.get_future().wait_for(std::chrono::seconds(5)) == std::future_status::ready);
  return peer;
}

// A real client's handshake with the server at `port`: the session, or why it failed.
Result<std::shared_ptr<Session>> handshake(net::Network& net, uint16_t port, SessionOptions o) {
  std::promise<Result<std::shared_ptr<Session>>> r;
  Session::connect(net, {"127.0.0.1", port}, std::move(o), {}, [&](Result<std::shared_ptr<Session>> s) { r.set_value(s); });
  auto f = r.get_future();
  REQUIRE(f.wait_for(std::chrono::seconds(5)) == std::future_status::ready);
  return f.get();
}

struct Case {
  const char* name;
  std::function<void(RawPeer&)> attack;
};

}  // namespace

TEST_CASE("handshake: forged, replayed, tampered, early and slow handshakes are refused before any frame is handled") {
  Server server;
  auto net = net::make_real_network();
  const std::string nonce = crypto::random_bytes(32);
  std::vector<std::unique_ptr<RawPeer>> peers;  // kept until the network stops: callbacks refer to them
  // A valid Auth captured from an earlier connection, to replay.
  std::string captured;
  {
    auto& p = peers.emplace_back(dial(*net, server.port));
    std::string s = p->challenge();
    captured = auth_frame("client", 0, nonce, client_mac(kSecret, s, nonce, "client", 0));
    p->conn->send(captured);
    REQUIRE(testing::wait_until([&] { return server.ready.load() == 1; }));
    p->conn->close();
  }
  server.ready = 0;

  std::vector<Case> cases = {
      {"wrong secret", [&](RawPeer& p) {
         auto s = p.challenge();
         p.conn->send(auth_frame("client", 0, nonce, client_mac("a-wrong-cluster-secret", s, nonce, "client", 0)));
       }},
      {"empty secret", [&](RawPeer& p) {
         auto s = p.challenge();
         p.conn->send(auth_frame("client", 0, nonce, client_mac("", s, nonce, "client", 0)));
       }},
      {"no MAC at all", [&](RawPeer& p) {
         p.challenge();
         p.conn->send(auth_frame("client", 0, nonce, ""));
       }},
      {"replayed Auth from an earlier connection", [&](RawPeer& p) {
         p.challenge();
         p.conn->send(captured);
       }},
      {"MAC for role client, frame says admin", [&](RawPeer& p) {
         auto s = p.challenge();
         p.conn->send(auth_frame("admin", 0, nonce, client_mac(kSecret, s, nonce, "client", 0)));
       }},
      {"MAC for node 2, frame says node 1", [&](RawPeer& p) {
         auto s = p.challenge();
         p.conn->send(auth_frame("node", 1, nonce, client_mac(kSecret, s, nonce, "node", 2)));
       }},
      {"unknown role with a valid MAC", [&](RawPeer& p) {
         auto s = p.challenge();
         p.conn->send(auth_frame("root", 0, nonce, client_mac(kSecret, s, nonce, "root", 0)));
       }},
      {"short nonce with a valid MAC", [&](RawPeer& p) {
         auto s = p.challenge();
         std::string n = nonce.substr(0, 8);
         p.conn->send(auth_frame("client", 0, n, client_mac(kSecret, s, n, "client", 0)));
       }},
      {"a valid MAC from a build of an older wire protocol", [&](RawPeer& p) {
         auto s = p.challenge();
         p.conn->send(auth_frame("client", 0, nonce, client_mac(kSecret, s, nonce, "client", 0), kWireProtocol - 1));
       }},
      {"MAC over a different server nonce", [&](RawPeer& p) {
         p.challenge();
         p.conn->send(auth_frame("client", 0, nonce, client_mac(kSecret, std::string(32, 'z'), nonce, "client", 0)));
       }},
      {"a delivery before authenticating", [&](RawPeer& p) { p.conn->send(deliver_frame()); }},
      {"a request before authenticating", [&](RawPeer& p) { p.conn->send(request_frame()); }},
      {"a delivery right after a forged Auth", [&](RawPeer& p) {
         p.challenge();
         p.conn->send(auth_frame("node", 1, nonce, std::string(32, '\0')) + deliver_frame() + request_frame());
       }},
      {"the server's own challenge reflected back", [&](RawPeer& p) {
         auto s = p.challenge();
         p.conn->send(data_frame(false, s));
       }},
      {"a Welcome sent to the server", [&](RawPeer& p) {
         p.challenge();
         p.conn->send(data_frame(true, std::string(32, 'w')));
       }},
      {"plaintext HTTP", [&](RawPeer& p) { p.conn->send("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"); }},
      {"a pre-auth frame over the 1 KiB limit", [&](RawPeer& p) {
         p.conn->send(Session::frame(std::string(kMaxHandshakeFrameBytes + 8, '\0')));
       }},
      {"an empty frame", [&](RawPeer& p) { p.conn->send(Session::frame("")); }},
      {"a frame whose length is not whole words", [&](RawPeer& p) { p.conn->send(Session::frame("abc")); }},
      {"silence (handshake timeout)", [&](RawPeer&) {}},
      {"a valid Auth dribbled out slower than the handshake timeout", [&](RawPeer& p) {
         auto s = p.challenge();
         std::string f = auth_frame("client", 0, nonce, client_mac(kSecret, s, nonce, "client", 0));
         for (size_t i = 0; i < f.size() && !p.wait_closed(0); i += 16) {
           p.conn->send(f.substr(i, 16));
           std::this_thread::sleep_for(std::chrono::milliseconds(60));
         }
       }},
  };
  CHECK(cases.size() >= 15);
  for (auto& k : cases) {
    CAPTURE(k.name);
    auto& p = peers.emplace_back(dial(*net, server.port));
    k.attack(*p);
    CHECK(p->wait_closed());  // the server hung up
    // It sent its challenge and at most a refusal after it (no welcome, no answer).
    CHECK(p->frame_count() <= 2);
    if (p->frame_count() == 2) CHECK(p->is_refusal(1));
  }
  CHECK(server.ready == 0);
  CHECK(server.delivered == 0);
  CHECK(server.requests == 0);
  MESSAGE("SECURITY handshake cases=" << cases.size() << " accepted=" << server.ready.load());
  net->stop();
  peers.clear();
}

TEST_CASE("handshake: a client refuses a server that cannot prove the secret") {
  auto net = net::make_real_network();
  // A fake server: sends a challenge, then a Welcome with a made-up proof (or a Welcome first).
  for (bool welcome_first : {false, true}) {
    CAPTURE(welcome_first);
    auto fake = net::make_real_network();
    auto port = fake->listen({"127.0.0.1", 0}, [&](std::shared_ptr<net::Connection> c) {
      std::weak_ptr<net::Connection> weak = c;
      c->start([weak, welcome_first](std::string_view) {
        if (auto conn = weak.lock(); conn && !welcome_first) conn->send(data_frame(true, std::string(32, 'p')));
      }, [](Status) {});
      c->send(welcome_first ? data_frame(true, std::string(32, 'p')) : data_frame(false, std::string(32, 'n')));
    });
    REQUIRE(port.is_ok());
    SessionOptions o;
    o.secret = kSecret;
    o.role = "client";
    o.handshake_timeout_ms = 1000;
    CHECK_FALSE(handshake(*net, *port, o).is_ok());
    fake->stop();
  }
  net->stop();
}

namespace {

// A fake server that sends one challenge naming `node` and `protocol`; what a client expecting
// node 3 makes of it.
Result<std::shared_ptr<Session>> connect_to_fake(uint32_t node, uint16_t protocol, uint32_t expect_node) {
  auto net = net::make_real_network();
  auto fake = net::make_real_network();
  std::atomic<int> auths{0};
  auto port = fake->listen({"127.0.0.1", 0}, [&](std::shared_ptr<net::Connection> c) {
    c->start([&](std::string_view) { ++auths; }, [](Status) {});
    c->send(data_frame(false, std::string(32, 'n'), node, protocol));
  });
  REQUIRE(port.is_ok());
  SessionOptions o;
  o.secret = kSecret;
  o.role = "admin";
  o.expect_node = expect_node;
  o.handshake_timeout_ms = 1000;
  auto s = handshake(*net, *port, o);
  // A refused server never hears the client's proof.
  if (!s.is_ok() && s.status().message().find("timed out") == std::string::npos) CHECK(auths.load() == 0);
  net->stop();
  fake->stop();
  return s;
}

}  // namespace

TEST_CASE("handshake: a client refuses a server that is another node or speaks another wire protocol, before it answers") {
  auto other = connect_to_fake(5, kWireProtocol, 3);
  REQUIRE_FALSE(other.is_ok());
  CHECK(other.status().message().find("is node 5, not node 3") != std::string::npos);

  auto old = connect_to_fake(3, 0, 3);
  REQUIRE_FALSE(old.is_ok());
  CHECK(old.status().message().find("speaks wire protocol 0, this build speaks " + std::to_string(kWireProtocol)) !=
        std::string::npos);

  // The right node and protocol: the client answers and waits for a welcome that never comes.
  auto right = connect_to_fake(3, kWireProtocol, 3);
  REQUIRE_FALSE(right.is_ok());
  CHECK(right.status().message().find("timed out") != std::string::npos);
}

TEST_CASE("handshake: many idle unauthenticated connections are closed at the timeout and do not block a real client") {
  Server server(300);
  auto net = net::make_real_network();
  std::vector<std::unique_ptr<RawPeer>> idle;
  for (int i = 0; i < 200; ++i) idle.push_back(dial(*net, server.port));
  // A real client still gets in while they sit there.
  SessionOptions o;
  o.secret = kSecret;
  o.role = "client";
  CHECK(handshake(*net, server.port, o).is_ok());
  int closed = 0;
  for (auto& p : idle) closed += p->wait_closed(5000);
  CHECK(closed == 200);
  CHECK(server.ready == 1);
  net->stop();
  idle.clear();
}
