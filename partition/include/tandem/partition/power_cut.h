// PowerCut: a simulated power failure under a Store, for tests. A Store opened with
// StoreOptions::power_cut writes through a file system that remembers how much of each file
// it created had been synced (fsync / fdatasync) when it was last synced. copy_after_cut()
// writes a copy of a store folder as a power cut at that moment would leave it: each such file
// cut back to its synced length, files never synced left out, files from before the store was
// opened copied whole. (Simplification: a synced file's name counts as durable; the directory's
// own fsync is not modelled.)
#pragma once

#include <memory>
#include <string>

#include <tandem/core/status.h>

namespace tandem::partition {

class PowerCut {
 public:
  PowerCut();
  ~PowerCut();
  PowerCut(const PowerCut&) = delete;
  PowerCut& operator=(const PowerCut&) = delete;

  Status copy_after_cut(const std::string& from_dir, const std::string& to_dir) const;

  struct Impl;
  Impl& impl() { return *impl_; }

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace tandem::partition
