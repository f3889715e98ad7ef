#include <tandem/core/histogram.h>

#include <bit>
#include <sstream>

namespace tandem {

// Values 0..kSub-1 get one bucket each; above, a power of two 2^e (e >= 2) is split into kSub
// buckets by the two bits after the leading one.
int Histogram::bucket(int64_t us) {
  if (us < kSub) return us < 0 ? 0 : static_cast<int>(us);
  auto v = static_cast<uint64_t>(us);
  int e = 63 - std::countl_zero(v);  // >= 2
  int sub = static_cast<int>((v >> (e - 2)) & (kSub - 1));
  int b = (e - 1) * kSub + sub;
  return b < kBuckets ? b : kBuckets - 1;
}

uint64_t Histogram::upper_us(int b) {
  if (b < kSub) return static_cast<uint64_t>(b);
  if (b >= kBuckets - 1) return UINT64_MAX;
  int e = b / kSub + 1;
  uint64_t sub = static_cast<uint64_t>(b % kSub);
  return (uint64_t{1} << e) + ((sub + 1) << (e - 2)) - 1;
}

Histogram::Snapshot Histogram::snapshot() const {
  Snapshot s;
  for (int i = 0; i < kBuckets; ++i) s.counts[static_cast<size_t>(i)] = counts_[static_cast<size_t>(i)].load(std::memory_order_relaxed);
  s.sum_us = sum_us_.load(std::memory_order_relaxed);
  return s;
}

uint64_t Histogram::Snapshot::count() const {
  uint64_t n = 0;
  for (auto c : counts) n += c;
  return n;
}

double Histogram::Snapshot::quantile_us(double q) const {
  uint64_t n = count();
  if (n == 0) return 0;
  auto rank = static_cast<uint64_t>(q * static_cast<double>(n - 1)) + 1;
  uint64_t seen = 0;
  for (int i = 0; i < kBuckets; ++i) {
    seen += counts[static_cast<size_t>(i)];
    if (seen >= rank) return i == kBuckets - 1 ? static_cast<double>(upper_us(kBuckets - 2)) : static_cast<double>(upper_us(i));
  }
  return static_cast<double>(upper_us(kBuckets - 2));
}

Histogram::Snapshot Histogram::Snapshot::minus(const Snapshot& earlier) const {
  Snapshot d;
  for (size_t i = 0; i < counts.size(); ++i) d.counts[i] = counts[i] >= earlier.counts[i] ? counts[i] - earlier.counts[i] : 0;
  d.sum_us = sum_us >= earlier.sum_us ? sum_us - earlier.sum_us : 0;
  return d;
}

std::string Histogram::Snapshot::encode() const {
  std::ostringstream out;
  out << count() << ' ' << sum_us;
  for (auto c : counts) out << ' ' << c;
  return out.str();
}

bool Histogram::Snapshot::decode(const std::string& text, Snapshot* out) {
  std::istringstream in(text);
  uint64_t n = 0;
  Snapshot s;
  if (!(in >> n >> s.sum_us)) return false;
  for (auto& c : s.counts)
    if (!(in >> c)) return false;
  if (s.count() != n) return false;
  *out = s;
  return true;
}

}  // namespace tandem
