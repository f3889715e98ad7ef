// A simulated power cut under the store: what a strict write acknowledged survives it; what a
// relaxed write acknowledged may not (and here does not: the check can tell the two apart).
#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

#include <rocksdb/file_system.h>

#include <tandem/partition/power_cut.h>
#include <tandem/partition/store.h>

#include "power_cut_impl.h"
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

TEST_CASE("power cut: a synced file whose folder was not synced since it was created or renamed is not there") {
  testing::TempDir dir("powercut-dir");
  std::filesystem::create_directories(dir.sub("db"));
  { std::ofstream(dir.sub("db/OLD")) << "from before"; }  // a file from before: durable as it is
  PowerCut cut;
  auto& fs = *cut.impl().fs;
  rocksdb::IOOptions io;
  auto write = [&](const std::string& name, const std::string& text) {
    std::unique_ptr<rocksdb::FSWritableFile> f;
    REQUIRE(fs.NewWritableFile(dir.sub("db/" + name), rocksdb::FileOptions(), &f, nullptr).ok());
    REQUIRE(f->Append(text, io, nullptr).ok());
    REQUIRE(f->Sync(io, nullptr).ok());
    REQUIRE(f->Close(io, nullptr).ok());
  };
  auto sync_dir = [&] {
    std::unique_ptr<rocksdb::FSDirectory> d;
    REQUIRE(fs.NewDirectory(dir.sub("db"), io, &d, nullptr).ok());
    REQUIRE(d->Fsync(io, nullptr).ok());
  };
  auto after_cut = [&](const std::string& name) -> std::optional<std::string> {
    std::filesystem::remove_all(dir.sub("cut"));
    REQUIRE(cut.copy_after_cut(dir.sub("db"), dir.sub("cut")).is_ok());
    std::ifstream in(dir.sub("cut/" + name));
    if (!in) return std::nullopt;
    return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  };
  write("A", "alpha");
  CHECK(after_cut("A") == std::nullopt);  // synced data, but the name is not durable yet
  CHECK(after_cut("OLD") == "from before");
  sync_dir();
  CHECK(after_cut("A") == "alpha");
  REQUIRE(fs.RenameFile(dir.sub("db/A"), dir.sub("db/B"), io, nullptr).ok());
  CHECK(after_cut("A") == "alpha");  // the rename is not durable until the folder is synced
  CHECK(after_cut("B") == std::nullopt);
  sync_dir();
  CHECK(after_cut("A") == std::nullopt);
  CHECK(after_cut("B") == "alpha");
}

TEST_CASE("power cut after a reopen (a new WAL and MANIFEST, folder fsyncs modelled): every strict write survives") {
  testing::TempDir dir("powercut-reopen");
  PowerCut cut;
  auto put = [](Store& s, int from, int to) {
    for (int i = from; i < to; ++i) {
      WriteBatch b;
      b.put(Cf::kState, "k" + std::to_string(i), "v" + std::to_string(i));
      REQUIRE(s.write(b).is_ok());
    }
  };
  {
    auto store = Store::open({dir.sub("db"), Durability::kStrict, &cut});
    REQUIRE(store.is_ok());
    put(**store, 0, 100);
  }
  auto store = Store::open({dir.sub("db"), Durability::kStrict, &cut});
  REQUIRE(store.is_ok());
  put(**store, 100, 200);
  REQUIRE(cut.copy_after_cut(dir.sub("db"), dir.sub("after-cut")).is_ok());
  auto after = Store::open({dir.sub("after-cut"), Durability::kStrict});
  REQUIRE_MESSAGE(after.is_ok(), after.status().to_string());
  int found = 0;
  for (int i = 0; i < 200; ++i) {
    auto v = (*after)->get(Cf::kState, "k" + std::to_string(i));
    REQUIRE(v.is_ok());
    if (v->has_value() && **v == "v" + std::to_string(i)) ++found;
  }
  CHECK(found == 200);
}

TEST_CASE("power cut while RocksDB flushes and compacts: every cut opens and holds every write acknowledged before it") {
  // The outbox family's memtables are 4 MiB: 64 KiB rows flush every ~64 writes and compact
  // every few flushes, so RocksDB's background threads create, sync, rename and delete files
  // while the cuts copy the folder, one cut after another until 1,280 rows were written.
  testing::TempDir dir("powercut-busy");
  PowerCut cut;
  auto store = Store::open({dir.sub("db"), Durability::kStrict, &cut});
  REQUIRE(store.is_ok());
  const std::string value(64 * 1024, 'v');
  auto key = [](int i) {
    char k[16];
    std::snprintf(k, sizeof k, "k%08d", i);
    return std::string(k);
  };
  std::atomic<int> acked{0};  // rows 0 .. acked-1 are acknowledged
  std::atomic<bool> stop{false}, failed{false};
  std::thread writer([&] {
    for (int i = 0; i < 4000 && !stop && !failed; ++i) {
      WriteBatch b;
      b.put(Cf::kOutbox, key(i), value);
      if (!(*store)->write(b).is_ok()) failed = true;
      acked = i + 1;
    }
  });
  struct StopWriter {  // also when a REQUIRE below throws: a joinable thread must not be destroyed
    std::atomic<bool>& stop;
    std::thread& t;
    ~StopWriter() {
      stop = true;
      if (t.joinable()) t.join();
    }
  } stop_writer{stop, writer};
  int cuts = 0, bad = 0;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (acked < 1280 && !failed && std::chrono::steady_clock::now() < deadline) {
    int before = acked;
    std::string to = dir.sub("cut");
    std::filesystem::remove_all(to);
    REQUIRE(cut.copy_after_cut(dir.sub("db"), to).is_ok());
    ++cuts;
    auto after = Store::open({to, Durability::kStrict});
    if (!after.is_ok()) {
      ++bad;
      FAIL_CHECK("cut " << cuts << " after " << before << " rows does not open: " << after.status().to_string());
      continue;
    }
    int found = 0;
    for (int i = 0; i < before; ++i) {
      auto v = (*after)->get(Cf::kOutbox, key(i));
      REQUIRE(v.is_ok());
      if (v->has_value() && (*v)->size() == value.size()) ++found;
    }
    if (found != before) ++bad;
    CHECK_MESSAGE(found == before, "cut " << cuts << ": " << found << " of " << before << " acknowledged rows");
  }
  stop = true;
  writer.join();
  REQUIRE_FALSE(failed.load());
  CHECK(acked >= 1280);
  CHECK(cuts >= 3);
  MESSAGE("POWERCUT busy: " << cuts << " cuts over " << acked.load() << " rows, " << bad << " bad");
}
