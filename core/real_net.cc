#include <tandem/core/net.h>

#include <atomic>
#include <charconv>
#include <deque>
#include <future>
#include <mutex>
#include <thread>
#include <vector>

#include <boost/asio/connect.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>
#include <pthread.h>

#include "asio_executor.h"

namespace tandem::net {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;

Result<Endpoint> Endpoint::parse(std::string_view s) {
  auto colon = s.rfind(':');
  if (colon == std::string_view::npos || colon == 0 || colon + 1 == s.size())
    return Status::invalid_argument("address '" + std::string(s) + "' is not host:port");
  uint32_t port = 0;
  auto ps = s.substr(colon + 1);
  auto [p, ec] = std::from_chars(ps.data(), ps.data() + ps.size(), port);
  if (ec != std::errc() || p != ps.data() + ps.size() || port > 65535)
    return Status::invalid_argument("address '" + std::string(s) + "' has a bad port");
  return Endpoint{std::string(s.substr(0, colon)), static_cast<uint16_t>(port)};
}

namespace {

// False once the network stopped: no callback of the network's user runs after that.
using Live = std::shared_ptr<std::atomic<bool>>;

class AsioConnection final : public Connection, public std::enable_shared_from_this<AsioConnection> {
 public:
  AsioConnection(asio::io_context& io, tcp::socket socket, Live live)
      : io_(io), socket_(std::move(socket)), live_(std::move(live)) {
    boost::system::error_code ec;
    socket_.set_option(tcp::no_delay(true), ec);
    auto ep = socket_.remote_endpoint(ec);
    peer_ = ec ? "?" : ep.address().to_string() + ":" + std::to_string(ep.port());
  }

  void start(std::function<void(std::string_view)> on_data, std::function<void(Status)> on_close) override {
    auto self = shared_from_this();
    asio::post(io_, [self, on_data = std::move(on_data), on_close = std::move(on_close)]() mutable {
      {
        std::lock_guard lock(self->mu_);
        if (self->closed_) return;  // abandoned at a stop before it started: keep no callbacks
      }
      self->on_data_ = std::move(on_data);
      self->on_close_ = std::move(on_close);
      self->read();
    });
  }

  void send(std::string bytes) override {
    bool start_write;
    {
      std::lock_guard lock(mu_);
      if (closed_) return;
      queued_ += bytes.size();
      pending_.push_back(std::move(bytes));
      start_write = !writing_;
      writing_ = true;
    }
    if (start_write) {
      auto self = shared_from_this();
      asio::post(io_, [self] { self->write(); });
    }
  }

  size_t queued_bytes() const override {
    std::lock_guard lock(mu_);
    return queued_;
  }

  // Closes once everything queued so far is written.
  void close() override {
    auto self = shared_from_this();
    asio::post(io_, [self] {
      {
        std::lock_guard lock(self->mu_);
        if (self->writing_) {
          self->close_when_drained_ = true;
          return;
        }
      }
      self->fail(Status::unavailable("closed"));
    });
  }

  void abort() override {
    auto self = shared_from_this();
    asio::post(io_, [self] { self->fail(Status::unavailable("aborted")); });
  }

  std::string peer() const override { return peer_; }

  // At the network's stop, on its thread: closes the socket and drops the user's callbacks,
  // which may own this connection (a session holding its connection), without calling them.
  void abandon() { fail(Status::unavailable("network stopped")); }

 private:
  void read() {
    auto self = shared_from_this();
    socket_.async_read_some(asio::buffer(buf_), [self](const boost::system::error_code& ec, size_t n) {
      if (ec) return self->fail(Status::unavailable("read: " + ec.message()));
      if (!*self->live_) return self->fail(Status::unavailable("network stopped"));
      if (self->on_data_) {
        self->in_on_data_ = true;
        self->on_data_(std::string_view(self->buf_.data(), n));
        self->in_on_data_ = false;
      }
      if (!self->socket_.is_open()) {
        self->on_data_ = nullptr;  // a fail() inside the call left it to be dropped here
        return;
      }
      self->read();
    });
  }

