#include <tandem/partition/store.h>

#include <cassert>
#include <cerrno>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <rocksdb/compaction_filter.h>
#include <rocksdb/db.h>
#include <rocksdb/filter_policy.h>
#include <rocksdb/listener.h>
#include <rocksdb/options.h>

#include "power_cut_impl.h"
#include <rocksdb/table.h>
#include <rocksdb/write_batch.h>

#include <tandem/core/log.h>

namespace tandem::partition {

std::string_view cf_name(Cf cf) {
  switch (cf) {
    case Cf::kState: return "state";
    case Cf::kActivity: return "activity";
    case Cf::kOutbox: return "outbox";
    case Cf::kTimer: return "timer";
    case Cf::kMeta: return "meta";
  }
  return "?";
}

std::string_view durability_name(Durability d) { return d == Durability::kStrict ? "strict" : "relaxed"; }

Result<Durability> parse_durability(std::string_view s) {
  if (s == "strict") return Durability::kStrict;
  if (s == "relaxed") return Durability::kRelaxed;
  return Status::invalid_argument("unknown durability '" + std::string(s) + "' (expected strict or relaxed)");
}

struct WriteBatch::Rep {
  rocksdb::WriteBatch wb;
  rocksdb::ColumnFamilyHandle* cfs[kNumCfs] = {};  // filled in by RocksStore::write
  struct Op {
    Cf cf;
    bool del;
    std::string key, value;  // for a range delete: [key, value)
    bool range = false;
  };
  // Writes are recorded as ops and resolved to column-family handles at write time, so a
  // batch can be built without a Store at hand.
  std::vector<Op> ops;
  size_t bytes = 0;
};

WriteBatch::WriteBatch() : rep_(std::make_unique<Rep>()) {}
WriteBatch::~WriteBatch() = default;
WriteBatch::WriteBatch(WriteBatch&&) noexcept = default;
WriteBatch& WriteBatch::operator=(WriteBatch&&) noexcept = default;
void WriteBatch::put(Cf cf, std::string_view key, std::string_view value) {
  rep_->bytes += key.size() + value.size();
  rep_->ops.push_back({cf, false, std::string(key), std::string(value)});
}
void WriteBatch::del(Cf cf, std::string_view key) {
  rep_->bytes += key.size();
  rep_->ops.push_back({cf, true, std::string(key), {}});
}
void WriteBatch::replace(size_t index, const std::optional<std::string>& value) {
  auto& op = rep_->ops.at(index);
  assert(!op.range);
  rep_->bytes -= op.value.size();
  op.del = !value;
  op.value = value ? *value : std::string();
  rep_->bytes += op.value.size();
}
void WriteBatch::del_range(Cf cf, std::string_view begin, std::string_view end) {
  rep_->bytes += begin.size() + end.size();
  rep_->ops.push_back({cf, true, std::string(begin), std::string(end), true});
}
size_t WriteBatch::count() const { return rep_->ops.size(); }
size_t WriteBatch::bytes() const { return rep_->bytes; }
void WriteBatch::for_each(const std::function<void(const Op&)>& fn) const {
  for (auto& op : rep_->ops) {
    auto kind = op.range ? Op::Kind::kDelRange : op.del ? Op::Kind::kDel : Op::Kind::kPut;
    fn(Op{kind, op.cf, op.key, op.value});
  }
}
void WriteBatch::clear() {
  rep_->ops.clear();
  rep_->bytes = 0;
}

// Asks a DropFn about each row of one family as a compaction passes it.
class DropFilter final : public rocksdb::CompactionFilter {
 public:
  DropFilter(Cf cf, DropFn drop) : cf_(cf), drop_(std::move(drop)) {}
  bool Filter(int /*level*/, const rocksdb::Slice& key, const rocksdb::Slice& value, std::string* /*new_value*/,
              bool* /*value_changed*/) const override {
    return drop_(cf_, std::string_view(key.data(), key.size()), std::string_view(value.data(), value.size()));
  }
  const char* Name() const override { return "tandem.DropFilter"; }

