// A latency histogram in microseconds: four buckets per power of two (about 19% apart),
// recorded lock-free from any thread; snapshots subtract, so a window's quantiles come from two
// snapshots taken around it.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <string>

namespace tandem {

class Histogram {
 public:
  static constexpr int kSub = 4;                  // buckets per power of two
  static constexpr int kBuckets = 27 * kSub + 1;  // up to 2^27 us (134 s); the last holds the rest

  struct Snapshot {
    std::array<uint64_t, kBuckets> counts{};
    uint64_t sum_us = 0;
    uint64_t count() const;
    // The upper bound of the bucket holding the q-quantile (0 when empty).
    double quantile_us(double q) const;
    Snapshot minus(const Snapshot& earlier) const;
    // "count sum b0 b1 ..." and back (for the admin request that carries it).
    std::string encode() const;
    static bool decode(const std::string& text, Snapshot* out);
  };

  void record(int64_t us) {
    counts_[static_cast<size_t>(bucket(us))].fetch_add(1, std::memory_order_relaxed);
    sum_us_.fetch_add(static_cast<uint64_t>(us < 0 ? 0 : us), std::memory_order_relaxed);
  }
  Snapshot snapshot() const;

  static int bucket(int64_t us);
  // The largest value a bucket holds (inclusive).
  static uint64_t upper_us(int b);

 private:
  std::array<std::atomic<uint64_t>, kBuckets> counts_{};
  std::atomic<uint64_t> sum_us_{0};
};

}  // namespace tandem
