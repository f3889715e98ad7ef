// PowerCut: a simulated power failure under a Store, for tests. A Store opened with
// StoreOptions::power_cut writes through a file system that remembers how much of each file
// it created had been synced (fsync / fdatasync) when it was last synced. copy_after_cut()
// writes a copy of a store folder as a power cut at that moment would leave it: the names the
// folder had at its last fsync (a file created or renamed since is not there, or is there under
// its old name), each file cut back to its synced length, files from before the store was opened
// copied whole. (Simplification: a file deleted since is gone from the copy too.)
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
