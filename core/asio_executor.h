// Core-internal: the real Env's serial executor, an Asio io_context on its own thread. The real
// network can run its I/O on one of these instead of a thread of its own (make_network_on).
#pragma once

#include <string>
#include <thread>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <pthread.h>

#include <tandem/core/env.h>

namespace tandem::detail {

class AsioExecutor final : public Executor {
 public:
  explicit AsioExecutor(const std::string& name) : work_(io_.get_executor()) {
    thread_ = std::thread([this, name] {
      pthread_setname_np(pthread_self(), name.substr(0, 15).c_str());
      io_.run();
    });
  }
  ~AsioExecutor() override {
    work_.reset();
    io_.stop();
    thread_.join();
  }
  void post(std::function<void()> task) override { boost::asio::post(io_, std::move(task)); }
  void post_after(std::chrono::microseconds delay, std::function<void()> task) override {
    auto timer = std::make_shared<boost::asio::steady_timer>(io_, delay);
    timer->async_wait([timer, task = std::move(task)](const boost::system::error_code& ec) {
      if (!ec) task();
    });
  }
  bool in_this_thread() const override { return std::this_thread::get_id() == thread_.get_id(); }
  boost::asio::io_context& io() { return io_; }

 private:
  boost::asio::io_context io_;
  boost::asio::executor_work_guard<boost::asio::io_context::executor_type> work_;
  std::thread thread_;
};

}  // namespace tandem::detail
