// Helpers shared by Tandem's tests: scratch directories and bounded waits.
#pragma once

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <random>
#include <string>
#include <thread>

namespace tandem::testing {

// A fresh directory under the system temp dir, removed when the object goes away.
class TempDir {
 public:
  explicit TempDir(const std::string& tag = "t") {
    std::random_device rd;
    path_ = std::filesystem::temp_directory_path() / ("tandem-" + tag + "-" + std::to_string(rd()) + std::to_string(rd()));
    std::filesystem::create_directories(path_);
  }
  // TANDEM_KEEP_TEMP=1 keeps the folder (node logs, RocksDB LOGs) for a look after a failure.
  ~TempDir() {
    if (std::getenv("TANDEM_KEEP_TEMP")) return;
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  std::string str() const { return path_.string(); }
  std::string sub(const std::string& name) const { return (path_ / name).string(); }

 private:
  std::filesystem::path path_;
};

// Polls `pred` every 5 ms until it holds or `limit` passes. Returns whether it held.
inline bool wait_until(const std::function<bool()>& pred, std::chrono::milliseconds limit = std::chrono::seconds(10)) {
  auto end = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < end) {
    if (pred()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return pred();
}

}  // namespace tandem::testing
