// libFuzzer target: a server-side Session fed arbitrary bytes, before authentication
// (TANDEM_FUZZ_READY unset) or after a valid handshake (set). Runs the real frame reader,
// Cap'n Proto decoding and handshake/dispatch code over an in-memory connection.
#include <tandem/messaging/session.h>

#include <capnp/message.h>
#include <capnp/serialize.h>

#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <string>

#include <tandem/core/crypto.h>

#include "schema/envelope.capnp.h"

using namespace tandem;

namespace {

constexpr const char* kSecret = "fuzzing-cluster-secret";

struct MemConnection final : net::Connection {
  std::function<void(std::string_view)> on_data;
  std::function<void(Status)> on_close;
  std::string sent;
  bool closed = false;
  void start(std::function<void(std::string_view)> d, std::function<void(Status)> c) override {
    on_data = std::move(d);
    on_close = std::move(c);
  }
  void send(std::string bytes) override { sent += bytes; }
  size_t queued_bytes() const override { return 0; }
  void close() override {  // as the real connection: drop the callbacks (they hold the session)
    if (closed) return;
    closed = true;
    finished = std::move(on_data);  // may be running now: destroyed by the harness afterwards
    if (auto c = std::move(on_close)) c(Status::unavailable("closed"));
  }
  std::function<void(std::string_view)> finished;
  std::string peer() const override { return "fuzz"; }
};

struct NoNetwork final : net::Network {
  Result<uint16_t> listen(const net::Endpoint&, std::function<void(std::shared_ptr<net::Connection>)>) override {
    return Status::unavailable("no");
  }
  void connect(const net::Endpoint&, std::function<void(Result<std::shared_ptr<net::Connection>>)> done) override {
    done(Status::unavailable("no"));
  }
  void after(int64_t, std::function<void()>) override {}  // timers never fire
  void stop() override {}
};

std::string challenge_of(const std::string& sent) {
  messaging::Session::FrameReader r(1 << 20);
  if (!r.feed(sent)) return {};
  auto f = r.next();
  if (!f || f->size() % 8 != 0) return {};
  auto words = kj::heapArray<capnp::word>(f->size() / 8);
  std::memcpy(words.begin(), f->data(), f->size());
  capnp::FlatArrayMessageReader mr(words);
  auto c = mr.getRoot<messaging::schema::Frame>().getChallenge();
  return std::string(reinterpret_cast<const char*>(c.begin()), c.size());
}

std::string valid_auth(const std::string& server_nonce) {
  std::string nonce(32, 'n');
  capnp::MallocMessageBuilder mb;
  auto a = mb.initRoot<messaging::schema::Frame>().initAuth();
  a.setRole("node");
  a.setNodeId(2);
  a.setProtocol(messaging::kWireProtocol);
  a.setNonce(capnp::Data::Reader(reinterpret_cast<const kj::byte*>(nonce.data()), nonce.size()));
  std::string mac = crypto::hmac_sha256(kSecret, "tandem/" + std::to_string(messaging::kWireProtocol) + " client|" + server_nonce + "|" + nonce + "|node|2");
  a.setMac(capnp::Data::Reader(reinterpret_cast<const kj::byte*>(mac.data()), mac.size()));
  auto words = capnp::messageToFlatArray(mb);
  auto bytes = words.asBytes();
  return messaging::Session::frame(std::string(reinterpret_cast<const char*>(bytes.begin()), bytes.size()));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const bool ready_phase = std::getenv("TANDEM_FUZZ_READY") != nullptr;
  NoNetwork net;
  auto conn = std::make_shared<MemConnection>();
  messaging::SessionOptions o;
  o.secret = kSecret;
  bool authenticated = false;
  messaging::Session::accept(net, conn, o, [&](const std::shared_ptr<messaging::Session>&) {
    authenticated = true;
    messaging::SessionHandlers h;
    h.on_deliver = [](messaging::Envelope, messaging::AckFn ack) { ack(Status::ok()); };
    h.on_request = [](const std::string&, std::string body, messaging::RespondFn respond) { respond(Status::ok(), body); };
    return h;
  });
  if (ready_phase) {
    conn->on_data(valid_auth(challenge_of(conn->sent)));
    if (!authenticated) __builtin_trap();  // the harness itself is wrong
  } else if (size > 0 && authenticated) {
    __builtin_trap();
  }
  // The first byte picks the chunk size the rest arrives in (0: all at once).
  std::string_view in(reinterpret_cast<const char*>(data), size);
  size_t chunk = in.empty() ? 0 : static_cast<uint8_t>(in[0]) % 32;
  if (!in.empty()) in.remove_prefix(1);
  if (chunk == 0) chunk = in.size() + 1;
  while (!in.empty() && !conn->closed) {
    size_t n = std::min(chunk, in.size());
    conn->on_data(in.substr(0, n));
    in.remove_prefix(n);
  }
  if (!ready_phase && authenticated) __builtin_trap();  // random bytes must never authenticate
  conn->close();
  conn->finished = nullptr;
  return 0;
}