  void write() {
    bool idle = false, close_now = false;
    {
      std::lock_guard lock(mu_);
      if (closed_) {
        writing_ = false;
        return;
      }
      if (pending_.empty()) {
        writing_ = false;
        idle = true;
        close_now = close_when_drained_;
      } else {
        out_.clear();
        for (auto& p : pending_) out_ += p;  // many frames, one write
        pending_.clear();
      }
    }
    if (idle) {
      if (close_now) fail(Status::unavailable("closed"));
      return;
    }
    auto self = shared_from_this();
    asio::async_write(socket_, asio::buffer(out_), [self](const boost::system::error_code& ec, size_t n) {
      {
        std::lock_guard lock(self->mu_);
        self->queued_ -= std::min(self->queued_, n);
      }
      if (ec) return self->fail(Status::unavailable("write: " + ec.message()));
      self->write();
    });
  }

  void fail(Status s) {
    {
      std::lock_guard lock(mu_);
      if (closed_) return;
      closed_ = true;
      pending_.clear();
      queued_ = 0;
    }
    boost::system::error_code ec;
    socket_.shutdown(tcp::socket::shutdown_both, ec);
    socket_.close(ec);
    auto cb = std::move(on_close_);
    if (!in_on_data_) on_data_ = nullptr;  // never destroy the callback that is running
    if (cb && *live_) cb(std::move(s));
  }

  asio::io_context& io_;
  tcp::socket socket_;
  Live live_;
  std::string peer_;
  std::array<char, 64 * 1024> buf_{};
  std::function<void(std::string_view)> on_data_;
  std::function<void(Status)> on_close_;
  bool in_on_data_ = false;  // on the network thread: on_data_ is running
  mutable std::mutex mu_;
  std::vector<std::string> pending_;
  std::string out_;
  size_t queued_ = 0;
  bool writing_ = false;
  bool close_when_drained_ = false;
  bool closed_ = false;
};

// On a thread of its own, or on a borrowed executor's io_context (`loop_`).
class AsioNetwork final : public Network {
 public:
  AsioNetwork() : own_(std::make_unique<Own>()), io_(own_->io) {
    own_->thread = std::thread([this] {
      pthread_setname_np(pthread_self(), "tandem-net");
      io_.run();
    });
  }
  explicit AsioNetwork(tandem::detail::AsioExecutor& loop) : loop_(&loop), io_(loop.io()) {}
  ~AsioNetwork() override { stop(); }

  Result<uint16_t> listen(const Endpoint& at, std::function<void(std::shared_ptr<Connection>)> on_accept) override {
    boost::system::error_code ec;
    auto addr = asio::ip::make_address(at.host, ec);
    if (ec) return Status::invalid_argument("listen address '" + at.host + "': " + ec.message());
    auto acc = std::make_shared<tcp::acceptor>(io_);
    tcp::endpoint ep(addr, at.port);
    acc->open(ep.protocol(), ec);
    if (!ec) acc->set_option(tcp::acceptor::reuse_address(true), ec);
    if (!ec) acc->bind(ep, ec);
    if (!ec) acc->listen(1024, ec);
    if (ec) return Status::unavailable("cannot listen on " + at.to_string() + ": " + ec.message());
    uint16_t port = acc->local_endpoint().port();
    {
      std::lock_guard lock(mu_);
      acceptors_.push_back(acc);
    }
    auto handler = std::make_shared<std::function<void(std::shared_ptr<Connection>)>>(std::move(on_accept));
    accept(acc, handler);
    return port;
  }

  void connect(const Endpoint& to, std::function<void(Result<std::shared_ptr<Connection>>)> done) override {
    boost::system::error_code ec;
    auto addr = asio::ip::make_address(to.host, ec);
    if (ec) {
      asio::post(io_, [live = live_, done, msg = "bad address '" + to.host + "': " + ec.message()] {
        if (*live) done(Status::invalid_argument(msg));
      });
      return;
    }
    auto sock = std::make_shared<tcp::socket>(io_);
    sock->async_connect(tcp::endpoint(addr, to.port), [this, live = live_, sock, done, to](const boost::system::error_code& ec) {
      if (!*live) return;
      if (ec) return done(Status::unavailable("connect " + to.to_string() + ": " + ec.message()));
      done(std::shared_ptr<Connection>(track(std::move(*sock))));
    });
  }

