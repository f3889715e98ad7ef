#include <tandem/partition/store.h>

#include <atomic>
#include <cerrno>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <doctest/doctest.h>

#include <tandem/core/ids.h>
#include <tandem/partition/placement.h>

#include "test_util.h"

using namespace tandem;
using namespace tandem::partition;

namespace {
// A relaxed store in `dir` holding one committed row of the state family.
std::unique_ptr<Store> store_with_row(const testing::TempDir& dir, std::string_view key, std::string_view value) {
  auto store = Store::open({dir.str(), Durability::kRelaxed});
  REQUIRE(store.is_ok());
  WriteBatch b;
  b.put(Cf::kState, key, value);
  REQUIRE((*store)->write(b).is_ok());
  return std::move(*store);
}
}  // namespace

TEST_CASE("a batch writes to several column families atomically and survives reopening") {
  testing::TempDir dir("store");
  {
    auto store = Store::open({dir.str(), Durability::kStrict});
    REQUIRE(store.is_ok());
    WriteBatch b;
    b.put(Cf::kState, "a", "1");
    b.put(Cf::kOutbox, "a", "2");
    b.del(Cf::kTimer, "a");
    REQUIRE((*store)->write(b).is_ok());
  }
  auto store = Store::open({dir.str(), Durability::kRelaxed});
  REQUIRE(store.is_ok());
  CHECK(*(*store)->get(Cf::kState, "a").value() == "1");
  CHECK(*(*store)->get(Cf::kOutbox, "a").value() == "2");
  CHECK_FALSE((*store)->get(Cf::kActivity, "a").value().has_value());
}

TEST_CASE("scan visits a key range in order") {
  testing::TempDir dir("store");
  auto store = Store::open({dir.str(), Durability::kRelaxed});
  REQUIRE(store.is_ok());
  WriteBatch b;
  for (auto k : {"b", "a", "c", "d"}) b.put(Cf::kState, k, k);
  REQUIRE((*store)->write(b).is_ok());
  std::string seen;
  REQUIRE((*store)->scan(Cf::kState, "b", "d", [&](std::string_view k, std::string_view) {
    seen += k;
    return true;
  }).is_ok());
  CHECK(seen == "bc");
}

TEST_CASE("the outbox family (an append-only memtable) scans in key order with deletes applied, before and after reopening") {
  testing::TempDir dir("store");
  auto scan_all = [](Store& st, std::string_view begin, std::string_view end) {
    std::string seen;
    REQUIRE(st.scan(Cf::kOutbox, begin, end, [&](std::string_view k, std::string_view v) {
      seen += std::string(k) + "=" + std::string(v) + " ";
      return true;
    }).is_ok());
    return seen;
  };
  {
    auto store = Store::open({dir.str(), Durability::kStrict});
    REQUIRE(store.is_ok());
    for (auto k : {"m", "c", "x", "a", "k", "e"}) {  // out of order, one batch each
      WriteBatch b;
      b.put(Cf::kOutbox, k, "1");
      REQUIRE((*store)->write(b).is_ok());
    }
    WriteBatch b;
    b.del(Cf::kOutbox, "c");        // acked
    b.put(Cf::kOutbox, "k", "2");   // written again: the newest value wins
    b.del_range(Cf::kOutbox, "w", "z");  // a partition that left
    REQUIRE((*store)->write(b).is_ok());
    CHECK(scan_all(**store, "", "") == "a=1 e=1 k=2 m=1 ");
    CHECK(scan_all(**store, "b", "l") == "e=1 k=2 ");
  }
  auto store = Store::open({dir.str(), Durability::kStrict});  // replayed from the WAL
  REQUIRE(store.is_ok());
  CHECK(scan_all(**store, "", "") == "a=1 e=1 k=2 m=1 ");
  REQUIRE((*store)->compact(Cf::kOutbox).is_ok());
  CHECK(scan_all(**store, "", "") == "a=1 e=1 k=2 m=1 ");
}

TEST_CASE("a view reads its own staged writes before they commit, and evicts only committed rows") {
  testing::TempDir dir("view");
  auto store = Store::open({dir.str(), Durability::kRelaxed});
  REQUIRE(store.is_ok());
  View view(**store, 2);
  Txn t(view);
  t.put(Cf::kState, "k1", "v1");
  CHECK(*t.get(Cf::kState, "k1").value() == "v1");  // read-your-writes inside the txn
  view.apply(std::move(t));
  for (int i = 0; i < 5; ++i) {
    Txn more(view);
    more.put(Cf::kState, "x" + std::to_string(i), "y");
    view.apply(std::move(more));
  }
  CHECK(*view.get(Cf::kState, "k1").value() == "v1");                      // staged, not yet in RocksDB
  CHECK_FALSE((*store)->get(Cf::kState, "k1").value().has_value());
  auto sealed = view.seal();
  CHECK(view.cached_entries() == 6);  // pinned entries are never evicted
  REQUIRE((*store)->write(sealed.batch).is_ok());
  view.committed(sealed.group);
  CHECK(view.cached_entries() == 2);  // now bounded by the cache size
  CHECK(*view.get(Cf::kState, "k1").value() == "v1");  // read back from RocksDB
}

