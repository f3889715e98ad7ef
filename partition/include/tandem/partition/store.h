// The partition store: one RocksDB per node with the column families state, activity,
// outbox, timer and meta; batches of staged writes; and View, the read-your-writes cache
// that lets the next batch run while the previous one commits. Knows nothing of messages.
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include <tandem/core/status.h>

namespace tandem::partition {

enum class Cf : uint8_t { kState = 0, kActivity = 1, kOutbox = 2, kTimer = 3, kMeta = 4 };
inline constexpr int kNumCfs = 5;
std::string_view cf_name(Cf cf);

enum class Durability : uint8_t {
  kStrict,   // every commit is fsynced: survives power loss
  kRelaxed,  // WAL written, not fsynced: survives a process crash, not a power loss
};
std::string_view durability_name(Durability d);
Result<Durability> parse_durability(std::string_view s);

class PowerCut;

// Rows a compaction may drop: true drops the row. Called from RocksDB's compaction threads, so
// it must be thread-safe and must not block. The entity layer drops expired client replies.
using DropFn = std::function<bool(Cf cf, std::string_view key, std::string_view value)>;

struct StoreOptions {
  std::string path;
  Durability durability = Durability::kStrict;
  PowerCut* power_cut = nullptr;  // tests: write through a PowerCut's file system (borrowed)
  DropFn drop_on_compaction = nullptr;  // optional
  // RocksDB's flush and compaction threads lower their CPU priority to this nice value when
  // they start their first job (0: left as they are), so background work takes the CPU the
  // commit path leaves idle instead of competing with it. A process-wide effect: the threads
  // belong to RocksDB's default environment, shared by every store of the process.
  int background_nice = 10;
};

// A set of writes applied atomically by Store::write. Not thread-safe.
class WriteBatch {
 public:
  WriteBatch();
  ~WriteBatch();
  WriteBatch(WriteBatch&&) noexcept;
  WriteBatch& operator=(WriteBatch&&) noexcept;
  void put(Cf cf, std::string_view key, std::string_view value);
  void del(Cf cf, std::string_view key);
  // Deletes every key in [begin, end).
  void del_range(Cf cf, std::string_view begin, std::string_view end);
  // Turns the put or delete at position `index` into a put of `value` (a delete when nullopt):
  // a key written again before the batch is written keeps one op, the last.
  void replace(size_t index, const std::optional<std::string>& value);
  size_t count() const;
  size_t bytes() const;
  void clear();
  // The writes in order (an in-memory store applies them).
  struct Op {
    enum class Kind : uint8_t { kPut, kDel, kDelRange } kind;
    Cf cf;
    std::string_view key;
    std::string_view value;  // the value of a put; the end of a range delete
  };
  void for_each(const std::function<void(const Op&)>& fn) const;

 private:
  friend class RocksStore;
  struct Rep;
  std::unique_ptr<Rep> rep_;
};

using ScanFn = std::function<bool(std::string_view key, std::string_view value)>;

// Thread-safe.
class Store {
 public:
  virtual ~Store() = default;
  // Opens (creating if missing) the database at opts.path.
  // kInternal with RocksDB's message when the directory cannot be opened or is locked.
  static Result<std::unique_ptr<Store>> open(const StoreOptions& opts);

