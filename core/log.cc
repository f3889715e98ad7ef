#include <tandem/core/log.h>

#include <chrono>

namespace tandem::log {

void set_level(std::string_view name) {
  auto lvl = spdlog::level::from_str(std::string(name));
  if (lvl != spdlog::level::off || name == "off") spdlog::set_level(lvl);
}

int64_t Throttle::admit() {
  using namespace std::chrono;
  return admit_at(duration_cast<milliseconds>(steady_clock::now().time_since_epoch()).count());
}

int64_t Throttle::admit_at(int64_t now_ms) {
  std::lock_guard lock(mu_);
  if (window_start_ms_ == INT64_MIN || now_ms - window_start_ms_ >= window_ms_) {
    window_start_ms_ = now_ms;
    in_window_ = 0;
  }
  if (in_window_ >= burst_) {
    ++suppressed_;
    return -1;
  }
  ++in_window_;
  int64_t skipped = suppressed_;
  suppressed_ = 0;
  return skipped;
}

}  // namespace tandem::log