TEST_CASE("a key written several times in one group is one write of its last value, and a sealed group's keys start over") {
  testing::TempDir dir("view");
  auto store = store_with_row(dir, "gone", "old");
  View view(*store, 10);
  auto stage = [&](const std::string& k, std::optional<std::string> v) {
    Txn t(view);
    if (v)
      t.put(Cf::kState, k, *v);
    else
      t.del(Cf::kState, k);
    view.apply(std::move(t));
  };
  stage("a", "1");
  stage("b", "1");
  stage("a", "2");
  stage("gone", "new");
  stage("gone", std::nullopt);  // put then delete: a delete
  stage("c", std::nullopt);
  stage("c", "3");  // delete then put: a put
  stage("a", "4");
  CHECK(view.open_writes() == 4);
  CHECK(*view.get(Cf::kState, "a").value() == "4");
  CHECK_FALSE(view.get(Cf::kState, "gone").value().has_value());
  auto sealed = view.seal();
  CHECK(sealed.batch.count() == 4);
  stage("a", "5");  // the next group: a write of its own, not a change to the sealed batch
  CHECK(view.open_writes() == 1);
  REQUIRE(store->write(sealed.batch).is_ok());
  view.committed(sealed.group);
  CHECK(*store->get(Cf::kState, "a").value() == "4");
  CHECK(*store->get(Cf::kState, "b").value() == "1");
  CHECK(*store->get(Cf::kState, "c").value() == "3");
  CHECK_FALSE(store->get(Cf::kState, "gone").value().has_value());
  auto next = view.seal();
  REQUIRE(store->write(next.batch).is_ok());
  view.committed(next.group);
  CHECK(*store->get(Cf::kState, "a").value() == "5");
}

TEST_CASE("a view evicts the least recently read row, and a row written by two sealed groups stays until both commit") {
  testing::TempDir dir("view");
  auto store = Store::open({dir.str(), Durability::kRelaxed});
  REQUIRE(store.is_ok());
  Store& st = **store;
  WriteBatch b;
  for (auto k : {"a", "b", "c"}) b.put(Cf::kState, k, "old");
  REQUIRE(st.write(b).is_ok());
  View view(st, 2);
  // Changing the store underneath shows what the view still holds: a cached row reads "old".
  auto change_store = [&] {
    WriteBatch w;
    for (auto k : {"a", "b", "c"}) w.put(Cf::kState, k, "new");
    REQUIRE(st.write(w).is_ok());
  };
  CHECK(*view.get(Cf::kState, "a").value() == "old");
  CHECK(*view.get(Cf::kState, "b").value() == "old");
  CHECK(*view.get(Cf::kState, "a").value() == "old");  // a is now the most recent
  CHECK(*view.get(Cf::kState, "c").value() == "old");  // evicts b, the least recent
  change_store();
  CHECK(view.cached_entries() == 2);
  CHECK(*view.get(Cf::kState, "a").value() == "old");
  CHECK(*view.get(Cf::kState, "c").value() == "old");
  CHECK(*view.get(Cf::kState, "b").value() == "new");  // was evicted: read again (evicts a)
  CHECK(*view.get(Cf::kState, "a").value() == "new");

  // Two groups write k before either commits: k stays pinned until the second has committed.
  View pinned(st, 0);
  auto stage = [&](const std::string& v) {
    Txn t(pinned);
    t.put(Cf::kState, "k", v);
    pinned.apply(std::move(t));
  };
  stage("1");
  auto g1 = pinned.seal();
  stage("2");
  auto g2 = pinned.seal();
  REQUIRE(st.write(g1.batch).is_ok());
  pinned.committed(g1.group);
  CHECK(pinned.cached_entries() == 1);  // capacity 0, still held by g2
  CHECK(*pinned.get(Cf::kState, "k").value() == "2");
  REQUIRE(st.write(g2.batch).is_ok());
  pinned.committed(g2.group);
  CHECK(pinned.cached_entries() == 0);
  CHECK(*pinned.get(Cf::kState, "k").value() == "2");
}

TEST_CASE("outbox rows are written through the view without a cached copy") {
  testing::TempDir dir("view");
  auto store = Store::open({dir.str(), Durability::kRelaxed});
  REQUIRE(store.is_ok());
  View view(**store, 10);
  Txn t(view);
  t.put(Cf::kOutbox, "o1", "env");
  t.put(Cf::kState, "s", "v");
  view.apply(std::move(t));
  CHECK(view.open_writes() == 2);
  CHECK(view.cached_entries() == 1);  // the state row only
  auto g = view.seal();
  REQUIRE((*store)->write(g.batch).is_ok());
  view.committed(g.group);
  CHECK(*view.get(Cf::kOutbox, "o1").value() == "env");
  CHECK(view.cached_entries() == 1);
  Txn d(view);
  d.del(Cf::kOutbox, "o1");
  view.apply(std::move(d));
  auto g2 = view.seal();
  REQUIRE((*store)->write(g2.batch).is_ok());
  view.committed(g2.group);
  CHECK_FALSE(view.get(Cf::kOutbox, "o1").value().has_value());
}

