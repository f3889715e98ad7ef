#include <tandem/partition/power_cut.h>

#include <filesystem>
#include <map>
#include <mutex>
#include <optional>

#include "power_cut_impl.h"

namespace tandem::partition {

namespace {

class TrackedFile final : public rocksdb::FSWritableFileOwnerWrapper {
 public:
  TrackedFile(std::unique_ptr<rocksdb::FSWritableFile> f, PowerCut::Impl& pc, std::string name)
      : FSWritableFileOwnerWrapper(std::move(f)), pc_(pc), name_(std::move(name)) {}
  // A sync that a cut overtakes counts as not done: it is recorded once it returned.
  rocksdb::IOStatus Sync(const rocksdb::IOOptions& o, rocksdb::IODebugContext* d) override {
    auto s = target()->Sync(o, d);
    if (s.ok()) record(target()->GetFileSize(o, d));
    return s;
  }
  rocksdb::IOStatus Fsync(const rocksdb::IOOptions& o, rocksdb::IODebugContext* d) override {
    auto s = target()->Fsync(o, d);
    if (s.ok()) record(target()->GetFileSize(o, d));
    return s;
  }

 private:
  void record(uint64_t size) {
    std::lock_guard lock(pc_.mu);
    pc_.synced(name_, size);
  }
  PowerCut::Impl& pc_;
  std::string name_;
};

class TrackedDir final : public rocksdb::FSDirectory {
 public:
  TrackedDir(std::unique_ptr<rocksdb::FSDirectory> d, PowerCut::Impl& pc, std::string name)
      : dir_(std::move(d)), pc_(pc), name_(std::move(name)) {}
  rocksdb::IOStatus Fsync(const rocksdb::IOOptions& o, rocksdb::IODebugContext* d) override {
    auto s = dir_->Fsync(o, d);
    if (s.ok()) record();
    return s;
  }
  rocksdb::IOStatus FsyncWithDirOptions(const rocksdb::IOOptions& o, rocksdb::IODebugContext* d,
                                        const rocksdb::DirFsyncOptions& fo) override {
    auto s = dir_->FsyncWithDirOptions(o, d, fo);
    if (s.ok()) record();
    return s;
  }
  rocksdb::IOStatus Close(const rocksdb::IOOptions& o, rocksdb::IODebugContext* d) override { return dir_->Close(o, d); }
  size_t GetUniqueId(char* id, size_t max_size) const override { return dir_->GetUniqueId(id, max_size); }

 private:
  void record() {
    std::lock_guard lock(pc_.mu);
    pc_.dir_synced(name_);
  }
  std::unique_ptr<rocksdb::FSDirectory> dir_;
  PowerCut::Impl& pc_;
  std::string name_;
};

class TrackingFs final : public rocksdb::FileSystemWrapper {
 public:
  TrackingFs(std::shared_ptr<rocksdb::FileSystem> base, PowerCut::Impl& pc) : FileSystemWrapper(std::move(base)), pc_(pc) {}
  const char* Name() const override { return "TandemPowerCutFs"; }

  rocksdb::IOStatus NewWritableFile(const std::string& f, const rocksdb::FileOptions& o,
                                    std::unique_ptr<rocksdb::FSWritableFile>* r, rocksdb::IODebugContext* d) override {
    std::lock_guard lock(pc_.mu);
    auto s = target()->NewWritableFile(f, o, r, d);
    if (s.ok()) wrap(f, r, true);
    return s;
  }
  rocksdb::IOStatus ReopenWritableFile(const std::string& f, const rocksdb::FileOptions& o,
                                       std::unique_ptr<rocksdb::FSWritableFile>* r, rocksdb::IODebugContext* d) override {
    std::lock_guard lock(pc_.mu);
    auto s = target()->ReopenWritableFile(f, o, r, d);
    if (s.ok()) wrap(f, r, false);
    return s;
  }
  rocksdb::IOStatus ReuseWritableFile(const std::string& f, const std::string& old, const rocksdb::FileOptions& o,
                                      std::unique_ptr<rocksdb::FSWritableFile>* r, rocksdb::IODebugContext* d) override {
    std::lock_guard lock(pc_.mu);
    auto s = target()->ReuseWritableFile(f, old, o, r, d);
    if (s.ok()) {
      pc_.forget(old);
      wrap(f, r, true);
    }
    return s;
  }
  rocksdb::IOStatus RenameFile(const std::string& src, const std::string& dst, const rocksdb::IOOptions& o,
                               rocksdb::IODebugContext* d) override {
    std::lock_guard lock(pc_.mu);
    auto s = target()->RenameFile(src, dst, o, d);
    if (s.ok()) pc_.renamed(src, dst);
    return s;
  }
  rocksdb::IOStatus NewDirectory(const std::string& name, const rocksdb::IOOptions& o,
                                 std::unique_ptr<rocksdb::FSDirectory>* r, rocksdb::IODebugContext* d) override {
    auto s = target()->NewDirectory(name, o, r, d);
    if (s.ok()) *r = std::make_unique<TrackedDir>(std::move(*r), pc_, name);
    return s;
  }
  rocksdb::IOStatus DeleteFile(const std::string& f, const rocksdb::IOOptions& o, rocksdb::IODebugContext* d) override {
    std::lock_guard lock(pc_.mu);
    auto s = target()->DeleteFile(f, o, d);
    if (s.ok()) pc_.forget(f);
    return s;
  }

