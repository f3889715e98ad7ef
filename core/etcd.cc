#include <tandem/core/etcd.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstring>

#include <nlohmann/json.hpp>

namespace tandem {

using json = nlohmann::json;

namespace {

constexpr char kB64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
constexpr size_t kMaxResponse = 64 << 20;

int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// etcd's gateway writes 64-bit integers as JSON strings and leaves out zero values.
int64_t int_field(const json& j, const char* name) {
  auto it = j.find(name);
  if (it == j.end()) return 0;
  if (it->is_number_integer()) return it->get<int64_t>();
  if (it->is_string()) {
    int64_t v = 0;
    auto s = it->get<std::string>();
    std::from_chars(s.data(), s.data() + s.size(), v);
    return v;
  }
  return 0;
}

std::optional<EtcdValue> kv_of(const json& kv) {
  EtcdValue v;
  if (auto it = kv.find("value"); it != kv.end() && it->is_string()) {
    auto d = base64_decode(it->get<std::string>());
    if (!d) return std::nullopt;
    v.value = std::move(*d);
  }
  v.mod_revision = int_field(kv, "mod_revision");
  v.create_revision = int_field(kv, "create_revision");
  v.lease = int_field(kv, "lease");
  return v;
}

// A blocking TCP connection with a deadline for every wait.
class Conn {
 public:
  ~Conn() {
    if (fd_ >= 0) ::close(fd_);
  }
  Status open(const net::Endpoint& ep, int timeout_ms) {
    timeout_ms_ = timeout_ms;
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd_ < 0) return Status::internal(std::string("socket: ") + std::strerror(errno));
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(ep.port);
    if (::inet_pton(AF_INET, ep.host.c_str(), &sa.sin_addr) != 1)
      return Status::invalid_argument("etcd address must be an IPv4 address, not '" + ep.host + "'");
    int one = 1;
    ::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (::connect(fd_, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0 && errno != EINPROGRESS)
      return Status::unavailable("etcd at " + ep.to_string() + ": " + std::strerror(errno));
    if (!wait(POLLOUT, timeout_ms)) return Status::unavailable("etcd at " + ep.to_string() + ": connect timed out");
    int err = 0;
    socklen_t len = sizeof err;
    ::getsockopt(fd_, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err != 0) return Status::unavailable("etcd at " + ep.to_string() + ": " + std::strerror(err));
    return Status::ok();
  }
  Status send_all(std::string_view data) {
    while (!data.empty()) {
      ssize_t n = ::send(fd_, data.data(), data.size(), MSG_NOSIGNAL);
      if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
        if (!wait(POLLOUT, timeout_ms_)) return Status::unavailable("etcd: send timed out");
        continue;
      }
      if (n <= 0) return Status::unavailable(std::string("etcd: send: ") + std::strerror(errno));
      data.remove_prefix(static_cast<size_t>(n));
    }
    return Status::ok();
  }
  // Appends what arrives within `timeout_ms` to `buf`. Returns the number of bytes (0 at end
  // of stream), or an error; `timed_out` tells a quiet connection from a broken one.
  Result<size_t> recv_some(std::string& buf, int timeout_ms, bool& timed_out) {
    timed_out = false;
    if (!wait(POLLIN, timeout_ms)) {
      timed_out = true;
      return Status::unavailable("etcd: no answer within " + std::to_string(timeout_ms) + " ms");
    }
    char tmp[16384];
    for (;;) {
      ssize_t n = ::recv(fd_, tmp, sizeof tmp, 0);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && errno == EAGAIN) {  // a spurious wake-up: nothing yet
        timed_out = true;
        return size_t{0};
      }
      if (n < 0) return Status::unavailable(std::string("etcd: recv: ") + std::strerror(errno));
      buf.append(tmp, static_cast<size_t>(n));
      return static_cast<size_t>(n);
    }
  }

 private:
  bool wait(short events, int timeout_ms) {
    pollfd p{fd_, events, 0};
    int64_t deadline = now_ms() + timeout_ms;
    for (;;) {
      int left = static_cast<int>(std::max<int64_t>(0, deadline - now_ms()));
      int r = ::poll(&p, 1, left);
      if (r > 0) return true;
      if (r == 0) return false;
      if (errno != EINTR) return false;
    }
  }
  int fd_ = -1;
  int timeout_ms_ = 2000;
};

// Decodes the HTTP response head in `buf`; on success removes it and tells whether the body
// is chunked (else its Content-Length, -1 when it runs to the end of the stream).
struct Head {
  int status = 0;
  bool chunked = false;
  int64_t length = -1;
};