 private:
  Cf cf_;
  DropFn drop_;
};

class RocksStore final : public Store {
 public:
  RocksStore(rocksdb::DB* db, std::vector<rocksdb::ColumnFamilyHandle*> handles, Durability d,
             std::vector<std::unique_ptr<DropFilter>> filters)
      : db_(db), handles_(std::move(handles)), durability_(d), filters_(std::move(filters)) {}
  ~RocksStore() override {
    for (auto* h : handles_) db_->DestroyColumnFamilyHandle(h);
    delete db_;  // before the filters it uses
  }

  Status compact(Cf cf) override {
    rocksdb::CompactRangeOptions o;
    o.bottommost_level_compaction = rocksdb::BottommostLevelCompaction::kForce;
    auto s = db_->CompactRange(o, h(cf), nullptr, nullptr);
    if (!s.ok()) return Status::internal("rocksdb compact: " + s.ToString());
    return Status::ok();
  }

  Durability durability() const override { return durability_; }

  Result<std::optional<std::string>> get(Cf cf, std::string_view key) override {
    std::string v;
    auto s = db_->Get(rocksdb::ReadOptions(), h(cf), rocksdb::Slice(key.data(), key.size()), &v);
    if (s.IsNotFound()) return std::optional<std::string>();
    if (!s.ok()) return Status::internal("rocksdb get: " + s.ToString());
    return std::optional<std::string>(std::move(v));
  }

  Status scan(Cf cf, std::string_view begin, std::string_view end, const ScanFn& fn) override {
    rocksdb::ReadOptions ro;
    rocksdb::Slice upper(end.data(), end.size());
    if (!end.empty()) ro.iterate_upper_bound = &upper;
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(ro, h(cf)));
    for (it->Seek(rocksdb::Slice(begin.data(), begin.size())); it->Valid(); it->Next()) {
      auto k = it->key();
      auto v = it->value();
      if (!fn(std::string_view(k.data(), k.size()), std::string_view(v.data(), v.size()))) break;
    }
    if (!it->status().ok()) return Status::internal("rocksdb scan: " + it->status().ToString());
    return Status::ok();
  }

  Status write(WriteBatch& batch) override { return write(batch, durability_ == Durability::kStrict); }

  Status write(WriteBatch& batch, bool sync) override {
    auto& rep = *batch.rep_;
    rep.wb.Clear();
    for (auto& op : rep.ops) {
      rocksdb::Status s = op.range ? rep.wb.DeleteRange(h(op.cf), op.key, op.value)
                          : op.del ? rep.wb.Delete(h(op.cf), op.key)
                                   : rep.wb.Put(h(op.cf), op.key, op.value);
      if (!s.ok()) return Status::internal("rocksdb batch: " + s.ToString());
    }
    rocksdb::WriteOptions wo;
    wo.sync = sync;
    auto s = db_->Write(wo, &rep.wb);
    if (!s.ok()) return Status::internal("rocksdb write: " + s.ToString());
    return Status::ok();
  }

  uint64_t approximate_bytes() override {
    uint64_t total = 0, v = 0;
    for (auto* hd : handles_)
      if (db_->GetIntProperty(hd, "rocksdb.estimate-live-data-size", &v)) total += v;
    return total;
  }

 private:
  rocksdb::ColumnFamilyHandle* h(Cf cf) { return handles_[static_cast<size_t>(cf) + 1]; }
  rocksdb::DB* db_;
  std::vector<rocksdb::ColumnFamilyHandle*> handles_;  // [default, state, activity, outbox, timer, meta]
  Durability durability_;
  std::vector<std::unique_ptr<DropFilter>> filters_;
};

namespace {
// Lowers the priority of the thread that runs a flush or a compaction, once per thread (an
// unprivileged thread can raise its nice value but not lower it again, and RocksDB's pool
// threads only ever run background jobs). RocksDB calls these on the job's own thread.
class BackgroundPriority final : public rocksdb::EventListener {
 public:
  explicit BackgroundPriority(int nice) : nice_(nice) {}
  void OnFlushBegin(rocksdb::DB*, const rocksdb::FlushJobInfo&) override { lower(); }
  void OnCompactionBegin(rocksdb::DB*, const rocksdb::CompactionJobInfo&) override { lower(); }