  virtual Durability durability() const = 0;
  // Reads committed data. nullopt when absent.
  virtual Result<std::optional<std::string>> get(Cf cf, std::string_view key) = 0;
  // Calls fn for each key in [begin, end) in order ("" end = unbounded) until it returns false.
  virtual Status scan(Cf cf, std::string_view begin, std::string_view end, const ScanFn& fn) = 0;
  // Writes `batch` atomically; fsynced before returning in strict durability.
  virtual Status write(WriteBatch& batch) = 0;
  // Writes `batch` with an explicit sync choice (benchmarks and tools).
  virtual Status write(WriteBatch& batch, bool sync) = 0;
  // RocksDB's estimate of live data bytes, for metrics.
  virtual uint64_t approximate_bytes() = 0;
  // Compacts the whole family now (what a compaction drops is then gone). Stores that do not
  // compact do nothing.
  virtual Status compact(Cf) { return Status::ok(); }
};

// A single-threaded read-your-writes view over a Store. Writes are staged in transactions,
// applied to the open group, sealed into a WriteBatch and committed elsewhere, in the order
// they were sealed; until the group commits its writes stay pinned in the view, afterwards
// they are clean cache entries evicted in LRU order beyond `cache_entries`. Outbox rows are
// written through: the view keeps no copy of them (the runtime never reads one back through
// it, and each is written once and deleted once), so get() of an outbox row sees committed
// rows only.
class View;

class Txn {
 public:
  explicit Txn(View& view) : view_(&view) {}
  Result<std::optional<std::string>> get(Cf cf, std::string_view key);
  void put(Cf cf, std::string_view key, std::string value);
  void del(Cf cf, std::string_view key);
  bool empty() const { return writes_.empty(); }
  size_t size() const { return writes_.size(); }

 private:
  friend class View;
  struct Write {
    std::string ckey;  // cf byte + key
    std::optional<std::string> value;
  };
  std::vector<Write> writes_;
  View* view_;
};

class View {
 public:
  // The map's buckets are allocated up front for the whole cache (plus room for pinned rows):
  // growing it later rehashes every entry at once, which stalled the engine thread for ~30 ms
  // at 200k entries. Past kMaxReserve entries it grows (and rehashes) as it fills.
  View(Store& store, size_t cache_entries) : store_(store), capacity_(cache_entries) {
    map_.reserve(std::min(cache_entries + cache_entries / 4 + 1024, kMaxReserve));
  }
  View(const View&) = delete;  // entries point at each other
  View& operator=(const View&) = delete;
  static constexpr size_t kMaxReserve = size_t{4} << 20;
  Result<std::optional<std::string>> get(Cf cf, std::string_view key);
  // Moves the transaction's writes into the open group.
  void apply(Txn&& txn);
  // Number of writes in the open group.
  size_t open_writes() const { return open_.count(); }
  struct Sealed {
    uint64_t group = 0;
    WriteBatch batch;
  };
  // Closes the open group; its writes remain visible until committed(group).
  Sealed seal();
  // The sealed group is durable: its entries become evictable once no other sealed group holds them.
  void committed(uint64_t group);
  // Drops clean cached rows with keys in [begin, end) of every family (after the store's
  // rows there changed underneath the view: a partition arrived or left).
  void invalidate(std::string_view begin, std::string_view end);
  Store& store() { return store_; }
  size_t cached_entries() const { return map_.size(); }

 private:
  friend class Txn;
  struct Entry;
  using Node = std::pair<const std::string, Entry>;  // a map element: keeps its address when the map rehashes
  struct Entry {
    std::optional<std::string> value;
    uint32_t pins = 0;      // open and sealed groups holding the entry; 0: clean, in the LRU list
    uint64_t group = 0;     // the last group that wrote it
    size_t open_op = 0;     // its op in the open group's batch, when `group` is the open group
    Node* newer = nullptr;  // LRU links of a clean entry
    Node* older = nullptr;
  };
  using Map = std::unordered_map<std::string, Entry>;
  const std::string& lookup_key(Cf cf, std::string_view key);
  void lru_push(Node* n);
  void lru_unlink(Node* n);
  void evict();

  Store& store_;
  size_t capacity_;
  Map map_;
  Node* lru_newest_ = nullptr;
  Node* lru_oldest_ = nullptr;
  size_t lru_size_ = 0;
  std::string scratch_;  // the cf byte + key of the last lookup
  WriteBatch open_;
  std::vector<Node*> open_nodes_;
  uint64_t next_group_ = 1;
  std::unordered_map<uint64_t, std::vector<Node*>> sealed_;
};

}  // namespace tandem::partition
