#include <tandem/core/net.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include <doctest/doctest.h>
// Under ASan or TSan malloc is the sanitizer's (mallinfo2 reads 0); its runtime counts the
// bytes in use. GCC ships no header declaring the call.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define TANDEM_HEAP_FROM_SANITIZER 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define TANDEM_HEAP_FROM_SANITIZER 1
#endif
#endif
#ifdef TANDEM_HEAP_FROM_SANITIZER
extern "C" size_t __sanitizer_get_current_allocated_bytes();
#else
#include <malloc.h>
#endif

#include <tandem/core/env.h>

using namespace tandem;

namespace {
// Polls `cond` for up to two seconds.
template <class F>
bool eventually(F cond) {
  for (int i = 0; i < 400; ++i) {
    if (cond()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return cond();
}
// Bytes the process has allocated and not freed.
size_t heap_in_use() {
#ifdef TANDEM_HEAP_FROM_SANITIZER
  return __sanitizer_get_current_allocated_bytes();
#else
  return mallinfo2().uordblks;
#endif
}
}  // namespace

TEST_CASE("a network on a borrowed loop runs its callbacks there, and none after stop(), while the loop goes on") {
  auto env = make_real_env();
  auto loop = env->make_executor("test-loop");
  auto net = env->make_network_on(*loop);
  auto peer_net = env->make_network();
  std::atomic<int> data{0}, closed{0}, off_loop{0};
  auto port = net->listen({"127.0.0.1", 0}, [&](std::shared_ptr<net::Connection> c) {
    c->start(
        [&, c](std::string_view bytes) {
          if (!loop->in_this_thread()) off_loop++;
          data += static_cast<int>(bytes.size());
        },
        [&](Status) { closed++; });
  });
  REQUIRE(port.is_ok());
  std::shared_ptr<net::Connection> peer;
  std::atomic<bool> connected{false};
  peer_net->connect({"127.0.0.1", *port}, [&](Result<std::shared_ptr<net::Connection>> c) {
    REQUIRE(c.is_ok());
    peer = *c;
    peer->start([](std::string_view) {}, [](Status) {});
    connected = true;
  });
  REQUIRE(eventually([&] { return connected.load(); }));
  peer->send("abc");
  REQUIRE(eventually([&] { return data.load() == 3; }));
  CHECK(off_loop.load() == 0);

  net->stop();
  int before = data.load() + closed.load();
  peer->send("more bytes after the stop");
  peer->close();
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  CHECK(data.load() + closed.load() == before);
  // The loop itself still runs tasks: only the network's callbacks stopped.
  std::atomic<bool> ran{false};
  loop->post([&] { ran = true; });
  CHECK(eventually([&] { return ran.load(); }));
  peer_net->stop();
}

TEST_CASE("stop() frees the connections still open, also those their own callbacks hold (a session owns its connection)") {
  auto env = make_real_env();
  auto loop = env->make_executor("test-loop");
  for (bool borrowed : {false, true}) {
    CAPTURE(borrowed);
    auto server = borrowed ? env->make_network_on(*loop) : env->make_network();
    auto client = env->make_network();
    std::mutex mu;
    std::vector<std::weak_ptr<net::Connection>> seen;  // both ends, server's and client's
    auto hold_self = [&](std::shared_ptr<net::Connection> c) {
      {
        std::lock_guard lock(mu);
        seen.push_back(c);
      }
      c->start([c](std::string_view) {}, [c](Status) {});  // the callbacks keep `c` alive
    };
    auto port = server->listen({"127.0.0.1", 0}, hold_self);
    REQUIRE(port.is_ok());
    std::atomic<int> connected{0};
    for (int i = 0; i < 3; ++i)
      client->connect({"127.0.0.1", *port}, [&](Result<std::shared_ptr<net::Connection>> c) {
        REQUIRE(c.is_ok());
        hold_self(*c);
        (*c)->send("hello");
        connected++;
      });
    REQUIRE(eventually([&] {
      std::lock_guard lock(mu);
      return connected.load() == 3 && seen.size() == 6;
    }));
    server->stop();
    client->stop();
    client.reset();  // a network with its own thread drops its pending handlers here
    server.reset();
    CHECK(eventually([&] {
      std::lock_guard lock(mu);
      return std::all_of(seen.begin(), seen.end(), [](auto& w) { return w.expired(); });
    }));
  }
}

TEST_CASE("closed connections give their buffers back while the network runs on") {
  auto env = make_real_env();
  auto server = env->make_network();
  auto client = env->make_network();
  std::atomic<int> accepted{0}, closed_at_server{0};
  auto port = server->listen({"127.0.0.1", 0}, [&](std::shared_ptr<net::Connection> c) {
    accepted++;
    c->start([](std::string_view) {}, [&](Status) { closed_at_server++; });
  });
  REQUIRE(port.is_ok());
  size_t before = heap_in_use();
  constexpr int kConns = 200;  // each holds a 64 KiB read buffer while open
  std::mutex mu;
  std::vector<std::shared_ptr<net::Connection>> conns;
  for (int i = 0; i < kConns; ++i)
    client->connect({"127.0.0.1", *port}, [&](Result<std::shared_ptr<net::Connection>> c) {
      REQUIRE(c.is_ok());
      (*c)->start([](std::string_view) {}, [](Status) {});
      std::lock_guard lock(mu);
      conns.push_back(*c);
    });
  REQUIRE(eventually([&] {
    std::lock_guard lock(mu);
    return conns.size() == kConns && accepted.load() == kConns;
  }));
  CHECK(heap_in_use() > before + kConns * 64 * 1024);  // the buffers are there while open
  {
    std::lock_guard lock(mu);
    for (auto& c : conns) c->close();
    conns.clear();
  }
  REQUIRE(eventually([&] { return closed_at_server.load() == kConns; }));
  // Both networks still run and remember their connections (weakly, to close them at stop):
  // what a closed one leaves behind must not be its buffers.
  size_t left = 0;
  CHECK(eventually([&] {
    size_t now = heap_in_use();
    left = now > before ? now - before : 0;
    return left < 2 * 1024 * 1024;
  }));
  INFO("bytes still held after every connection closed: " << left);
  CHECK(left < 2 * 1024 * 1024);
  server->stop();
  client->stop();
}