TEST_CASE("a staged delete hides the committed value") {
  testing::TempDir dir("view");
  auto store = store_with_row(dir, "k", "v");
  View view(*store, 10);
  Txn t(view);
  t.del(Cf::kState, "k");
  view.apply(std::move(t));
  CHECK_FALSE(view.get(Cf::kState, "k").value().has_value());
}

TEST_CASE("placement prefixes keep a hash slot contiguous and decode back to the ref") {
  Placement p;
  p.set_scheme("order", {TypeScheme::Kind::kHash, 16});
  p.set_scheme("item", {TypeScheme::Kind::kRange, 0});
  auto a = p.entity_prefix({"item", "a"}), b = p.entity_prefix({"item", "b"});
  CHECK(a < b);  // range types keep key order
  EntityRef ref;
  std::string_view rest;
  auto k = p.entity_prefix({"order", std::string("o\0x", 3)}) + "s";
  REQUIRE(p.decode_entity(k, ref, rest));
  CHECK(ref == EntityRef{"order", std::string("o\0x", 3)});
  CHECK(rest == "s");
  CHECK(p.slot_of("order", "o1") < 16);
}

TEST_CASE("opening a locked store is a clear error") {
  testing::TempDir dir("lock");
  auto first = Store::open({dir.str(), Durability::kRelaxed});
  REQUIRE(first.is_ok());
  auto second = Store::open({dir.str(), Durability::kRelaxed});
  CHECK(second.status().code() == Code::kInternal);
  CHECK(second.status().message().find("cannot open store") != std::string::npos);
  CHECK(parse_durability("strcit").status().code() == Code::kInvalidArgument);
}

TEST_CASE("a compaction drops the rows the drop hook names, in the families it names, and nothing else") {
  testing::TempDir dir("store");
  StoreOptions so{dir.str(), Durability::kStrict};
  std::atomic<int> asked{0};
  so.drop_on_compaction = [&](Cf cf, std::string_view key, std::string_view value) {
    asked++;
    return cf == Cf::kActivity && value == "old" && key != "keep";
  };
  auto store = Store::open(so);
  REQUIRE(store.is_ok());
  WriteBatch b;
  b.put(Cf::kActivity, "a", "old");
  b.put(Cf::kActivity, "b", "new");
  b.put(Cf::kActivity, "keep", "old");
  b.put(Cf::kState, "a", "old");  // another family: the hook says keep
  REQUIRE((*store)->write(b).is_ok());
  REQUIRE((*store)->compact(Cf::kActivity).is_ok());
  REQUIRE((*store)->compact(Cf::kState).is_ok());
  CHECK(asked.load() >= 4);
  CHECK_FALSE((*store)->get(Cf::kActivity, "a").value().has_value());
  CHECK(*(*store)->get(Cf::kActivity, "b").value() == "new");
  CHECK(*(*store)->get(Cf::kActivity, "keep").value() == "old");
  CHECK(*(*store)->get(Cf::kState, "a").value() == "old");
}

TEST_CASE("RocksDB's flush and compaction threads run at the background nice value, the caller's thread does not") {
  testing::TempDir dir("store");
  StoreOptions so{dir.str(), Durability::kStrict};
  REQUIRE(so.background_nice == 10);
  errno = 0;
  int caller_before = getpriority(PRIO_PROCESS, static_cast<id_t>(syscall(SYS_gettid)));
  REQUIRE(errno == 0);
  auto store = Store::open(so);
  REQUIRE(store.is_ok());
  WriteBatch b;
  b.put(Cf::kState, "a", "1");
  REQUIRE((*store)->write(b).is_ok());
  REQUIRE((*store)->compact(Cf::kState).is_ok());  // a flush, then a compaction, on RocksDB's threads
  int lowered = 0;
  for (auto& task : std::filesystem::directory_iterator("/proc/self/task")) {
    std::string comm;
    std::ifstream(task.path() / "comm") >> comm;
    if (comm.rfind("rocksdb:", 0) != 0) continue;
    errno = 0;
    int nice = getpriority(PRIO_PROCESS, static_cast<id_t>(std::stoi(task.path().filename().string())));
    if (errno == 0 && nice >= 10) ++lowered;
  }
  CHECK(lowered >= 1);
  CHECK(getpriority(PRIO_PROCESS, static_cast<id_t>(syscall(SYS_gettid))) == caller_before);
}
