#include <tandem/messaging/session.h>

#include <algorithm>
#include <atomic>
#include <doctest/doctest.h>
#include <future>
#include <spdlog/sinks/ringbuffer_sink.h>
#include <spdlog/spdlog.h>
#include <thread>

#include "test_util.h"

using namespace tandem;
using namespace tandem::messaging;

namespace {

struct Server {
  std::unique_ptr<net::Network> net = net::make_real_network();
  uint16_t port = 0;
  std::atomic<int> ready{0}, delivered{0}, requests{0};
  explicit Server(const std::string& secret) {
    SessionOptions o;
    o.secret = secret;
    o.role = "node";
    o.handshake_timeout_ms = 500;
    auto p = net->listen({"127.0.0.1", 0}, [this, o](std::shared_ptr<net::Connection> c) {
      Session::accept(*net, std::move(c), o, [this](const std::shared_ptr<Session>&) {
        ++ready;
        SessionHandlers h;
        h.on_deliver = [this](Envelope env, AckFn ack) {
          ++delivered;
          ack(env.seq == 13 ? Status::unavailable("unlucky") : Status::ok());
        };
        h.on_request = [this](const std::string& method, std::string body, RespondFn respond) {
          ++requests;
          if (method == "echo") return respond(Status::ok(), body);
          respond(Status::invalid_argument("unknown method '" + method + "'"), {});
        };
        return h;
      });
    });
    REQUIRE(p.is_ok());
    port = *p;
  }
  ~Server() { net->stop(); }
};

Result<std::shared_ptr<Session>> connect(net::Network& net, uint16_t port, const std::string& secret) {
  SessionOptions o;
  o.secret = secret;
  o.role = "client";
  std::promise<Result<std::shared_ptr<Session>>> p;
  auto f = p.get_future();
  Session::connect(net, {"127.0.0.1", port}, o, {}, [&](Result<std::shared_ptr<Session>> r) { p.set_value(r); });
  REQUIRE(f.wait_for(std::chrono::seconds(5)) == std::future_status::ready);
  return f.get();
}

}  // namespace

TEST_CASE("sessions with the same secret exchange envelopes, acks, requests and responses") {
  Server server("s3cret");
  auto client_net = net::make_real_network();
  auto s = connect(*client_net, server.port, "s3cret");
  REQUIRE_MESSAGE(s.is_ok(), s.status().to_string());
  std::promise<Status> acked, refused;
  Envelope e;
  e.from = {"a", "1"};
  e.to = {"b", "2"};
  e.seq = 1;
  (*s)->deliver(e, [&](Status st) { acked.set_value(st); });
  e.seq = 13;
  (*s)->deliver(e, [&](Status st) { refused.set_value(st); });
  CHECK(acked.get_future().get().is_ok());
  auto r = refused.get_future().get();
  CHECK(r.code() == Code::kUnavailable);
  CHECK(r.message() == "unlucky");
  std::promise<std::pair<Status, std::string>> echo, bad;
  (*s)->request("echo", std::string(100000, 'x'), [&](Status st, std::string b) { echo.set_value({st, b}); });
  (*s)->request("nope", "", [&](Status st, std::string b) { bad.set_value({st, b}); });
  auto er = echo.get_future().get();
  CHECK(er.first.is_ok());
  CHECK(er.second.size() == 100000);
  CHECK(bad.get_future().get().first.message() == "unknown method 'nope'");
  CHECK(server.delivered == 2);
  client_net->stop();
}

TEST_CASE("a wrong cluster secret is refused before any frame is handled") {
  Server server("right");
  auto client_net = net::make_real_network();
  auto s = connect(*client_net, server.port, "wrong");
  // The server says why before it hangs up: a final error, not a connection to retry.
  CHECK(s.status().code() == Code::kInvalidArgument);
  CHECK(s.status().message().find("refused the handshake: wrong cluster secret") != std::string::npos);
  CHECK(server.ready == 0);
  CHECK(server.delivered == 0);
  client_net->stop();
}

TEST_CASE("garbage, an oversized frame and a silent client are disconnected without a crash") {
  Server server("k");
  auto client_net = net::make_real_network();
  auto raw = [&](std::string bytes) {
    std::promise<Status> closed;
    auto f = closed.get_future();
    client_net->connect({"127.0.0.1", server.port}, [&, bytes](Result<std::shared_ptr<net::Connection>> c) {
      REQUIRE(c.is_ok());
      auto conn = *c;
      conn->start([](std::string_view) {}, [&](Status s) { closed.set_value(s); });
      if (!bytes.empty()) conn->send(bytes);
    });
    REQUIRE(f.wait_for(std::chrono::seconds(5)) == std::future_status::ready);  // the server closed it
  };
  raw("GET / HTTP/1.1\r\nHost: x\r\n\r\n");                 // plaintext garbage: a huge "length"
  raw(std::string("\x00\x00\x00\x10", 4) + std::string(16, '\xAB'));  // a frame that is not Cap'n Proto
  raw(std::string("\x7F\xFF\xFF\xFF", 4));                    // announces 2 GiB
  raw("");                                                     // says nothing: handshake timeout
  CHECK(server.ready == 0);
  CHECK(server.delivered == 0);
  CHECK(server.requests == 0);
  client_net->stop();
}

