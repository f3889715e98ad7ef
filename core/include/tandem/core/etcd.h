// EtcdClient: the few etcd v3 operations the cluster metadata needs, spoken over etcd's JSON
// gateway (HTTP/1.1 on loopback; keys and values travel base64-encoded). Blocking calls, each
// on its own short connection, bounded by a timeout; safe to use from several threads.
//
// An etcd address is written `etcd://HOST:PORT[/PREFIX]`; every key the cluster uses lives
// under PREFIX (default `/tandem`).
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include <tandem/core/net.h>
#include <tandem/core/status.h>

namespace tandem {

struct EtcdAddress {
  net::Endpoint endpoint;
  std::string prefix = "/tandem";
  static Result<EtcdAddress> parse(const std::string& url);
  std::string to_string() const;
};

struct EtcdValue {
  std::string value;
  int64_t mod_revision = 0;
  int64_t create_revision = 0;
  int64_t lease = 0;
};

class EtcdClient {
 public:
  explicit EtcdClient(EtcdAddress addr, int timeout_ms = 2000);
  ~EtcdClient();
  const EtcdAddress& address() const { return addr_; }
  // `prefix + name`.
  std::string key(const std::string& name) const { return addr_.prefix + "/" + name; }

  Result<std::optional<EtcdValue>> get(const std::string& key);
  // Puts unconditionally; returns the revision of the write.
  Result<int64_t> put(const std::string& key, const std::string& value, int64_t lease = 0);
  // Puts only if `key` does not exist. Returns whether it was written; when not, `*current`
  // (if given) receives the value that is there.
  Result<bool> create(const std::string& key, const std::string& value, int64_t lease = 0,
                      std::optional<EtcdValue>* current = nullptr);
  // Puts `key` only if its mod revision is still `mod_revision` (0: it must not exist) and
  // `guard_key` is bound to lease `guard_lease` (skipped when guard_key is empty). Returns the
  // revision of the write, or nullopt when a compare failed.
  Result<std::optional<int64_t>> put_if(const std::string& key, const std::string& value, int64_t mod_revision,
                                        const std::string& guard_key = {}, int64_t guard_lease = 0);

  // Leases: grant returns the id; keepalive returns the remaining TTL in seconds (0: the lease
  // has expired or was revoked and is gone).
  Result<int64_t> grant(int ttl_s);
  Result<int64_t> keepalive(int64_t lease);
  Status revoke(int64_t lease);

  // Streams changes of `key` from revision `from_revision` on: `on_put` gets each new value,
  // `on_delete` each deletion. Blocks until `stop` is set (checked at least every timeout),
  // the stream breaks, or a callback returns false; returns why it ended.
  Status watch(const std::string& key, int64_t from_revision, const std::function<bool(const EtcdValue&)>& on_put,
               const std::function<bool()>& on_delete, const std::atomic<bool>& stop);

 private:
  Result<std::string> post(const std::string& path, const std::string& json);
  EtcdAddress addr_;
  int timeout_ms_;
};

std::string base64_encode(std::string_view in);
std::optional<std::string> base64_decode(std::string_view in);

}  // namespace tandem