std::optional<Head> parse_head(std::string& buf) {
  auto end = buf.find("\r\n\r\n");
  if (end == std::string::npos) return std::nullopt;
  Head h;
  std::string head = buf.substr(0, end);
  buf.erase(0, end + 4);
  if (head.rfind("HTTP/1.", 0) != 0 || head.size() < 12) {
    h.status = -1;
    return h;
  }
  std::from_chars(head.data() + 9, head.data() + 12, h.status);
  for (char& c : head) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (head.find("transfer-encoding: chunked") != std::string::npos) h.chunked = true;
  if (auto p = head.find("content-length:"); p != std::string::npos) {
    auto q = head.find_first_not_of(' ', p + 15);
    if (q != std::string::npos) std::from_chars(head.data() + q, head.data() + head.size(), h.length);
  }
  return h;
}

// Takes the complete chunks at the front of `raw` into `out`. Returns false on malformed
// input; sets `done` at the last (empty) chunk.
bool take_chunks(std::string& raw, std::string& out, bool& done) {
  for (;;) {
    auto eol = raw.find("\r\n");
    if (eol == std::string::npos) return raw.size() < 64;
    size_t size = 0;
    auto [ptr, ec] = std::from_chars(raw.data(), raw.data() + eol, size, 16);
    if (ec != std::errc() || size > kMaxResponse) return false;
    if (raw.size() < eol + 2 + size + 2) return true;
    if (size == 0) {
      done = true;
      raw.clear();
      return true;
    }
    out.append(raw, eol + 2, size);
    raw.erase(0, eol + 2 + size + 2);
  }
}

std::string request_text(const net::Endpoint& ep, const std::string& path, const std::string& body) {
  return "POST " + path + " HTTP/1.1\r\nHost: " + ep.to_string() +
         "\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: " + std::to_string(body.size()) +
         "\r\n\r\n" + body;
}

Status error_of(const json& j, const std::string& what) {
  if (auto it = j.find("error"); it != j.end()) {
    std::string msg = it->is_string() ? it->get<std::string>() : it->dump();
    return Status::unavailable("etcd " + what + ": " + msg);
  }
  return Status::ok();
}

}  // namespace