 private:
  void wrap(const std::string& f, std::unique_ptr<rocksdb::FSWritableFile>* r, bool fresh) {
    pc_.created(f, fresh);
    *r = std::make_unique<TrackedFile>(std::move(*r), pc_, f);
  }
  PowerCut::Impl& pc_;
};

std::string canonical(const std::string& p) {
  std::error_code ec;
  auto c = std::filesystem::weakly_canonical(p, ec);
  return ec ? p : c.string();
}

}  // namespace

void PowerCut::Impl::created(const std::string& f, bool fresh) {
  auto name = canonical(f);
  auto it = names.find(name);
  if (it != names.end() && !fresh) return;  // reopened: as it was
  uint64_t id = next_id++;
  std::optional<uint64_t> durable;  // a fresh file: nothing of it is durable yet
  if (!fresh) {                     // a file from before, reopened: what it holds now stays
    std::error_code ec;
    auto size = std::filesystem::file_size(name, ec);
    durable = ec ? 0 : size;
  }
  names[name] = id;
  synced_to[id] = durable;
}
void PowerCut::Impl::synced(const std::string& f, uint64_t size) {
  auto it = names.find(canonical(f));
  if (it != names.end()) synced_to[it->second] = size;
}
void PowerCut::Impl::renamed(const std::string& src, const std::string& dst) {
  auto s = canonical(src), t = canonical(dst);
  uint64_t id;
  if (auto it = names.find(s); it != names.end()) {
    id = it->second;
    names.erase(it);
  } else {  // a file from before: its content is durable, its new name is not yet
    id = next_id++;
    std::error_code ec;
    auto size = std::filesystem::file_size(t, ec);
    synced_to[id] = ec ? 0 : size;
    // Its old name stays in the folder's durable names until the folder is synced.
    auto dir = std::filesystem::path(s).parent_path().string();
    if (!durable_names.count(dir)) durable_names[dir] = {};
    durable_names[dir].emplace(s, id);
  }
  names[t] = id;
}
void PowerCut::Impl::forget(const std::string& f) {
  names.erase(canonical(f));
}
void PowerCut::Impl::dir_synced(const std::string& dir) {
  auto d = canonical(dir);
  auto& durable = durable_names[d];
  durable.clear();
  for (auto& [name, id] : names)
    if (std::filesystem::path(name).parent_path().string() == d) durable[name] = id;
}

PowerCut::PowerCut() : impl_(std::make_unique<Impl>()) {
  impl_->fs = std::make_shared<TrackingFs>(rocksdb::FileSystem::Default(), *impl_);
  impl_->env = rocksdb::NewCompositeEnv(impl_->fs);
}
PowerCut::~PowerCut() = default;

Status PowerCut::copy_after_cut(const std::string& from_dir, const std::string& to_dir) const {
  std::error_code ec;
  std::filesystem::create_directories(to_dir, ec);
  if (ec) return Status::internal("cannot create " + to_dir + ": " + ec.message());
  auto dir = canonical(from_dir);
  // name in the copy -> (where its bytes are now, bytes to keep; nullopt: all of them)
  std::map<std::string, std::pair<std::string, std::optional<uint64_t>>> keep;
  // Held to the last byte copied: a file the store deletes or renames meanwhile would be
  // missing from the copy while the copy's manifest still names it.
  std::lock_guard lock(impl_->mu);
  std::map<uint64_t, std::string> where;  // file id -> its current path
  for (auto& [name, id] : impl_->names) where[id] = name;
  // Files from before the PowerCut, still there under their names: durable whole.
  for (auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    if (!entry.is_regular_file()) continue;
    auto name = canonical(entry.path().string());
    if (!impl_->names.count(name)) keep[entry.path().filename().string()] = {name, std::nullopt};
  }
  // Names the folder's last fsync made durable, each with its file's synced bytes (a file
  // deleted since is gone: its bytes cannot be brought back here).
  if (auto d = impl_->durable_names.find(dir); d != impl_->durable_names.end()) {
    for (auto& [name, id] : d->second) {
      auto now = where.find(id);
      if (now == where.end()) continue;
      auto synced = impl_->synced_to.find(id);
      uint64_t bytes = synced != impl_->synced_to.end() && synced->second ? *synced->second : 0;
      keep[std::filesystem::path(name).filename().string()] = {now->second, bytes};
    }
  }
  if (ec) return Status::internal("cannot list " + from_dir + ": " + ec.message());
  for (auto& [name, what] : keep) {
    auto to = std::filesystem::path(to_dir) / name;
    std::filesystem::copy_file(what.first, to, std::filesystem::copy_options::overwrite_existing, ec);
    if (ec) return Status::internal("cannot copy " + what.first + " for the cut: " + ec.message());
    auto size = std::filesystem::file_size(to, ec);
    if (!ec && what.second && *what.second < size) std::filesystem::resize_file(to, *what.second, ec);
    if (ec) return Status::internal("cannot cut " + to.string() + ": " + ec.message());
  }
  return Status::ok();
}

}  // namespace tandem::partition
