#include <doctest/doctest.h>

#include <tandem/core/log.h>

TEST_CASE("a log throttle admits a burst per window and reports what it held back") {
  tandem::log::Throttle t(3, 1'000);
  CHECK(t.admit_at(0) == 0);
  CHECK(t.admit_at(10) == 0);
  CHECK(t.admit_at(20) == 0);
  CHECK(t.admit_at(30) == -1);  // the burst is spent
  CHECK(t.admit_at(999) == -1);
  CHECK(t.admit_at(1'000) == 2);  // a new window: this line says two went unlogged
  CHECK(t.admit_at(1'001) == 0);
  CHECK(t.admit_at(1'002) == 0);
  CHECK(t.admit_at(1'003) == -1);
  CHECK(t.admit_at(5'000) == 1);
}