 private:
  void lower() const {
    thread_local bool lowered = false;
    if (lowered) return;
    lowered = true;
    // On Linux, PRIO_PROCESS with a thread id applies to that thread alone. A process started
    // at a higher nice value keeps it (going back down would need privileges).
    auto tid = static_cast<id_t>(syscall(SYS_gettid));
    errno = 0;
    int now = getpriority(PRIO_PROCESS, tid);
    if (errno == 0 && now >= nice_) return;
    if (setpriority(PRIO_PROCESS, tid, nice_) != 0)
      log::warn("cannot lower a RocksDB background thread to nice {}: errno {}", nice_, errno);
  }
  int nice_;
};
}  // namespace

Result<std::unique_ptr<Store>> Store::open(const StoreOptions& opts) {
  rocksdb::Options o;
  o.create_if_missing = true;
  o.create_missing_column_families = true;
  o.max_background_jobs = 2;
  o.bytes_per_sync = 1 << 20;
  // The outbox family's memtable is a vector (below), which takes no concurrent inserts. The
  // node writes from one committer at a time anyway.
  o.allow_concurrent_memtable_write = false;
  if (opts.background_nice > 0) o.listeners.push_back(std::make_shared<BackgroundPriority>(opts.background_nice));
  if (opts.power_cut) o.env = opts.power_cut->impl().env.get();
  rocksdb::ColumnFamilyOptions cfo;
  cfo.write_buffer_size = 32 << 20;
  rocksdb::BlockBasedTableOptions t;
  t.filter_policy.reset(rocksdb::NewBloomFilterPolicy(10));
  cfo.table_factory.reset(rocksdb::NewBlockBasedTableFactory(t));
  std::vector<rocksdb::ColumnFamilyDescriptor> cfs;
  cfs.emplace_back(rocksdb::kDefaultColumnFamilyName, cfo);
  std::vector<std::unique_ptr<DropFilter>> filters;
  for (int i = 0; i < kNumCfs; ++i) {
    auto o = cfo;
    if (opts.drop_on_compaction) {
      filters.push_back(std::make_unique<DropFilter>(static_cast<Cf>(i), opts.drop_on_compaction));
      o.compaction_filter = filters.back().get();
    }
    // Outbox rows are written once and deleted once (a put at send, a delete at ack) and read
    // only by scans (recovery, a move's export, inspect): an append-only memtable takes each
    // write without the skip list's ordered insert. A scan copies and sorts it, and a move scans
    // the outbox while its partition is frozen, so the family's memtables stay small (with
    // 32 MiB ones, the demo's p99 during a move storm was 3.3-4.6 times its steady p99 in 8 of 8
    // runs, against 2.1-3.9 with 4 MiB).
    if (static_cast<Cf>(i) == Cf::kOutbox) {
      o.memtable_factory = std::make_shared<rocksdb::VectorRepFactory>();
      o.write_buffer_size = 4 << 20;
    }
    cfs.emplace_back(std::string(cf_name(static_cast<Cf>(i))), o);
  }
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::DB* db = nullptr;
  auto s = rocksdb::DB::Open(rocksdb::DBOptions(o), opts.path, cfs, &handles, &db);
  if (!s.ok()) return Status::internal("cannot open store at " + opts.path + ": " + s.ToString());
  std::unique_ptr<Store> store = std::make_unique<RocksStore>(db, std::move(handles), opts.durability, std::move(filters));
  return store;
}

// ---- Txn and View ----

namespace {
std::string cf_key(Cf cf, std::string_view key) {
  std::string k;
  k.reserve(key.size() + 1);
  k.push_back(static_cast<char>(cf));
  k.append(key);
  return k;
}
}  // namespace

Result<std::optional<std::string>> Txn::get(Cf cf, std::string_view key) {
  for (auto it = writes_.rbegin(); it != writes_.rend(); ++it)
    if (it->ckey[0] == static_cast<char>(cf) && std::string_view(it->ckey).substr(1) == key) return it->value;
  return view_->get(cf, key);
}

