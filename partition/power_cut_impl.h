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

struct PowerCut::Impl {
  std::shared_ptr<rocksdb::FileSystem> fs;
  std::unique_ptr<rocksdb::Env> env;
  std::mutex mu;
  std::map<std::string, std::optional<uint64_t>> files;  // created here -> synced length (nullopt: never)
  void created(const std::string& f, bool fresh);
  void synced(const std::string& f, uint64_t size);
  void renamed(const std::string& src, const std::string& dst);
  void forget(const std::string& f);
};

}  // namespace tandem::partition
