// PowerCut's state, shared with store.cc (which opens RocksDB on impl().env).
#pragma once

#include <rocksdb/env.h>
#include <rocksdb/file_system.h>

#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include <tandem/partition/power_cut.h>

namespace tandem::partition {

// Files written through the PowerCut get an id; a name points at an id. What a cut leaves:
// in each folder, the names as of the folder's last fsync (names of files from before the
// PowerCut are durable as they are), each with its file cut back to its synced length.
//
// A cut is one instant: RocksDB's background threads go on writing, syncing, renaming and
// deleting while the cut copies the folder, so every change of a folder's names (create,
// rename, delete) happens on disk and in this record under `mu`, and the copy holds `mu` from
// its first look to its last byte. The methods below expect the caller to hold `mu`.
struct PowerCut::Impl {
  std::shared_ptr<rocksdb::FileSystem> fs;
  std::unique_ptr<rocksdb::Env> env;
  std::mutex mu;
  uint64_t next_id = 1;
  std::map<std::string, uint64_t> names;                 // path -> file id, as the folder is now
  std::map<uint64_t, std::optional<uint64_t>> synced_to;  // file id -> synced length (nullopt: never)
  std::map<std::string, std::map<std::string, uint64_t>> durable_names;  // folder -> names as of its last fsync
  void created(const std::string& f, bool fresh);
  void synced(const std::string& f, uint64_t size);
  void renamed(const std::string& src, const std::string& dst);
  void forget(const std::string& f);
  void dir_synced(const std::string& dir);
};

}  // namespace tandem::partition
