#include <tandem/partition/power_cut.h>

#include <filesystem>
#include <fstream>
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
  rocksdb::IOStatus Sync(const rocksdb::IOOptions& o, rocksdb::IODebugContext* d) override {
    auto s = target()->Sync(o, d);
    if (s.ok()) pc_.synced(name_, target()->GetFileSize(o, d));
    return s;
  }
  rocksdb::IOStatus Fsync(const rocksdb::IOOptions& o, rocksdb::IODebugContext* d) override {
    auto s = target()->Fsync(o, d);
    if (s.ok()) pc_.synced(name_, target()->GetFileSize(o, d));
    return s;
  }

 private:
  PowerCut::Impl& pc_;
  std::string name_;
};

class TrackingFs final : public rocksdb::FileSystemWrapper {
 public:
  TrackingFs(std::shared_ptr<rocksdb::FileSystem> base, PowerCut::Impl& pc) : FileSystemWrapper(std::move(base)), pc_(pc) {}
  const char* Name() const override { return "TandemPowerCutFs"; }

  rocksdb::IOStatus NewWritableFile(const std::string& f, const rocksdb::FileOptions& o,
                                    std::unique_ptr<rocksdb::FSWritableFile>* r, rocksdb::IODebugContext* d) override {
    auto s = target()->NewWritableFile(f, o, r, d);
    if (s.ok()) wrap(f, r, true);
    return s;
  }
  rocksdb::IOStatus ReopenWritableFile(const std::string& f, const rocksdb::FileOptions& o,
                                       std::unique_ptr<rocksdb::FSWritableFile>* r, rocksdb::IODebugContext* d) override {
    auto s = target()->ReopenWritableFile(f, o, r, d);
    if (s.ok()) wrap(f, r, false);
    return s;
  }
  rocksdb::IOStatus ReuseWritableFile(const std::string& f, const std::string& old, const rocksdb::FileOptions& o,
                                      std::unique_ptr<rocksdb::FSWritableFile>* r, rocksdb::IODebugContext* d) override {
    auto s = target()->ReuseWritableFile(f, old, o, r, d);
    if (s.ok()) {
      pc_.forget(old);
      wrap(f, r, true);
    }
    return s;
  }
  rocksdb::IOStatus RenameFile(const std::string& src, const std::string& dst, const rocksdb::IOOptions& o,
                               rocksdb::IODebugContext* d) override {
    auto s = target()->RenameFile(src, dst, o, d);
    if (s.ok()) pc_.renamed(src, dst);
    return s;
  }
  rocksdb::IOStatus DeleteFile(const std::string& f, const rocksdb::IOOptions& o, rocksdb::IODebugContext* d) override {
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
  std::lock_guard lock(mu);
  auto& e = files[canonical(f)];
  if (fresh) e = std::nullopt;  // nothing of it is durable yet
}
void PowerCut::Impl::synced(const std::string& f, uint64_t size) {
  std::lock_guard lock(mu);
  files[canonical(f)] = size;
}
void PowerCut::Impl::renamed(const std::string& src, const std::string& dst) {
  std::lock_guard lock(mu);
  auto it = files.find(canonical(src));
  if (it == files.end()) return;
  auto v = it->second;
  files.erase(it);
  files[canonical(dst)] = v;
}
void PowerCut::Impl::forget(const std::string& f) {
  std::lock_guard lock(mu);
  files.erase(canonical(f));
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
  std::map<std::string, std::optional<uint64_t>> files;
  {
    std::lock_guard lock(impl_->mu);
    files = impl_->files;
  }
  for (auto& entry : std::filesystem::directory_iterator(from_dir, ec)) {
    if (!entry.is_regular_file()) continue;
    std::string name = canonical(entry.path().string());
    std::optional<uint64_t> keep;  // bytes to keep; nullopt: the whole file (from before)
    if (auto it = files.find(name); it != files.end()) {
      if (!it->second) continue;  // created and never synced: gone
      keep = *it->second;
    }
    std::ifstream in(entry.path(), std::ios::binary);
    std::string data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (keep && *keep < data.size()) data.resize(*keep);
    std::ofstream out(std::filesystem::path(to_dir) / entry.path().filename(), std::ios::binary);
    out.write(data.data(), static_cast<std::streamsize>(data.size()));
    if (!out) return Status::internal("cannot write into " + to_dir);
  }
  if (ec) return Status::internal("cannot list " + from_dir + ": " + ec.message());
  return Status::ok();
}

}  // namespace tandem::partition