  void after(int64_t delay_ms, std::function<void()> fn) override {
    auto t = std::make_shared<asio::steady_timer>(io_, std::chrono::milliseconds(delay_ms));
    t->async_wait([t, live = live_, fn = std::move(fn)](const boost::system::error_code& ec) {
      if (!ec && *live) fn();
    });
  }

  void stop() override {
    if (stopped_.exchange(true)) return;
    auto close = [this] {
      *live_ = false;  // on the network's thread: a callback running now finishes first
      std::vector<std::weak_ptr<AsioConnection>> conns;
      {
        std::lock_guard lock(mu_);
        for (auto& a : acceptors_) {
          boost::system::error_code ec;
          a->close(ec);
        }
        conns.swap(conns_);
      }
      for (auto& w : conns)
        if (auto c = w.lock()) c->abandon();
    };
    // The close runs on the network's thread; stop() returns once it ran (at once when called
    // there, on a borrowed loop).
    if (!own_ && loop_->in_this_thread()) {
      close();
    } else {
      std::promise<void> closed;
      asio::post(io_, [&] {
        close();
        closed.set_value();
      });
      closed.get_future().wait();
    }
    // A borrowed loop keeps running (its owner joins it); handlers still queued there see
    // `live_` and call nobody.
    if (!own_) return;
    own_->work.reset();
    io_.stop();
    own_->thread.join();
  }

 private:
  void accept(std::shared_ptr<tcp::acceptor> acc, std::shared_ptr<std::function<void(std::shared_ptr<Connection>)>> h) {
    acc->async_accept([this, live = live_, acc, h](const boost::system::error_code& ec, tcp::socket s) {
      if (ec == asio::error::operation_aborted || !acc->is_open() || !*live) return;
      if (!ec) (*h)(track(std::move(s)));
      accept(acc, h);
    });
  }

  // A connection over a new socket, remembered (weakly) so that stop() can close it if still
  // open. It is allocated apart from its shared_ptr's control block: with make_shared, a
  // weak_ptr left in the list would keep the whole object, its 64 KiB read buffer included,
  // until the next sweep.
  std::shared_ptr<AsioConnection> track(tcp::socket socket) {
    std::shared_ptr<AsioConnection> c(new AsioConnection(io_, std::move(socket), live_));
    std::lock_guard lock(mu_);
    if (conns_.size() >= 64 && conns_.size() >= 2 * live_conns_) {
      std::erase_if(conns_, [](auto& w) { return w.expired(); });
      live_conns_ = conns_.size();
    }
    conns_.push_back(c);
    return c;
  }

  struct Own {
    asio::io_context io;
    asio::executor_work_guard<asio::io_context::executor_type> work{io.get_executor()};
    std::thread thread;
  };
  std::unique_ptr<Own> own_;
  tandem::detail::AsioExecutor* loop_ = nullptr;
  asio::io_context& io_;
  Live live_ = std::make_shared<std::atomic<bool>>(true);
  std::atomic<bool> stopped_{false};
  std::mutex mu_;
  std::vector<std::shared_ptr<tcp::acceptor>> acceptors_;
  std::vector<std::weak_ptr<AsioConnection>> conns_;
  size_t live_conns_ = 0;  // conns_.size() after the last sweep of expired entries
};

}  // namespace

std::unique_ptr<Network> make_real_network() { return std::make_unique<AsioNetwork>(); }

std::unique_ptr<Network> make_real_network_on(Executor& loop) {
  if (auto* asio_loop = dynamic_cast<tandem::detail::AsioExecutor*>(&loop)) return std::make_unique<AsioNetwork>(*asio_loop);
  return std::make_unique<AsioNetwork>();
}

}  // namespace tandem::net