void Txn::put(Cf cf, std::string_view key, std::string value) { writes_.push_back({cf_key(cf, key), std::move(value)}); }

void Txn::del(Cf cf, std::string_view key) { writes_.push_back({cf_key(cf, key), std::nullopt}); }

const std::string& View::lookup_key(Cf cf, std::string_view key) {
  scratch_.assign(1, static_cast<char>(cf));
  scratch_.append(key);
  return scratch_;
}

void View::lru_push(Node* n) {
  auto& e = n->second;
  e.older = lru_newest_;
  e.newer = nullptr;
  if (lru_newest_) lru_newest_->second.newer = n;
  lru_newest_ = n;
  if (!lru_oldest_) lru_oldest_ = n;
  ++lru_size_;
}

void View::lru_unlink(Node* n) {
  auto& e = n->second;
  (e.newer ? e.newer->second.older : lru_newest_) = e.older;
  (e.older ? e.older->second.newer : lru_oldest_) = e.newer;
  e.newer = e.older = nullptr;
  --lru_size_;
}

Result<std::optional<std::string>> View::get(Cf cf, std::string_view key) {
  if (cf == Cf::kOutbox) return store_.get(cf, key);  // written through, never cached
  auto it = map_.find(lookup_key(cf, key));
  if (it != map_.end()) {
    Node* n = &*it;
    if (n->second.pins == 0 && n != lru_newest_) {
      lru_unlink(n);
      lru_push(n);
    }
    return n->second.value;
  }
  auto r = store_.get(cf, key);
  if (!r) return r;
  Node* n = &*map_.emplace(scratch_, Entry{*r}).first;
  lru_push(n);
  evict();
  return r;
}

void View::apply(Txn&& txn) {
  uint64_t g = next_group_;
  for (auto& w : txn.writes_) {
    auto cf = static_cast<Cf>(w.ckey[0]);
    std::string_view key = std::string_view(w.ckey).substr(1);
    if (cf == Cf::kOutbox) {
      if (w.value)
        open_.put(cf, key, *w.value);
      else
        open_.del(cf, key);
      continue;
    }
    auto it = map_.find(w.ckey);
    if (it != map_.end() && it->second.pins > 0 && it->second.group == g) {
      // Written before in this open group (the same entity's state by several transitions, a
      // reply row set pending then done): the batch keeps one write per key, the last.
      open_.replace(it->second.open_op, w.value);
      it->second.value = std::move(w.value);
      continue;
    }
    size_t op = open_.count();
    if (w.value)
      open_.put(cf, key, *w.value);
    else
      open_.del(cf, key);
    if (it == map_.end())
      it = map_.emplace(std::move(w.ckey), Entry{}).first;
    else if (it->second.pins == 0)
      lru_unlink(&*it);  // clean until now
    Node* n = &*it;
    auto& e = n->second;
    e.value = std::move(w.value);
    e.pins++;
    e.group = g;
    e.open_op = op;
    open_nodes_.push_back(n);
  }
  txn.writes_.clear();
}

View::Sealed View::seal() {
  Sealed s;
  s.group = next_group_++;
  s.batch = std::move(open_);
  open_ = WriteBatch();
  sealed_[s.group] = std::move(open_nodes_);
  open_nodes_.clear();
  return s;
}

void View::committed(uint64_t group) {
  auto node = sealed_.extract(group);
  if (node.empty()) return;
  for (Node* n : node.mapped())
    if (--n->second.pins == 0) lru_push(n);  // no later group rewrote it: clean now
  evict();
}

void View::invalidate(std::string_view begin, std::string_view end) {
  for (auto it = map_.begin(); it != map_.end();) {
    std::string_view k = std::string_view(it->first).substr(1);
    if (it->second.pins == 0 && k >= begin && k < end) {
      lru_unlink(&*it);
      it = map_.erase(it);
    } else {
      ++it;
    }
  }
}

void View::evict() {
  while (lru_size_ > capacity_) {
    Node* n = lru_oldest_;
    lru_unlink(n);
    map_.erase(map_.find(n->first));
  }
}

}  // namespace tandem::partition