std::string base64_encode(std::string_view in) {
  std::string out;
  out.reserve((in.size() + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 2 < in.size(); i += 3) {
    uint32_t v = (static_cast<uint8_t>(in[i]) << 16) | (static_cast<uint8_t>(in[i + 1]) << 8) | static_cast<uint8_t>(in[i + 2]);
    for (int s = 18; s >= 0; s -= 6) out.push_back(kB64[(v >> s) & 63]);
  }
  if (i < in.size()) {
    uint32_t v = static_cast<uint8_t>(in[i]) << 16;
    if (i + 1 < in.size()) v |= static_cast<uint8_t>(in[i + 1]) << 8;
    out.push_back(kB64[(v >> 18) & 63]);
    out.push_back(kB64[(v >> 12) & 63]);
    out.push_back(i + 1 < in.size() ? kB64[(v >> 6) & 63] : '=');
    out.push_back('=');
  }
  return out;
}

std::optional<std::string> base64_decode(std::string_view in) {
  if (in.size() % 4 != 0) return std::nullopt;
  auto val = [](char c) -> int {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
  };
  std::string out;
  out.reserve(in.size() / 4 * 3);
  for (size_t i = 0; i < in.size(); i += 4) {
    int pad = (in[i + 3] == '=') + (in[i + 2] == '=');
    if (pad > 0 && i + 4 != in.size()) return std::nullopt;
    uint32_t v = 0;
    for (int k = 0; k < 4; ++k) {
      int d = (k >= 4 - pad) ? 0 : val(in[i + k]);
      if (d < 0) return std::nullopt;
      v = (v << 6) | static_cast<uint32_t>(d);
    }
    out.push_back(static_cast<char>(v >> 16));
    if (pad < 2) out.push_back(static_cast<char>((v >> 8) & 0xFF));
    if (pad < 1) out.push_back(static_cast<char>(v & 0xFF));
  }
  return out;
}

Result<EtcdAddress> EtcdAddress::parse(const std::string& url) {
  constexpr std::string_view scheme = "etcd://";
  if (url.rfind(scheme, 0) != 0) return Status::invalid_argument("metadata store must be 'embedded' or etcd://HOST:PORT[/PREFIX], not '" + url + "'");
  std::string rest = url.substr(scheme.size());
  EtcdAddress a;
  if (auto slash = rest.find('/'); slash != std::string::npos) {
    a.prefix = rest.substr(slash);
    rest.resize(slash);
    while (a.prefix.size() > 1 && a.prefix.back() == '/') a.prefix.pop_back();
    if (a.prefix == "/") return Status::invalid_argument("etcd key prefix must not be empty in '" + url + "'");
  }
  auto ep = net::Endpoint::parse(rest);
  if (!ep) return Status::invalid_argument("etcd address '" + url + "': " + ep.status().message());
  a.endpoint = *ep;
  return a;
}

std::string EtcdAddress::to_string() const { return "etcd://" + endpoint.to_string() + prefix; }

EtcdClient::EtcdClient(EtcdAddress addr, int timeout_ms) : addr_(std::move(addr)), timeout_ms_(timeout_ms) {}
EtcdClient::~EtcdClient() = default;

Result<std::string> EtcdClient::post(const std::string& path, const std::string& body) {
  Conn c;
  TANDEM_TRY(c.open(addr_.endpoint, timeout_ms_));
  TANDEM_TRY(c.send_all(request_text(addr_.endpoint, path, body)));
  std::string buf, out;
  std::optional<Head> head;
  bool done = false, timed_out = false;
  int64_t deadline = now_ms() + timeout_ms_;
  while (!done) {
    int left = static_cast<int>(deadline - now_ms());
    if (left <= 0) return Status::unavailable("etcd " + path + ": no answer within " + std::to_string(timeout_ms_) + " ms");
    auto n = c.recv_some(buf, left, timed_out);
    if (!n) return n.status();
    if (buf.size() > kMaxResponse) return Status::invalid_argument("etcd " + path + ": answer too large");
    bool eof = *n == 0 && !timed_out;
    if (!head) {
      head = parse_head(buf);
      if (!head) {
        if (eof) return Status::unavailable("etcd " + path + ": connection closed before an answer");
        continue;
      }
      if (head->status < 0) return Status::invalid_argument("etcd " + path + ": not an HTTP answer");
    }
    if (head->chunked) {
      if (!take_chunks(buf, out, done)) return Status::invalid_argument("etcd " + path + ": malformed chunked answer");
    } else if (head->length >= 0) {
      if (static_cast<int64_t>(buf.size()) >= head->length) {
        out = buf.substr(0, static_cast<size_t>(head->length));
        done = true;
      }
    } else if (eof) {
      out = std::move(buf);
      done = true;
    }
    if (eof && !done) return Status::unavailable("etcd " + path + ": connection closed mid-answer");
  }
  if (head->status != 200) {
    auto j = json::parse(out, nullptr, false);
    if (!j.is_discarded() && j.is_object()) TANDEM_TRY(error_of(j, path));
    return Status::unavailable("etcd " + path + ": HTTP " + std::to_string(head->status));
  }
  return out;
}

namespace {
Result<json> parse_json(const Result<std::string>& body, const std::string& what) {
  if (!body) return body.status();
  auto j = json::parse(*body, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return Status::invalid_argument("etcd " + what + ": malformed JSON answer");
  TANDEM_TRY(error_of(j, what));
  return j;
}

json put_op(const std::string& key, const std::string& value, int64_t lease) {
  json p = {{"key", base64_encode(key)}, {"value", base64_encode(value)}};
  if (lease) p["lease"] = std::to_string(lease);
  return {{"request_put", p}};
}
}  // namespace

Result<std::optional<EtcdValue>> EtcdClient::get(const std::string& key) {
  auto j = parse_json(post("/v3/kv/range", json{{"key", base64_encode(key)}}.dump()), "range");
  if (!j) return j.status();
  auto kvs = j->find("kvs");
  if (kvs == j->end() || !kvs->is_array() || kvs->empty()) return std::optional<EtcdValue>{};
  auto v = kv_of((*kvs)[0]);
  if (!v) return Status::invalid_argument("etcd range: malformed value");
  return std::optional<EtcdValue>(std::move(*v));
}

Result<int64_t> EtcdClient::put(const std::string& key, const std::string& value, int64_t lease) {
  json req = {{"key", base64_encode(key)}, {"value", base64_encode(value)}};
  if (lease) req["lease"] = std::to_string(lease);
  auto j = parse_json(post("/v3/kv/put", req.dump()), "put");
  if (!j) return j.status();
  return int_field((*j)["header"], "revision");
}

Result<bool> EtcdClient::create(const std::string& key, const std::string& value, int64_t lease,
                                std::optional<EtcdValue>* current) {
  json req = {{"compare", json::array({{{"key", base64_encode(key)}, {"target", "CREATE"}, {"result", "EQUAL"},
                                        {"create_revision", "0"}}})},
              {"success", json::array({put_op(key, value, lease)})},
              {"failure", json::array({{{"request_range", {{"key", base64_encode(key)}}}}})}};
  auto j = parse_json(post("/v3/kv/txn", req.dump()), "txn");
  if (!j) return j.status();
  bool ok = j->value("succeeded", false);
  if (!ok && current) {
    *current = std::nullopt;
    auto& rs = (*j)["responses"];
    if (rs.is_array() && !rs.empty()) {
      auto& kvs = rs[0]["response_range"]["kvs"];
      if (kvs.is_array() && !kvs.empty()) *current = kv_of(kvs[0]);
    }
  }
  return ok;
}

Result<std::optional<int64_t>> EtcdClient::put_if(const std::string& key, const std::string& value, int64_t mod_revision,
                                                  const std::string& guard_key, int64_t guard_lease) {
  json cmp = json::array();
  if (mod_revision == 0)
    cmp.push_back({{"key", base64_encode(key)}, {"target", "CREATE"}, {"result", "EQUAL"}, {"create_revision", "0"}});
  else
    cmp.push_back({{"key", base64_encode(key)}, {"target", "MOD"}, {"result", "EQUAL"}, {"mod_revision", std::to_string(mod_revision)}});
  if (!guard_key.empty())
    cmp.push_back({{"key", base64_encode(guard_key)}, {"target", "LEASE"}, {"result", "EQUAL"}, {"lease", std::to_string(guard_lease)}});
  json req = {{"compare", cmp}, {"success", json::array({put_op(key, value, 0)})}};
  auto j = parse_json(post("/v3/kv/txn", req.dump()), "txn");
  if (!j) return j.status();
  if (!j->value("succeeded", false)) return std::optional<int64_t>{};
  return std::optional<int64_t>(int_field((*j)["header"], "revision"));
}

Result<int64_t> EtcdClient::grant(int ttl_s) {
  auto j = parse_json(post("/v3/lease/grant", json{{"TTL", std::to_string(ttl_s)}}.dump()), "lease grant");
  if (!j) return j.status();
  int64_t id = int_field(*j, "ID");
  if (id == 0) return Status::unavailable("etcd lease grant: no lease id in the answer");
  return id;
}

Result<int64_t> EtcdClient::keepalive(int64_t lease) {
  auto j = parse_json(post("/v3/lease/keepalive", json{{"ID", std::to_string(lease)}}.dump()), "lease keepalive");
  if (!j) return j.status();
  auto r = j->find("result");
  if (r == j->end()) return Status::invalid_argument("etcd lease keepalive: no result");
  return int_field(*r, "TTL");
}

Status EtcdClient::revoke(int64_t lease) {
  return parse_json(post("/v3/lease/revoke", json{{"ID", std::to_string(lease)}}.dump()), "lease revoke").status();
}

Status EtcdClient::watch(const std::string& key, int64_t from_revision, const std::function<bool(const EtcdValue&)>& on_put,
                         const std::function<bool()>& on_delete, const std::atomic<bool>& stop) {
  Conn c;
  TANDEM_TRY(c.open(addr_.endpoint, timeout_ms_));
  json create = {{"key", base64_encode(key)}};
  if (from_revision > 0) create["start_revision"] = std::to_string(from_revision);
  TANDEM_TRY(c.send_all(request_text(addr_.endpoint, "/v3/watch", json{{"create_request", create}}.dump())));
  std::string raw, body;
  std::optional<Head> head;
  bool done = false, timed_out = false;
  while (!stop.load()) {
    auto n = c.recv_some(raw, 200, timed_out);
    if (!n && !timed_out) return n.status();
    if (n && *n == 0 && !timed_out) return Status::unavailable("etcd watch: stream ended");
    if (!head) {
      head = parse_head(raw);
      if (!head) continue;
      if (head->status != 200 || !head->chunked) return Status::unavailable("etcd watch: unexpected answer");
    }
    if (!take_chunks(raw, body, done)) return Status::invalid_argument("etcd watch: malformed stream");
    // One JSON object per line.
    for (auto eol = body.find('\n'); eol != std::string::npos; eol = body.find('\n')) {
      std::string line = body.substr(0, eol);
      body.erase(0, eol + 1);
      auto j = json::parse(line, nullptr, false);
      if (j.is_discarded() || !j.is_object()) return Status::invalid_argument("etcd watch: malformed event");
      TANDEM_TRY(error_of(j, "watch"));
      auto& res = j["result"];
      if (res.value("canceled", false)) return Status::unavailable("etcd watch: canceled: " + res.value("cancel_reason", std::string()));
      auto evs = res.find("events");
      if (evs == res.end() || !evs->is_array()) continue;
      for (auto& ev : *evs) {
        if (ev.value("type", std::string()) == "DELETE") {
          if (!on_delete()) return Status::ok();
          continue;
        }
        auto v = kv_of(ev["kv"]);
        if (!v) return Status::invalid_argument("etcd watch: malformed value");
        if (!on_put(*v)) return Status::ok();
      }
    }
    if (done) return Status::unavailable("etcd watch: stream ended");
  }
  return Status::ok();
}

}  // namespace tandem
