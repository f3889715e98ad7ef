#include <doctest/doctest.h>

#include <tandem/core/histogram.h>

using tandem::Histogram;

TEST_CASE("histogram buckets hold their values and quantiles come from bucket bounds") {
  for (int64_t v : {0, 1, 3, 4, 5, 7, 8, 9, 10, 100, 1000, 4095, 4096, 123456, 1 << 26}) {
    int b = Histogram::bucket(v);
    CAPTURE(v);
    CHECK(Histogram::upper_us(b) >= static_cast<uint64_t>(v));
    if (b > 0) CHECK(Histogram::upper_us(b - 1) < static_cast<uint64_t>(v));
  }
  CHECK(Histogram::bucket(-5) == 0);
  CHECK(Histogram::bucket(INT64_MAX) == Histogram::kBuckets - 1);

  Histogram h;
  for (int i = 1; i <= 1000; ++i) h.record(i);  // 1..1000 us
  auto s = h.snapshot();
  CHECK(s.count() == 1000);
  CHECK(s.sum_us == 500500);
  // Buckets are about 19% wide: the quantile is the bound of the bucket holding it.
  CHECK(s.quantile_us(0.5) >= 500);
  CHECK(s.quantile_us(0.5) <= 600);
  CHECK(s.quantile_us(0.99) >= 990);
  CHECK(s.quantile_us(0.99) <= 1200);

  for (int i = 0; i < 100; ++i) h.record(50'000);
  auto window = h.snapshot().minus(s);
  CHECK(window.count() == 100);
  CHECK(window.quantile_us(0.5) >= 50'000);
  CHECK(window.quantile_us(0.5) <= 60'000);

  Histogram::Snapshot back;
  REQUIRE(Histogram::Snapshot::decode(window.encode(), &back));
  CHECK(back.counts == window.counts);
  CHECK(back.sum_us == window.sum_us);
  CHECK_FALSE(Histogram::Snapshot::decode("3 10 1 1", &back));       // too few buckets
  CHECK_FALSE(Histogram::Snapshot::decode("garbage", &back));
  CHECK(Histogram::Snapshot{}.quantile_us(0.99) == 0);
}
