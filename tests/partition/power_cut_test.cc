// A simulated power cut under the store: what a strict write acknowledged survives it; what a
// relaxed write acknowledged may not (and here does not: the check can tell the two apart).
#include <doctest/doctest.h>

#include <tandem/partition/power_cut.h>
#include <tandem/partition/store.h>

#include "test_util.h"

using namespace tandem;
using namespace tandem::partition;

namespace {

// Writes `n` acknowledged single-row batches, cuts the power while the store is open, opens
// the copy the cut left and counts the rows found.
int survivors(Durability d, int n) {
  testing::TempDir dir("powercut");
  PowerCut cut;
  {
    auto store = Store::open({dir.sub("db"), d, &cut});
    REQUIRE(store.is_ok());
    for (int i = 0; i < n; ++i) {
      WriteBatch b;
      b.put(Cf::kState, "k" + std::to_string(i), "v" + std::to_string(i));
      REQUIRE((*store)->write(b).is_ok());  // acknowledged
    }
    REQUIRE(cut.copy_after_cut(dir.sub("db"), dir.sub("after-cut")).is_ok());
  }
  auto after = Store::open({dir.sub("after-cut"), Durability::kStrict});
  REQUIRE_MESSAGE(after.is_ok(), after.status().to_string());
  int found = 0;
  for (int i = 0; i < n; ++i) {
    auto v = (*after)->get(Cf::kState, "k" + std::to_string(i));
    REQUIRE(v.is_ok());
    if (v->has_value() && **v == "v" + std::to_string(i)) ++found;
  }
  return found;
}

}  // namespace

TEST_CASE("power cut: every strict write acknowledged survives, 5 cuts") {
  for (int n : {1, 7, 50, 200, 500}) {
    CAPTURE(n);
    CHECK(survivors(Durability::kStrict, n) == n);
  }
}

TEST_CASE("power cut: relaxed writes acknowledged but never synced are lost (the simulation drops unsynced data)") {
  int found = survivors(Durability::kRelaxed, 200);
  MESSAGE("POWERCUT relaxed: " << found << " of 200 acknowledged writes survived");
  CHECK(found < 200);
}
