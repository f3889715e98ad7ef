// Logging: the one place spdlog is reached from. One line per significant event, carrying
// node id, partition and entity ref where they apply.
#pragma once

#include <spdlog/spdlog.h>

#include <cstdint>
#include <mutex>

namespace tandem::log {

// Sets the global level from a name ("trace".."off"); unknown names keep the current level.
void set_level(std::string_view name);

using spdlog::debug;
using spdlog::error;
using spdlog::info;
using spdlog::warn;

// Bounds the lines one kind of event may write, for events a stranger can cause at will (a
// connection that fails its handshake): at most `burst` lines per `window_ms`; the events past
// that are counted, and the next line admitted says how many went unlogged.
class Throttle {
 public:
  Throttle(int burst, int64_t window_ms) : burst_(burst), window_ms_(window_ms) {}

  // -1: do not log this one. Otherwise log it, with this many earlier ones not logged.
  int64_t admit();
  // The same, at a given time (milliseconds on any steady clock: an Env's, a test's).
  int64_t admit_at(int64_t now_ms);

 private:
  std::mutex mu_;
  const int burst_;
  const int64_t window_ms_;
  int64_t window_start_ms_ = INT64_MIN;
  int in_window_ = 0;
  int64_t suppressed_ = 0;
};

}  // namespace tandem::log