TEST_CASE("an HTTP request on the node port is named as one, also when its first bytes come alone") {
  // The server's reasons for closing go to the log: read them from a sink on the default
  // logger. (Such lines are throttled per process, 20 per 10 s: ctest runs each case alone.)
  auto sink = std::make_shared<spdlog::sinks::ringbuffer_sink_mt>(32);
  spdlog::default_logger()->sinks().push_back(sink);
  auto http_lines = [&] {
    size_t n = 0;
    for (auto& line : sink->last_formatted()) n += line.find("an HTTP request on the node port") != std::string::npos;
    return n;
  };
  Server server("k");
  auto client_net = net::make_real_network();
  const std::vector<std::pair<std::string, std::string>> split = {
      {"G", "ET /metrics HTTP/1.1\r\n\r\n"}, {"GE", "T / HTTP/1.0\r\n\r\n"}, {"GET", " /metrics HTTP/1.1\r\n\r\n"},
      {"POS", "T /metrics HTTP/1.1\r\n\r\n"}, {"HEAD", " / HTTP/1.1\r\n\r\n"}};
  for (size_t i = 0; i < split.size(); ++i) {
    auto& [first, rest] = split[i];
    CAPTURE(first);
    std::promise<Status> closed;
    auto f = closed.get_future();
    std::promise<std::shared_ptr<net::Connection>> connected;
    client_net->connect({"127.0.0.1", server.port}, [&](Result<std::shared_ptr<net::Connection>> c) {
      REQUIRE(c.is_ok());
      (*c)->start([](std::string_view) {}, [&](Status s) { closed.set_value(s); });
      (*c)->send(first);
      connected.set_value(*c);
    });
    auto conn = connected.get_future().get();
    std::this_thread::sleep_for(std::chrono::milliseconds(50));  // the server reads the first bytes alone
    conn->send(rest);
    REQUIRE(f.wait_for(std::chrono::seconds(5)) == std::future_status::ready);  // the server closed it
    CHECK(testing::wait_until([&] { return http_lines() == i + 1; }, std::chrono::seconds(5)));
  }
  CHECK(server.ready == 0);
  client_net->stop();
  auto& sinks = spdlog::default_logger()->sinks();
  sinks.erase(std::remove(sinks.begin(), sinks.end(), sink), sinks.end());
}

TEST_CASE("a lost connection fails every pending ack, so the relay resends") {
  // A server whose deliver never acks.
  auto net = net::make_real_network();
  std::atomic<int> got{0};
  SessionOptions o;
  o.secret = "k";
  std::shared_ptr<net::Connection> keep;
  auto p = net->listen({"127.0.0.1", 0}, [&](std::shared_ptr<net::Connection> c) {
    Session::accept(*net, c, o, [&](const std::shared_ptr<Session>&) {
      SessionHandlers h;
      h.on_deliver = [&](Envelope, AckFn) { ++got; };  // never acks
      return h;
    });
    keep = c;
  });
  REQUIRE(p.is_ok());
  auto client_net = net::make_real_network();
  auto s = connect(*client_net, *p, "k");
  REQUIRE(s.is_ok());
  std::promise<Status> acked;
  Envelope e;
  (*s)->deliver(e, [&](Status st) { acked.set_value(st); });
  REQUIRE(testing::wait_until([&] { return got == 1; }));
  keep->close();
  auto f = acked.get_future();
  REQUIRE(f.wait_for(std::chrono::seconds(5)) == std::future_status::ready);
  CHECK(f.get().code() == Code::kUnavailable);
  client_net->stop();
  net->stop();
}

TEST_CASE("the frame reader reassembles frames split anywhere and enforces its limit") {
  std::string stream = Session::frame("hello") + Session::frame("") + Session::frame(std::string(300, 'z'));
  Session::FrameReader r(1000);
  std::vector<std::string> got;
  for (char c : stream) {
    REQUIRE(r.feed(std::string_view(&c, 1)).is_ok());
    while (auto f = r.next()) got.push_back(*f);
  }
  REQUIRE(got.size() == 3);
  CHECK(got[0] == "hello");
  CHECK(got[1].empty());
  CHECK(got[2].size() == 300);
  Session::FrameReader small(10);
  CHECK(small.feed(Session::frame(std::string(11, 'x'))).code() == Code::kInvalidArgument);
}
