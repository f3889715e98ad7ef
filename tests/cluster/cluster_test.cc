// A 3-node cluster of real processes on loopback, started by tools/tandem-cluster: the demo
// under kill -9, the launcher's commands, bad input at a node's port, and tandemctl.
#include <doctest/doctest.h>

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <future>
#include <memory>
#include <mutex>
#include <random>
#include <set>
#include <sstream>
#include <thread>
#include <tuple>

#include <nlohmann/json.hpp>

#include <tandem/core/bytes.h>
#include <tandem/core/env.h>
#include <tandem/core/net.h>
#include <tandem/messaging/session.h>

#include <tandem/entity/client.h>
#include <tandem/entity/payload.h>
#include <tandem/partition/partition_map.h>

#include "reservation.capnp.h"
#include "test_util.h"

namespace {

struct Out {
  int code = -1;
  std::string text;
};

// Runs a shell command line, capturing stdout and stderr.
Out sh(const std::string& cmd) {
  Out o;
  FILE* p = popen((cmd + " 2>&1").c_str(), "r");
  REQUIRE(p != nullptr);
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) o.text.append(buf, n);
  int st = pclose(p);
  o.code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  return o;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

struct Cluster {
  tandem::testing::TempDir dir{"cluster"};
  int base = 0;
  std::string env;
  std::string ctl;
  std::string conf;

  explicit Cluster(int nodes = 3, const std::string& meta = "embedded", const std::string& extra = "") {
    std::random_device rd;
    env = "TANDEM_CLUSTER_DIR=" + dir.sub("c") + " ";
    conf = dir.sub("c") + "/cluster.conf";
    ctl = std::string(TANDEMCTL_BIN) + " --config " + conf + " ";
    Out up;
    // Tests run in parallel: each takes a block of 200 ports below the ephemeral range (32768+)
    // and holds a lock on it (flock: released when this process ends, however it ends), so two
    // tests never share a block; a block some other program uses makes `up` fail: try another.
    for (int attempt = 0; attempt < 5; ++attempt) {
      do {
        base = 10000 + static_cast<int>(rd() % 110) * 200;
      } while (!lock_block(base));
      up = launcher("up --nodes " + std::to_string(nodes) + " --durability relaxed --binary " +
                    TANDEM_RESERVATION_BIN + " --base-port " + std::to_string(base) + " --meta " + meta + " " + extra);
      if (up.code == 0) break;
      launcher("down");
    }
    INFO(up.text);
    REQUIRE(up.code == 0);
  }
  ~Cluster() {
    launcher("down");  // SIGTERM, then waits: a node's LeakSanitizer report is in its log by now
    check_sanitizer_reports();
    if (lock_fd >= 0) ::close(lock_fd);
  }
  // The nodes' logs hold every life of a node (a restart appends). A sanitizer report there
  // (ASan, LeakSanitizer at a clean exit, UBSan) fails the test that ran the cluster.
  void check_sanitizer_reports() {
    for (auto& e : std::filesystem::directory_iterator(dir.sub("c"))) {
      auto name = e.path().filename().string();
      if (name.rfind("node-", 0) != 0 || e.path().extension() != ".log") continue;
      std::ifstream log(e.path());
      for (std::string line; std::getline(log, line);)
        if (line.find("ERROR: AddressSanitizer") != std::string::npos ||
            line.find("ERROR: LeakSanitizer") != std::string::npos || line.find(": runtime error: ") != std::string::npos) {
          INFO(name << ": " << line);
          CHECK_MESSAGE(false, "a sanitizer report in a node's log");
          break;
        }
    }
  }
  int lock_fd = -1;
  bool lock_block(int b) {
    if (lock_fd >= 0) ::close(lock_fd);
    lock_fd = ::open(("/tmp/tandem-test-ports-" + std::to_string(b) + ".lock").c_str(), O_CREAT | O_RDWR | O_CLOEXEC, 0644);
    if (lock_fd >= 0 && ::flock(lock_fd, LOCK_EX | LOCK_NB) == 0) return true;
    if (lock_fd >= 0) ::close(lock_fd);
    lock_fd = -1;
    return false;
  }
  Out launcher(const std::string& args) { return sh(env + TANDEM_CLUSTER_SCRIPT + " " + args); }
  int port(int node) const { return base + node; }
  std::string secret() { return read_file(dir.sub("c") + "/secret"); }
};

// Resumes (SIGCONT) a paused node when it goes out of scope, whatever failed in between.
struct ContOnExit {
  Cluster& c;
  int node;
  ~ContOnExit() { c.launcher("cont " + std::to_string(node)); }
};

struct Refusal {
  std::string args, expect;
};

// Each tandemctl command line must fail with a message containing `expect`.
void expect_refusals(Cluster& c, const std::vector<Refusal>& cases) {
  for (auto& k : cases) {
    CAPTURE(k.args);
    auto r = sh(c.ctl + k.args);
    CHECK(r.code != 0);
    CHECK(r.text.find(k.expect) != std::string::npos);
  }
}

// Runs the demo driver command line; it must succeed (its output is shown when it does not).
void require_drive(const std::string& cmd) {
  auto r = sh(cmd);
  INFO(r.text);
  REQUIRE(r.code == 0);
}

void check_demo_ok(const Out& r, int nodes = 3) {
  INFO(r.text.substr(r.text.size() > 3000 ? r.text.size() - 3000 : 0));
  CHECK(r.code == 0);
  CHECK(r.text.find("RESULT demo nodes=" + std::to_string(nodes) + " ") != std::string::npos);
  CHECK(r.text.find("invariant=ok") != std::string::npos);
}

}  // namespace

TEST_CASE("the demo runs on a 3-node cluster and the invariant holds") {
  Cluster c;
  auto r = sh(std::string(TANDEM_RESERVATION_BIN) + " drive --quiet --config " + c.conf + " --orders 2000 --items 200");
  check_demo_ok(r);
  auto st = sh(c.ctl + "--json status");
  CHECK(st.code == 0);
  CHECK(st.text.find("\"outbox_depth\":0") != std::string::npos);
}

TEST_CASE("the demo on 3 nodes survives kill -9 of a random node every 1-2 s (>= 5 kills)") {
  Cluster c;
  auto drive = std::async(std::launch::async, [&] {
    return sh(std::string(TANDEM_RESERVATION_BIN) + " drive --quiet --config " + c.conf +
              " --orders 12000 --items 300 --concurrency 64");
  });
  std::mt19937 rnd(std::random_device{}());
  int kills = 0;
  for (int i = 0; i < 6; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(700 + rnd() % 800));
    int n = 1 + static_cast<int>(rnd() % 3);
    auto k = c.launcher("kill " + std::to_string(n));
    if (k.code == 0) ++kills;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    auto r = c.launcher("restart " + std::to_string(n));
    INFO(r.text);
    CHECK(r.code == 0);
  }
  CHECK(kills >= 5);
  auto r = drive.get();
  check_demo_ok(r);
  auto st = sh(c.ctl + "status");
  INFO(st.text);
  CHECK(st.code == 0);
  auto parked = sh(c.ctl + "parked");
  CHECK(parked.text.find("no parked messages") != std::string::npos);
}

TEST_CASE("launcher: status, kill, restart and down, and its mistakes") {
  Cluster c;
  auto st = c.launcher("status");
  CHECK(st.text.find("node 3") != std::string::npos);
  CHECK(c.launcher("kill 2").code == 0);
  CHECK(c.launcher("status").text.find("node 2  127.0.0.1:" + std::to_string(c.port(2)) + "  stopped") != std::string::npos);
  auto again = c.launcher("kill 2");
  CHECK(again.code != 0);
  CHECK(again.text.find("node 2 is not running") != std::string::npos);
  CHECK(c.launcher("restart 2").code == 0);
  CHECK(c.launcher("status").text.find("stopped") == std::string::npos);
  // Pause and resume say what they did, and what they did not.
  CHECK(c.launcher("cont 2").text.find("node 2 is not paused: nothing to resume") != std::string::npos);
  CHECK(c.launcher("stop 2").text.find("node 2 paused (SIGSTOP)") != std::string::npos);
  {
    ContOnExit resume{c, 2};
    CHECK(c.launcher("status").text.find("node 2  127.0.0.1:" + std::to_string(c.port(2)) + "  paused") != std::string::npos);
    CHECK(c.launcher("stop 2").text.find("node 2 is paused already") != std::string::npos);
    CHECK(c.launcher("cont 2").text.find("node 2 resumed (SIGCONT)") != std::string::npos);
  }
  CHECK(c.launcher("status").text.find("paused") == std::string::npos);
  auto bad = c.launcher("kill 9");
  CHECK(bad.code != 0);
  CHECK(bad.text.find("no node 9") != std::string::npos);
  auto typo = c.launcher("stauts");
  CHECK(typo.code == 2);
  CHECK(typo.text.find("unknown command 'stauts'") != std::string::npos);
  auto none = c.launcher("");
  CHECK(none.code == 2);
  CHECK(none.text.find("no command given") != std::string::npos);
  CHECK(c.launcher("help").code == 0);
  auto twice = c.launcher("up --nodes 3 --binary " + std::string(TANDEM_RESERVATION_BIN) + " --base-port " + std::to_string(c.base));
  CHECK(twice.code != 0);
  CHECK(twice.text.find("already running") != std::string::npos);
  // A mistyped command line runs nothing.
  auto extra = c.launcher("down now");
  CHECK(extra.code == 2);
  CHECK(extra.text.find("unexpected argument 'now' for down") != std::string::npos);
  CHECK(c.launcher("status").text.find("stopped") == std::string::npos);
  auto negative = c.launcher("kill -1");
  CHECK(negative.code == 2);
  CHECK(negative.text.find("a node id is a positive number, not '-1'") != std::string::npos);
  CHECK(c.launcher("down").code == 0);
  CHECK(c.launcher("status").text.find("running") == std::string::npos);
  // `up` checks every option before it replaces the stopped cluster's folder.
  std::string up = "up --nodes 3 --binary " + std::string(TANDEM_RESERVATION_BIN) + " --base-port " + std::to_string(c.base);
  auto bogus = c.launcher(up + " --durability bogus");
  CHECK(bogus.code == 1);
  CHECK(bogus.text.find("--durability must be strict or relaxed, not 'bogus'") != std::string::npos);
  auto no_types = c.launcher(up + " --types " + c.dir.sub("no-such-file"));
  CHECK(no_types.code == 1);
  CHECK(no_types.text.find("cannot read the types file") != std::string::npos);
  auto no_value = c.launcher("up --nodes");
  CHECK(no_value.code == 2);
  CHECK(no_value.text.find("--nodes needs a value") != std::string::npos);
  CHECK(std::filesystem::exists(c.dir.sub("c") + "/node1"));
  CHECK(std::filesystem::exists(c.conf));
  // A folder that is not a cluster's is left alone.
  tandem::testing::TempDir other("not-a-cluster");
  std::ofstream(other.sub("notes.txt")) << "mine";
  auto foreign = sh("TANDEM_CLUSTER_DIR=" + other.str() + " " + TANDEM_CLUSTER_SCRIPT + " " + up);
  CHECK(foreign.code == 1);
  CHECK(foreign.text.find("not a tandem-cluster folder; left untouched") != std::string::npos);
  CHECK(read_file(other.sub("notes.txt")) == "mine");
}

// A raw TCP connection: sends `bytes`, collects what comes back until the other side closes.
struct RawConn {
  std::mutex mu;
  std::string got;
  std::promise<tandem::Status> closed;
  std::future<tandem::Status> done = closed.get_future();
  std::string received() {
    std::lock_guard l(mu);
    return got;
  }
  bool closed_within(int ms) { return done.wait_for(std::chrono::milliseconds(ms)) == std::future_status::ready; }
};

std::shared_ptr<RawConn> raw_send(tandem::net::Network& net, int port, std::string bytes) {
  auto rc = std::make_shared<RawConn>();
  net.connect({"127.0.0.1", static_cast<uint16_t>(port)}, [rc, bytes](tandem::Result<std::shared_ptr<tandem::net::Connection>> conn) {
    if (!conn) return rc->closed.set_value(conn.status());
    (*conn)->start(
        [rc](std::string_view b) {
          std::lock_guard l(rc->mu);
          rc->got.append(b);
        },
        [rc](tandem::Status s) { rc->closed.set_value(s); });
    if (!bytes.empty()) (*conn)->send(bytes);
  });
  return rc;
}

size_t count_of(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (auto at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

TEST_CASE("bad input at a node port (wrong secret, garbage, oversized and truncated frames) leaves the node serving") {
  Cluster c;
  auto net = tandem::net::make_real_network();
  tandem::messaging::SessionOptions wrong;
  wrong.secret = "not-the-secret-at-all";
  wrong.role = "node";
  std::promise<tandem::Status> p;
  tandem::messaging::Session::connect(*net, {"127.0.0.1", static_cast<uint16_t>(c.port(1))}, wrong, {},
                                      [&](tandem::Result<std::shared_ptr<tandem::messaging::Session>> r) {
                                        p.set_value(r.status());
                                      });
  CHECK_FALSE(p.get_future().get().is_ok());
  for (std::string junk : {std::string("\x7F\xFF\xFF\xFF", 4), std::string("\x00\x00\x00\x40garbage", 11),
                           std::string("GET / HTTP/1.1\r\n\r\n"), std::string("\x00\x00\x00\x08", 4)}) {
    std::promise<tandem::Status> closed;  // how the connection ended (a failed connect included)
    net->connect({"127.0.0.1", static_cast<uint16_t>(c.port(1))},
                 [&](tandem::Result<std::shared_ptr<tandem::net::Connection>> conn) {
                   if (!conn) return closed.set_value(conn.status());
                   (*conn)->start([](std::string_view) {}, [&](tandem::Status s) { closed.set_value(s); });
                   (*conn)->send(junk);
                 });
    auto f = closed.get_future();
    REQUIRE(f.wait_for(std::chrono::seconds(10)) == std::future_status::ready);
    auto how = f.get();
    INFO(how.to_string());
    INFO(c.launcher("status").text);
    CHECK(how.message().rfind("connect ", 0) != 0);  // it connected (no "connect HOST: ..." failure); the node hung up
  }
  // Each close before authentication is logged with its reason...
  auto log = read_file(c.dir.sub("c") + "/node-1.log");
  INFO(log.substr(log.size() > 6000 ? log.size() - 6000 : 0));
  CHECK(log.find("before authentication: wrong cluster secret") != std::string::npos);
  CHECK(log.find("before authentication: frame of 2147483647 bytes exceeds the limit") != std::string::npos);
  CHECK(log.find("before authentication: handshake timed out with 4 bytes of an unfinished frame") != std::string::npos);
  CHECK(log.find("before authentication: an HTTP request on the node port") != std::string::npos);
  // ...but a flood of them cannot flood the log: 300 more write at most a few dozen lines,
  // and the metric counts them all.
  size_t lines_before = count_of(log, "before authentication");
  std::vector<std::shared_ptr<RawConn>> flood;
  for (int i = 0; i < 300; ++i) flood.push_back(raw_send(*net, c.port(1), std::string("\x7F\xFF\xFF\xFF", 4)));
  for (auto& f : flood) CHECK(f->closed_within(10'000));
  auto metric_of = [&](const std::string& name) {
    auto m = sh("curl -s --max-time 5 http://127.0.0.1:" + std::to_string(c.base + 101) + "/metrics");
    auto at = m.text.find(name + "{");
    if (at == std::string::npos) return -1.0;
    return std::stod(m.text.substr(m.text.find("} ", at) + 2));
  };
  CHECK(metric_of("tandem_connections_refused_total") >= 305);
  log = read_file(c.dir.sub("c") + "/node-1.log");
  size_t lines_flood = count_of(log, "before authentication") - lines_before;
  CHECK(lines_flood <= 45);
  CHECK(lines_flood >= 1);
  // A port probe (connect, then hang up without a byte: tandem-cluster's readiness check) is
  // neither a refusal nor a log line. The garbage connection after the probes is counted.
  double refused_before = metric_of("tandem_connections_refused_total");
  size_t lines_before_probes = count_of(read_file(c.dir.sub("c") + "/node-1.log"), "before authentication");
  for (int i = 0; i < 5; ++i) {
    std::promise<void> done;
    net->connect({"127.0.0.1", static_cast<uint16_t>(c.port(1))},
                 [&](tandem::Result<std::shared_ptr<tandem::net::Connection>> conn) {
                   if (conn) (*conn)->close();
                   done.set_value();
                 });
    REQUIRE(done.get_future().wait_for(std::chrono::seconds(5)) == std::future_status::ready);
  }
  CHECK(raw_send(*net, c.port(1), std::string("\x7F\xFF\xFF\xFF", 4))->closed_within(10'000));
  CHECK(metric_of("tandem_connections_refused_total") == refused_before + 1);
  CHECK(count_of(read_file(c.dir.sub("c") + "/node-1.log"), "before authentication") <= lines_before_probes + 1);
  // The metrics port: exact path, GET only, a read timeout and a cap on open connections.
  int mport = c.base + 101;
  auto answer = [&](const std::string& req) {
    auto rc = raw_send(*net, mport, req);
    CHECK(rc->closed_within(10'000));
    auto got = rc->received();
    return got.substr(0, got.find("\r\n"));
  };
  CHECK(answer("GET /metrics HTTP/1.0\r\n\r\n") == "HTTP/1.0 200 OK");
  CHECK(answer("GET /metrics?name[]=x HTTP/1.0\r\n\r\n") == "HTTP/1.0 200 OK");
  CHECK(answer("GET /metricsX HTTP/1.0\r\n\r\n") == "HTTP/1.0 404 Not Found");
  CHECK(answer("POST /metrics HTTP/1.0\r\nContent-Length: 0\r\n\r\n") == "HTTP/1.0 405 Method Not Allowed");
  CHECK(answer("garbage\r\n\r\n") == "HTTP/1.0 404 Not Found");
  std::vector<std::shared_ptr<RawConn>> idle;
  for (int i = 0; i < 40; ++i) idle.push_back(raw_send(*net, mport, "GET /metr"));  // never finished
  std::this_thread::sleep_for(std::chrono::seconds(2));                            // the read timeout is 5 s
  int closed_early = 0;
  for (auto& i : idle) closed_early += i->closed_within(0) ? 1 : 0;
  CHECK(closed_early >= 8);  // past the cap of 32: closed at once
  CHECK(closed_early < 40);
  for (auto& i : idle) CHECK(i->closed_within(15'000));  // the rest at the read timeout
  for (auto& i : idle) CHECK(i->received().empty());
  CHECK(answer("GET /metrics HTTP/1.0\r\n\r\n") == "HTTP/1.0 200 OK");
  net->stop();
  auto st = sh(c.ctl + "status");
  INFO(st.text);
  CHECK(st.code == 0);  // every node still answers
  // tandemctl with another cluster's secret is told so (not "cannot reach", after retrying).
  std::ofstream(c.dir.sub("other-secret")) << "0123456789abcdef0123456789abcdef";
  std::string conf = read_file(c.conf), wrong_conf = c.dir.sub("wrong.conf");
  auto at = conf.find("secret-file secret");
  REQUIRE(at != std::string::npos);
  std::ofstream(wrong_conf) << conf.replace(at, std::string("secret-file secret").size(), "secret-file " + c.dir.sub("other-secret"));
  auto refused = sh(std::string(TANDEMCTL_BIN) + " --config " + wrong_conf + " status");
  INFO(refused.text);
  CHECK(refused.code == 1);
  CHECK(refused.text.find("refused the handshake: wrong cluster secret") != std::string::npos);
  // A config with the addresses of nodes 1 and 2 swapped: tandemctl says so instead of showing
  // node 2 as node 1. (One address listed for two nodes is refused when the config is read.)
  std::string swapped = read_file(c.conf), swapped_conf = c.dir.sub("c") + "/swapped.conf";  // beside the secret file it names
  for (auto [id, from, to] : {std::tuple{1, c.port(1), c.port(2)}, std::tuple{2, c.port(2), c.port(1)}}) {
    std::string was = "node " + std::to_string(id) + " 127.0.0.1:" + std::to_string(from) + " ";
    auto line = swapped.find(was);
    REQUIRE(line != std::string::npos);
    swapped.replace(line, was.size(), "node " + std::to_string(id) + " 127.0.0.1:" + std::to_string(to) + " ");
  }
  std::ofstream(swapped_conf) << swapped;
  for (std::string cmd : {"status", "--node 1 status"}) {
    CAPTURE(cmd);
    auto wrong_node = sh(std::string(TANDEMCTL_BIN) + " --config " + swapped_conf + " " + cmd);
    INFO(wrong_node.text);
    CHECK(wrong_node.code != 0);
    CHECK(wrong_node.text.find("is node 2, not node 1 as the config says") != std::string::npos);
  }
}

// A session to `node` that authenticates as cluster node `as` (with the cluster's secret).
std::shared_ptr<tandem::messaging::Session> node_session(tandem::net::Network& net, Cluster& c, int node, uint32_t as) {
  tandem::messaging::SessionOptions o;
  o.secret = c.secret();
  o.role = "node";
  o.node_id = as;
  std::promise<tandem::Result<std::shared_ptr<tandem::messaging::Session>>> p;
  tandem::messaging::Session::connect(net, {"127.0.0.1", static_cast<uint16_t>(c.port(node))}, o, {},
                                      [&](auto r) { p.set_value(r); });
  auto s = p.get_future().get();
  REQUIRE_MESSAGE(s.is_ok(), s.status().to_string());
  return *s;
}

TEST_CASE("an envelope or a call for an entity the node does not own is answered moved") {
  Cluster c;
  auto net = tandem::net::make_real_network();
  auto s = node_session(*net, c, 1, 3);
  // Items are range-partitioned: [sku-2, sku-4) belongs to node 2 in the initial map.
  tandem::messaging::Envelope e;
  e.from = {"order", "o-1"};
  e.to = {"item", "sku-3"};
  e.seq = 1;
  std::promise<tandem::Status> acked;
  s->deliver(e, [&](tandem::Status st) { acked.set_value(st); });
  auto a = acked.get_future().get();
  CHECK(a.code() == tandem::Code::kUnavailable);
  CHECK(a.message().find("moved: item/sku-3 is owned by node 2 at epoch 1") != std::string::npos);
  net->stop();
}

namespace {
uint64_t epoch_of(Cluster& c);  // the map's epoch, from tandemctl (below)
}  // namespace

TEST_CASE("tandemctl: commands work, and mistakes get a clear message and a non-zero exit") {
  Cluster c;
  require_drive(std::string(TANDEM_RESERVATION_BIN) + " drive --quiet --config " + c.conf + " --orders 50 --items 10");
  auto insp = sh(c.ctl + "inspect item sku-1");
  INFO(insp.text);
  CHECK(insp.code == 0);
  CHECK(insp.text.find("entity item/sku-1 on node 1") != std::string::npos);
  CHECK(insp.text.find("activity order/") != std::string::npos);
  CHECK(insp.text.find("operation order/") != std::string::npos);
  auto parts = sh(c.ctl + "--json partitions");
  CHECK(parts.code == 0);
  CHECK(parts.text.find("\"epoch\":1") != std::string::npos);
  // Where the demo's messages spent their time: every node answers, and commits were counted.
  auto stages = sh(c.ctl + "stages");
  INFO(stages.text);
  CHECK(stages.code == 0);
  for (const char* st : {"queue", "durable", "commit", "handoff", "relay"}) CHECK(stages.text.find(st) != std::string::npos);
  auto js = sh(c.ctl + "--json --node 1 stages");
  CHECK(js.code == 0);
  CHECK(js.text.find("{\"node\":1,\"stage\":\"commit\",\"count\":") != std::string::npos);
  CHECK(js.text.find("\"node\":2") == std::string::npos);
  CHECK(js.text.find("\"stage\":\"commit\",\"count\":0,") == std::string::npos);
  expect_refusals(c, {
      {"", "missing command"},
      {"stauts", "unknown command 'stauts'"},
      {"inspect item", "'inspect' takes 2 argument(s), got 1"},
      {"redrive", "'redrive' takes 1 argument(s), got 0"},
      {"--node 9 status", "no node 9"},
      {"--node x status", "--node expects a node id"},
      {"--bogus status", "unknown flag --bogus"},
      {"inspect ghost k", "unknown entity type 'ghost'"},
      {"redrive not-an-id", "not a parked message id"},
  });
  auto unreachable = sh(std::string(TANDEMCTL_BIN) + " --config /nonexistent/cluster.conf status");
  CHECK(unreachable.code == 1);
  CHECK(unreachable.text.find("cannot read cluster config") != std::string::npos);
  // With --json an error is JSON on stdout as well (a script reads one stream).
  // (stdout only: sh() joins stderr to stdout, so the command runs in a subshell without it)
  auto json_err = sh("(" + std::string(TANDEMCTL_BIN) + " --json --config /nonexistent/cluster.conf status 2>/dev/null)");
  CHECK(json_err.code == 1);
  CHECK(json_err.text.rfind("{\"error\":\"cannot reach the cluster", 0) == 0);
  auto json_ghost = sh("(" + c.ctl + "--json inspect ghost k 2>/dev/null)");
  CHECK(json_ghost.code == 1);
  CHECK(json_ghost.text == "{\"error\":\"unknown entity type 'ghost'\"}\n");
  auto json_typo = sh("(" + c.ctl + "--json statsu 2>/dev/null)");
  CHECK(json_typo.code == 2);
  CHECK(json_typo.text == "{\"error\":\"unknown command 'statsu'\"}\n");
  // Without --config, beside the cluster the launcher started in $TANDEM_CLUSTER_DIR.
  auto by_env = sh(c.env + TANDEMCTL_BIN + " partitions");
  INFO(by_env.text);
  CHECK(by_env.code == 0);
  CHECK(by_env.text.find("epoch ") == 0);
  for (const char* h : {"-h", "help"}) {
    auto help = sh(std::string(TANDEMCTL_BIN) + " " + h);
    CHECK(help.code == 0);
    CHECK(help.text.find("usage: tandemctl") == 0);
  }
  // A node down: each_node's commands name it (in the JSON array too), and inspect of an entity
  // it owns names the node.
  REQUIRE(c.launcher("kill 3").code == 0);
  auto parked = sh("(" + c.ctl + "--json parked 2>/dev/null)");
  INFO(parked.text);
  CHECK(parked.code == 1);
  CHECK(parked.text.find("{\"node\":3,\"error\":") != std::string::npos);
  CHECK(parked.text.find("{\"node\":2,\"error\":") == std::string::npos);
  // Node 3 owns order partitions 3 and 6; some order among a few of them lands there.
  bool named = false;
  for (int i = 0; i < 40 && !named; ++i) {
    auto ins = sh(c.ctl + "inspect order o-" + std::to_string(i));
    if (ins.code != 0) named = ins.text.find("tandemctl: node 3 (which owns order/o-" + std::to_string(i) + ")") != std::string::npos;
  }
  CHECK(named);
  // rebalance plans around a node that does not answer: nothing moves to it, or from it.
  auto plan = sh(c.ctl + "rebalance --dry-run");
  INFO(plan.text);
  CHECK(plan.code == 0);
  CHECK(plan.text.find("node 3 left out (it did not answer") != std::string::npos);
  CHECK(plan.text.find("to node 3") == std::string::npos);
  uint64_t epoch = epoch_of(c);
  auto drain = sh(c.ctl + "drain-node 3");
  CHECK(drain.code == 1);
  CHECK(drain.text.find("node 3 does not answer: its partitions cannot be copied off it; nothing changed") != std::string::npos);
  CHECK(epoch_of(c) == epoch);
  c.launcher("down");
  auto down = sh(c.ctl + "status");
  CHECK(down.code == 1);
  CHECK(down.text.find("cannot reach the cluster") != std::string::npos);
}

namespace {
uint64_t epoch_of(Cluster& c) {
  auto p = sh(c.ctl + "--json partitions");
  auto pos = p.text.find("\"epoch\":");
  REQUIRE(pos != std::string::npos);
  return std::stoull(p.text.substr(pos + 8));
}

// True when the launcher reports `node` stopped.
bool node_stopped(Cluster& c, int node) {
  return c.launcher("status").text.find("node " + std::to_string(node) + "  127.0.0.1:" + std::to_string(c.port(node)) +
                                        "  stopped") != std::string::npos;
}

// Restarts `node` so that it dies at crash point `point`, runs the tandemctl command that gets
// there, waits until the node is down and starts it again. Returns the command's output.
Out crash_during(Cluster& c, int node, const std::string& point, const std::string& command) {
  REQUIRE(sh("TANDEM_CRASH_AT=" + point + " " + c.env + TANDEM_CLUSTER_SCRIPT + " restart " + std::to_string(node)).code == 0);
  auto r = sh(c.ctl + command);
  REQUIRE(tandem::testing::wait_until([&] { return node_stopped(c, node); }));
  REQUIRE(c.launcher("restart " + std::to_string(node)).code == 0);
  return r;
}

// The demo run `drive` made is read back (every order found once, the invariant intact), then
// `more` new orders flow through the cluster as it is now.
void check_demo_again(Cluster& c, const std::string& drive, const std::string& more) {
  check_demo_ok(sh(drive));
  check_demo_ok(sh(std::string(TANDEM_RESERVATION_BIN) + " drive --quiet --config " + c.conf + " " + more));
}

struct StormCounts {
  int moves = 0, splits = 0, refused = 0;
};

// A move or split every 100-300 ms while the demo runs (until >= 22 moves and >= 6 splits),
// with `between(counts)` before each command; then the demo's invariant, once more after the
// last change, empty outboxes, nothing parked, and one epoch per change.
StormCounts move_split_storm(Cluster& c, const std::function<void(const StormCounts&)>& between) {
  std::string drive = std::string(TANDEM_RESERVATION_BIN) + " drive --quiet --config " + c.conf +
                      " --orders 15000 --items 300 --concurrency 64";
  auto run = std::async(std::launch::async, [&] { return sh(drive); });
  std::mt19937 rnd(std::random_device{}());
  StormCounts n;
  uint32_t max_pid = 11;  // 6 order + 5 item partitions at start; each split adds one
  for (int i = 0; i < 160 && (n.moves < 22 || n.splits < 6); ++i) {
    between(n);
    std::this_thread::sleep_for(std::chrono::milliseconds(100 + rnd() % 200));
    uint32_t pid = 1 + rnd() % max_pid;
    bool split = n.splits < 6 && rnd() % 4 == 0;
    auto r = sh(c.ctl + (split ? "split " + std::to_string(pid) : "move " + std::to_string(pid) + " " + std::to_string(1 + rnd() % 3)));
    if (r.code == 0 && split) {
      ++n.splits;
      ++max_pid;
    } else if (r.code == 0) {
      ++n.moves;
    } else {
      ++n.refused;  // already on that node, or too small to split: a clear refusal, nothing changed
      INFO(r.text);
      CHECK((r.text.find("already on node") != std::string::npos || r.text.find("fewer than 2") != std::string::npos ||
             r.text.find("not inside") != std::string::npos));
    }
  }
  CHECK(n.moves >= 20);
  CHECK(n.splits >= 5);
  check_demo_ok(run.get());
  // Read everything back once more after the last change: the same orders, retried with their
  // idempotency keys, must find every order decided and the invariant intact.
  check_demo_ok(sh(drive));
  auto st = sh(c.ctl + "--json status");
  CHECK(st.text.find("\"outbox_depth\":1") == std::string::npos);
  CHECK(sh(c.ctl + "parked").text.find("no parked messages") != std::string::npos);
  CHECK(epoch_of(c) == static_cast<uint64_t>(1 + n.moves + n.splits));
  return n;
}
}  // namespace

TEST_CASE("moves and splits during the demo keep the invariant (>= 20 moves, >= 5 splits)") {
  Cluster c;
  auto n = move_split_storm(c, [](const StormCounts&) {});
  MESSAGE("SUMMARY storm moves=" << n.moves << " splits=" << n.splits << " refused=" << n.refused);
}

TEST_CASE("conflicting or malformed move and split commands are refused and leave the map unchanged") {
  Cluster c;
  require_drive(std::string(TANDEM_RESERVATION_BIN) + " drive --quiet --config " + c.conf + " --orders 200 --items 100");
  uint64_t epoch = epoch_of(c);
  // Initial map: order partitions 1-6 (hash, 256 slots, owners 1,2,3,1,2,3), item 7-11 (range).
  expect_refusals(c, {
      {"move 99 2", "no partition 99"},
      {"move 1 9", "no node 9"},
      {"move 1 1", "already on node 1"},
      {"move x 2", "PARTITION must be a partition id"},
      {"move 0 2", "PARTITION must be a partition id"},
      {"move 1 two", "NODE must be a node id"},
      {"move 1", "'move' takes 2 argument(s), got 1"},
      {"move", "'move' takes 2 argument(s), got 0"},
      {"split 99", "no partition 99"},
      {"split 1 200", "slot 200 is not inside partition 1"},
      {"split 1 0", "slot 0 is not inside partition 1"},
      {"split 1 abc", "split point of a hash partition is a slot number"},
      {"split 8 sku-1", "key 'sku-1' is not inside partition 8"},
      {"split 7 sku-9", "key 'sku-9' is not inside partition 7"},
      {"split", "'split' takes 1 or 2 argument(s), got 0"},
      {"split 1 2 3", "'split' takes 1 or 2 argument(s), got 3"},
      {"mvoe 1 2", "unknown command 'mvoe'"},
      {"merge 1 1", "cannot merge a partition with itself"},
      {"merge 1 7", "hold different types"},
      {"merge 1 2", "are on different nodes"},
      {"merge 1 4", "are not adjacent"},
      {"merge 1 x", "PARTITION must be a partition id"},
      {"merge 1 99", "no partition 99"},
      {"drain-node 9", "no node 9"},
      {"drain-node x", "NODE must be a node id"},
      {"rebalance now", "'rebalance' takes 0 argument(s), got 1"},
  });
  CHECK(epoch_of(c) == epoch);
  // Ids travel as 64-bit varints: one beyond 32 bits names no partition, and must not wrap onto
  // one that exists (2^32 + 8 onto partition 8). tandemctl refuses such ids itself; other
  // clients on the wire may not.
  {
    tandem::entity::Client::Options co;
    co.config_path = c.conf;
    co.role = "admin";
    auto client = tandem::entity::Client::connect(co);
    REQUIRE(client.is_ok());
    uint64_t big = (uint64_t{1} << 32) + 8;
    auto split = (*client)->request(1, "split", tandem::ByteWriter().varint(big).bytes("sku-3").take(), 10'000);
    CHECK(!split.is_ok());
    CHECK(split.status().message().find("no partition " + std::to_string(big)) != std::string::npos);
    auto move = (*client)->request(1, "move", tandem::ByteWriter().varint((uint64_t{1} << 33) + 3).bytes("1").take(), 10'000);
    CHECK(!move.is_ok());
    CHECK(move.status().message().find("no partition") != std::string::npos);
    // A caller that has the answer may send the next command at once: the controller is not
    // still busy with the one it answered.
    int in_progress = 0;
    for (int i = 0; i < 50; ++i) {
      auto again = (*client)->request(1, "split", tandem::ByteWriter().varint(big).bytes("sku-3").take(), 10'000);
      CHECK(!again.is_ok());
      if (again.status().message().find("in progress") != std::string::npos) ++in_progress;
    }
    CHECK(in_progress == 0);
  }
  CHECK(epoch_of(c) == epoch);
  // Two commands at once: the second is refused while the first runs.
  bool conflict_seen = false;
  for (int i = 0; i < 10 && !conflict_seen; ++i) {
    auto a = std::async(std::launch::async, [&] { return sh(c.ctl + "move 7 " + std::to_string(2 + i % 2)); });
    auto b = sh(c.ctl + "split 1");
    auto ar = a.get();
    conflict_seen = b.text.find("another move or split is in progress") != std::string::npos ||
                    ar.text.find("another move or split is in progress") != std::string::npos;
  }
  CHECK(conflict_seen);
}

TEST_CASE("a node killed at each step of a move leaves exactly one owner and loses nothing") {
  // Node 1 is the controller and owns partition 1; the crash point fires inside node 1.
  struct Step {
    std::string point;
    int owner_after;  // before the map commit the move is rolled back; after it, node 2 owns it
  };
  for (auto& step : std::vector<Step>{{"move:frozen_before_flush", 1}, {"move:exported", 1}, {"move:before_commit", 1},
                                      {"move:committed", 2}}) {
    CAPTURE(step.point);
    Cluster c;
    std::string drive = std::string(TANDEM_RESERVATION_BIN) + " drive --quiet --config " + c.conf + " --orders 1500 --items 100";
    require_drive(drive);
    CHECK(crash_during(c, 1, step.point, "move 1 2").code != 0);  // the controller died during the move
    CHECK(read_file(c.dir.sub("c") + "/node-1.log").find("crash point reached") != std::string::npos);
    auto parts = sh(c.ctl + "partitions");
    INFO(parts.text);
    CHECK(parts.text.find("\n1    order      slots 0..42              " + std::to_string(step.owner_after)) != std::string::npos);
    // Every order is found exactly once (a copy on two nodes would be counted twice) and the
    // invariant holds; then new traffic flows through the partition's owner.
    check_demo_again(c, drive, "--orders 1500 --items 100 --seed 42");
  }
  MESSAGE("CRASH move steps (controller and source) points=4 kills=4 recovered=4");
}

TEST_CASE("the controller killed at each step of a split: the split happened exactly when its commit did, nothing lost") {
  struct Step {
    std::string point;
    bool split_after;  // before the commit the map is unchanged; from the commit on, the split stands
  };
  for (auto& step : std::vector<Step>{{"split:before_commit", false}, {"split:committed", true}, {"split:adopted", true}}) {
    CAPTURE(step.point);
    Cluster c;
    std::string drive = std::string(TANDEM_RESERVATION_BIN) + " drive --quiet --config " + c.conf + " --orders 1500 --items 100";
    require_drive(drive);
    uint64_t epoch = epoch_of(c);
    CHECK(crash_during(c, 1, step.point, "split 2").code != 0);  // the controller died during the split
    CHECK(read_file(c.dir.sub("c") + "/node-1.log").find("crash point reached") != std::string::npos);
    CHECK(epoch_of(c) == epoch + (step.split_after ? 1 : 0));
    auto parts = sh(c.ctl + "partitions");
    INFO(parts.text);
    CHECK((parts.text.find("\n12   order") != std::string::npos) == step.split_after);
    // Every order is found once and the invariant holds on whichever map stands; traffic flows.
    check_demo_again(c, drive, "--orders 1500 --items 100 --order-prefix after-split-");
  }
  MESSAGE("CRASH split steps (controller) points=3 kills=3 recovered=3");
}

TEST_CASE("a duplicate of a message applied before a move is not applied again at the new owner") {
  Cluster c;
  std::string drive = std::string(TANDEM_RESERVATION_BIN) + " drive --quiet --config " + c.conf + " --orders 300 --items 10";
  require_drive(drive);
  // Item sku-1 is in partition 7 (range [, sku-2), node 1). Find an order it has a record of.
  auto before = sh(c.ctl + "inspect item sku-1");
  auto pos = before.text.find("activity order/");
  REQUIRE(pos != std::string::npos);
  auto end = before.text.find(' ', pos + 9);
  std::string order_key = before.text.substr(pos + 15, end - pos - 15);
  auto mv = sh(c.ctl + "move 7 2");
  INFO(mv.text);
  REQUIRE(mv.code == 0);
  auto moved = sh(c.ctl + "inspect item sku-1");
  CHECK(moved.text.find("on node 2") != std::string::npos);
  // Re-inject the order's first message (its try, seq 1) at the new owner, as a late duplicate.
  auto net = tandem::net::make_real_network();
  auto s = node_session(*net, c, 2, 1);
  tandem::messaging::Envelope e;
  e.from = {"order", order_key};
  e.to = {"item", "sku-1"};
  e.seq = 1;
  e.kind = tandem::messaging::Kind::kTry;
  e.correlation = 1;
  e.payload_type = capnp::typeId<Reserve>();
  e.payload = tandem::entity::build<Reserve>([](Reserve::Builder r) { r.setQty(1000); });
  e.deadline_ms = 4'000'000'000'000;
  std::promise<tandem::Status> acked;
  s->deliver(e, [&](tandem::Status st) { acked.set_value(st); });
  CHECK(acked.get_future().get().is_ok());  // acknowledged as a duplicate
  net->stop();
  auto after = sh(c.ctl + "inspect item sku-1");
  CHECK(after.text == moved.text);  // nothing changed: same state, activities, operations
  check_demo_ok(sh(drive));          // and the invariant still holds
}

TEST_CASE("rebalance plans and evens out, drain-node empties a node and refuses moves to it, merge joins") {
  Cluster c;
  std::string drive = std::string(TANDEM_RESERVATION_BIN) + " drive --quiet --config " + c.conf + " --orders 600 --items 60";
  require_drive(drive);
  CHECK(sh(c.ctl + "rebalance --dry-run").text.find("balanced: nothing to move") != std::string::npos);
  REQUIRE(sh(c.ctl + "move 2 1").code == 0);
  REQUIRE(sh(c.ctl + "move 3 1").code == 0);
  uint64_t epoch = epoch_of(c);
  auto plan = sh(c.ctl + "rebalance --dry-run");
  CHECK(plan.text.find("plan (2 moves, not executed)") != std::string::npos);
  CHECK(epoch_of(c) == epoch);  // a dry run changes nothing
  auto reb = sh(c.ctl + "rebalance");
  CHECK(reb.code == 0);
  CHECK(sh(c.ctl + "rebalance --dry-run").text.find("balanced") != std::string::npos);
  auto drain = sh(c.ctl + "drain-node 3");
  INFO(drain.text);
  CHECK(drain.code == 0);
  CHECK(drain.text.find("node 3 is drained") != std::string::npos);
  auto st = sh(c.ctl + "--json status");
  CHECK(st.text.find("\"node\":3,\"address\":\"127.0.0.1:" + std::to_string(c.port(3)) + "\",\"epoch\":" +
                     std::to_string(epoch_of(c)) + ",\"partitions\":0") != std::string::npos);
  auto refused = sh(c.ctl + "move 1 3");
  CHECK(refused.code != 0);
  CHECK(refused.text.find("node 3 is draining") != std::string::npos);
  CHECK(sh(c.ctl + "drain-node 3").text.find("already draining") != std::string::npos);
  // Partitions 1 and 2 (adjacent order slots) are both on node 1 after the moves above.
  auto m = sh(c.ctl + "merge 1 2");
  INFO(m.text);
  CHECK(m.code == 0);
  CHECK(sh(c.ctl + "partitions").text.find("slots 0..85") != std::string::npos);
  // With node 2 down, node 1 is the last node that could take partitions: there would be nowhere
  // to put them.
  REQUIRE(c.launcher("kill 2").code == 0);
  uint64_t before_last = epoch_of(c);
  auto last = sh(c.ctl + "drain-node 1");
  INFO(last.text);
  CHECK(last.code != 0);
  CHECK(last.text.find("no other node that answers can take the partitions of node 1; nothing changed") != std::string::npos);
  CHECK(epoch_of(c) == before_last);
  REQUIRE(c.launcher("restart 2").code == 0);
  check_demo_ok(sh(drive));
}

TEST_CASE("a controller killed during a move of another node's partition: the source is thawed when it restarts") {
  Cluster c;
  std::string drive = std::string(TANDEM_RESERVATION_BIN) + " drive --quiet --config " + c.conf + " --orders 800 --items 80";
  require_drive(drive);
  // Partition 2 (order) is on node 2; the controller (node 1) dies after node 2 froze and exported it.
  CHECK(crash_during(c, 1, "move:before_commit", "move 2 3").code != 0);
  REQUIRE(tandem::testing::wait_until(
      [&] { return read_file(c.dir.sub("c") + "/node-2.log").find("thawing 1 partition") != std::string::npos; },
      std::chrono::seconds(20)));
  CHECK(sh(c.ctl + "partitions").text.find("\n2    order      slots 42..85             2") != std::string::npos);
  // Every order of partition 2 answers again, from node 2.
  check_demo_again(c, drive, "--orders 800 --items 80 --order-prefix after-");
}

TEST_CASE("the target killed at each step of a move: exactly one owner, nothing lost") {
  struct Step {
    std::string point;
    int owner_after;
  };
  // Node 1 (the controller) moves its partition 1 to node 2, which dies at the step.
  for (auto& step : std::vector<Step>{{"move:ingest_before_write", 1}, {"move:ingested", 1}, {"move:adopt", 2}}) {
    CAPTURE(step.point);
    Cluster c;
    std::string drive = std::string(TANDEM_RESERVATION_BIN) + " drive --quiet --config " + c.conf + " --orders 1500 --items 100";
    require_drive(drive);
    auto mv = crash_during(c, 2, step.point, "move 1 2");
    INFO(mv.text);
    // After the commit the controller retries adopt until node 2 is back; before it, the move
    // was aborted and node 1 thawed the partition.
    REQUIRE(tandem::testing::wait_until([&] {
      return sh(c.ctl + "partitions").text.find("\n1    order      slots 0..42              " +
                                                std::to_string(step.owner_after)) != std::string::npos;
    }));
    check_demo_again(c, drive, "--orders 1500 --items 100 --order-prefix after-");
  }
  MESSAGE("CRASH move steps (target) points=3 kills=3 recovered=3");
}

// Node 2 is restarted to die when asked to adopt a partition, and `move 1 2` is started: node 1,
// the controller, commits the move and then asks node 2 again (for up to 15 s) while it is down.
// Returns once node 2 has died; the future is the move command's outcome.
std::future<Out> move_to_a_target_that_dies(Cluster& c) {
  REQUIRE(sh("TANDEM_CRASH_AT=move:adopt " + c.env + TANDEM_CLUSTER_SCRIPT + " restart 2").code == 0);
  auto mv = std::async(std::launch::async, [&c] { return sh(c.ctl + "move 1 2"); });
  REQUIRE(tandem::testing::wait_until([&] { return node_stopped(c, 2); }));
  return mv;
}

TEST_CASE("a controller stops on SIGTERM at once while a committed move waits for its dead target") {
  Cluster c;
  std::string drive = std::string(TANDEM_RESERVATION_BIN) + " drive --quiet --config " + c.conf + " --orders 500 --items 100";
  require_drive(drive);
  // The controller asks the dead target again for up to 15 s. A SIGTERM meanwhile must not wait
  // that out (the launcher's `down` kills a node that takes over 10 s).
  auto mv = move_to_a_target_that_dies(c);
  auto t0 = std::chrono::steady_clock::now();
  REQUIRE(sh("kill -TERM $(cat " + c.dir.sub("c") + "/node-1.pid)").code == 0);
  REQUIRE(tandem::testing::wait_until([&] { return node_stopped(c, 1); }, std::chrono::seconds(30)));
  double took_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  mv.get();
  CHECK_MESSAGE(took_s < 8.0, "node 1 took " << took_s << " s to stop");
  std::string log = read_file(c.dir.sub("c") + "/node-1.log");
  CHECK(log.find("did not take epoch") != std::string::npos);
  CHECK(log.rfind("stopped") != std::string::npos);
  CHECK(log.rfind("stopped") > log.rfind("signal 15: stopping"));
  // The move was committed: both nodes back, node 2 owns the partition and nothing is lost.
  REQUIRE(c.launcher("restart 1").code == 0);
  REQUIRE(c.launcher("restart 2").code == 0);
  REQUIRE(tandem::testing::wait_until([&] {
    return sh(c.ctl + "partitions").text.find("\n1    order      slots 0..42              2") != std::string::npos;
  }));
  check_demo_again(c, drive, "--orders 500 --items 100 --order-prefix after-");
}

TEST_CASE("a peer that stays down is logged once and summed up, not at every retry, and its return is logged") {
  Cluster c;
  std::string drive = std::string(TANDEM_RESERVATION_BIN) + " drive --quiet --config " + c.conf + " --orders 300 --items 100";
  require_drive(drive);
  // The controller asks the dead target again and again: a connect every 200 ms.
  auto mv = move_to_a_target_that_dies(c);
  std::this_thread::sleep_for(std::chrono::seconds(4));
  auto log = read_file(c.dir.sub("c") + "/node-1.log");
  INFO(log.substr(log.size() > 3000 ? log.size() - 3000 : 0));
  size_t lines = count_of(log, "cannot reach node 2");
  CHECK(lines >= 1);
  CHECK(lines <= 2);  // the first failure, and at most one sum-up line
  CHECK(log.find("further failures are summed up every 30 s") != std::string::npos);
  // tandemctl parked with node 2 down: the error for node 2, and what the others said.
  auto parked = sh(c.ctl + "parked");
  INFO(parked.text);
  CHECK(parked.code == 1);
  CHECK(parked.text.find("tandemctl: node 2: ") != std::string::npos);
  CHECK(parked.text.find("no parked messages on the 2 of 3 nodes that answered") != std::string::npos);
  REQUIRE(c.launcher("restart 2").code == 0);
  mv.get();
  REQUIRE(tandem::testing::wait_until([&] {
    return sh(c.ctl + "partitions").text.find("\n1    order      slots 0..42              2") != std::string::npos;
  }));
  REQUIRE(tandem::testing::wait_until(
      [&] { return read_file(c.dir.sub("c") + "/node-1.log").find("reached node 2 again after") != std::string::npos; }));
  // A drive after the move: nothing lost, and its RESULT counts the moves made during it only.
  auto after = sh(drive + " --order-prefix after-");
  check_demo_ok(after);
  CHECK(after.text.find(" moves=0 splits=0 epoch=2 ") != std::string::npos);
}

TEST_CASE("a target that died after ingesting a move does not arm the timers of the partition on restart") {
  // Orders of partition 1 (node 1) wait on an item of node 3, which is paused, so each holds a
  // live escrow deadline timer. Node 2 receives partition 1 in a move and dies after ingesting
  // it; the move is rolled back. Restarted, node 2 holds the partition's timer rows but does not
  // host the orders: it must leave those timers unarmed (armed, they would sit in its heap until
  // their deadline, and count as pending).
  Cluster c;
  require_drive(std::string(TANDEM_RESERVATION_BIN) + " drive --quiet --config " + c.conf + " --orders 200 --items 60");
  tandem::entity::Client::Options co;
  co.config_path = c.conf;
  auto client = tandem::entity::Client::connect(co);
  REQUIRE(client.is_ok());
  auto& cl = **client;
  auto map = tandem::partition::PartitionMap::decode(cl.map_bytes());
  REQUIRE(map.is_ok());
  std::string item;
  for (int i = 0; i < 60 && item.empty(); ++i)
    if (cl.owner_of({"item", "sku-" + std::to_string(i)}) == 3) item = "sku-" + std::to_string(i);
  REQUIRE(!item.empty());
  std::vector<std::string> orders;
  for (int i = 0; orders.size() < 20 && i < 10'000; ++i) {
    std::string key = "timer-" + std::to_string(i);
    auto* p = map->find({"order", key});
    if (p && p->id == 1 && p->owner == 1) orders.push_back(key);
  }
  REQUIRE(orders.size() == 20);
  auto timers_on = [&](uint32_t node) -> int64_t {
    auto r = cl.request(node, "timers", "", 2'000);
    return r ? std::stoll(*r) : -1;
  };

  REQUIRE(c.launcher("stop 3").code == 0);
  ContOnExit resume{c, 3};
  auto answered = std::make_shared<std::atomic<int>>(0);
  for (auto& key : orders)
    cl.call<PlaceOrder>({"order", key}, "test", key,
                        [&](PlaceOrder::Builder b) {
                          auto l = b.initLines(1);
                          l[0].setItem(item);
                          l[0].setQty(1);
                          b.setDeadlineMs(600'000);
                        },
                        [answered](tandem::entity::ClientReply) { ++*answered; });
  REQUIRE(tandem::testing::wait_until([&] { return timers_on(1) == 20; }));
  CHECK(*answered == 0);

  auto mv = crash_during(c, 2, "move:ingested", "move 1 2");
  INFO(mv.text);
  REQUIRE(tandem::testing::wait_until([&] { return timers_on(2) >= 0; }));
  auto log = read_file(c.dir.sub("c") + "/node-2.log");
  CHECK(log.find("(20 timers of entities hosted elsewhere left unarmed)") != std::string::npos);
  CHECK(timers_on(2) == 0);
  CHECK(timers_on(1) == 20);

  REQUIRE(c.launcher("cont 3").code == 0);
  REQUIRE(tandem::testing::wait_until([&] { return *answered == 20 && timers_on(1) == 0; }));
  CHECK(timers_on(2) == 0);
  CHECK(timers_on(3) == 0);
}

TEST_CASE("add-node brings a new node in, rebalance gives it partitions, and traffic reaches it") {
  Cluster c;
  std::string drive = std::string(TANDEM_RESERVATION_BIN) + " drive --quiet --config " + c.conf + " --orders 600 --items 60";
  require_drive(drive);
  uint64_t epoch = epoch_of(c);
  expect_refusals(c, {
      {"add-node 2 127.0.0.1:1 127.0.0.1:2", "node 2 is already in the cluster"},
      {"add-node 9 127.0.0.1:1 127.0.0.1:2", "node 9 is not serving at 127.0.0.1:1"},
      {"add-node 9 localhost 127.0.0.1:2", "is not host:port"},
      {"add-node x 127.0.0.1:1 127.0.0.1:2", "NODE must be a node id"},
      {"add-node 9 127.0.0.1:1", "'add-node' takes 3 argument(s), got 2"},
  });
  CHECK(epoch_of(c) == epoch);
  auto add = sh("TANDEMCTL=" + std::string(TANDEMCTL_BIN) + " " + c.env + TANDEM_CLUSTER_SCRIPT + " add-node");
  INFO(add.text);
  REQUIRE(add.code == 0);
  CHECK(add.text.find("added node 4") != std::string::npos);
  auto reb = sh(c.ctl + "rebalance");
  INFO(reb.text);
  CHECK(reb.text.find("to node 4") != std::string::npos);
  auto st = sh(c.ctl + "status");
  CHECK(st.text.find("\n4     127.0.0.1:" + std::to_string(c.port(4))) != std::string::npos);
  check_demo_ok(sh(drive), 4);  // the old orders, read back across 4 nodes
  auto more = sh(std::string(TANDEM_RESERVATION_BIN) + " drive --quiet --config " + c.conf +
                 " --orders 600 --items 60 --order-prefix new-");
  INFO(more.text);
  CHECK(more.code == 0);
  CHECK(more.text.find("RESULT demo nodes=4 ") != std::string::npos);
  CHECK(more.text.find("invariant=ok") != std::string::npos);
}

namespace {
// The node that holds the controller role, as tandemctl finds it.
int controller_of(Cluster& c) {
  auto r = sh(c.ctl + "--json controller");
  INFO(r.text);
  auto pos = r.text.find("\"controller\":");
  REQUIRE(pos != std::string::npos);
  return std::stoi(r.text.substr(pos + 13));
}

// The owner of partition `pid` in the map tandemctl reads.
int owner_of(Cluster& c, int pid) {
  auto p = sh(c.ctl + "partitions");
  std::istringstream in(p.text);
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream w(line);
    std::vector<std::string> t;
    for (std::string x; w >> x;) t.push_back(x);
    if (t.size() >= 3 && t[0] == std::to_string(pid)) return std::stoi(t.back());
  }
  FAIL("no partition " << pid << " in:\n" << p.text);
  return 0;
}

bool log_has(Cluster& c, int node, const std::string& what) {
  return read_file(c.dir.sub("c") + "/node-" + std::to_string(node) + ".log").find(what) != std::string::npos;
}
}  // namespace

TEST_CASE("etcd metadata: moves and splits during the demo, with the elected controller killed twice (>= 20 moves, >= 5 splits)") {
  Cluster c(3, "etcd");
  CHECK(read_file(c.conf).find("meta etcd://127.0.0.1:") != std::string::npos);
  int kills = 0;
  std::set<int> controllers{controller_of(c)};
  auto n = move_split_storm(c, [&](const StormCounts& n) {
    if (!((n.moves == 7 && kills == 0) || (n.moves == 15 && kills == 1))) return;
    int ctl = controller_of(c);
    REQUIRE(c.launcher("kill " + std::to_string(ctl)).code == 0);
    ++kills;
    REQUIRE(c.launcher("restart " + std::to_string(ctl)).code == 0);
    // The dead process's lease runs out (3 s) and a node is elected: any of the three, the
    // restarted one included (it is a new process with a new lease).
    REQUIRE(tandem::testing::wait_until([&] {
      int elected = 0;
      for (int node = 1; node <= 3; ++node) {
        auto log = read_file(c.dir.sub("c") + "/node-" + std::to_string(node) + ".log");
        for (auto p = log.find("elected controller"); p != std::string::npos; p = log.find("elected controller", p + 1)) ++elected;
      }
      return elected >= 1 + kills;
    }, std::chrono::seconds(20)));
    controllers.insert(controller_of(c));
  });
  MESSAGE("SUMMARY etcd storm moves=" << n.moves << " splits=" << n.splits << " refused=" << n.refused
                                       << " controller kills=" << kills << " controllers=" << controllers.size());
  CHECK(kills == 2);
}

TEST_CASE("etcd metadata: a controller paused (SIGSTOP) past its lease in the middle of a move cannot commit it after SIGCONT") {
  Cluster c(3, "etcd");
  std::string drive = std::string(TANDEM_RESERVATION_BIN) + " drive --quiet --config " + c.conf + " --orders 1500 --items 100";
  require_drive(drive);
  // Every node pauses itself if it reaches the commit of a move; only the controller does.
  for (int n = 1; n <= 3; ++n)
    REQUIRE(sh("TANDEM_STOP_AT=move:before_commit " + c.env + TANDEM_CLUSTER_SCRIPT + " restart " + std::to_string(n)).code == 0);
  // Each restart hands the role on (a stopping node gives its lease back): read it once it is settled.
  int ctl = 0;
  REQUIRE(tandem::testing::wait_until([&] {
    int a = controller_of(c);
    std::this_thread::sleep_for(std::chrono::milliseconds(1500));
    return (ctl = controller_of(c)) == a;
  }, std::chrono::seconds(30)));
  // A partition of another node, moved to the third node.
  int pid = 0, from = 0, to = 0;
  for (int p = 1; p <= 6 && !pid; ++p) {
    int o = owner_of(c, p);
    if (o != ctl) pid = p, from = o, to = 6 - o - ctl;
  }
  REQUIRE(pid != 0);
  CAPTURE(ctl);
  CAPTURE(pid);
  uint64_t epoch = epoch_of(c);
  auto mv = std::async(std::launch::async, [&] { return sh(c.ctl + "move " + std::to_string(pid) + " " + std::to_string(to)); });
  ContOnExit resume{c, ctl};  // the move's tandemctl waits for the paused node
  REQUIRE(tandem::testing::wait_until([&] { return log_has(c, ctl, "stop point reached"); }, std::chrono::seconds(30)));
  // Past its lease another node takes the role and thaws the partition at its owner.
  REQUIRE(tandem::testing::wait_until([&] {
    for (int n = 1; n <= 3; ++n)
      if (n != ctl && log_has(c, n, "elected controller")) return true;
    return false;
  }, std::chrono::seconds(20)));
  REQUIRE(tandem::testing::wait_until([&] { return log_has(c, from, "thawing 1 partition(s)"); }, std::chrono::seconds(20)));
  REQUIRE(c.launcher("cont " + std::to_string(ctl)).code == 0);
  auto r = mv.get();
  INFO(r.text);
  CHECK(r.code != 0);
  CHECK(r.text.find("no longer holds the controller role") != std::string::npos);
  // The refusal above comes from the lease's clock; the keeper logs the expiry at its next
  // renewal after SIGCONT (a tick or two later: one paused inside a keepalive sees it the next time).
  CHECK(tandem::testing::wait_until([&] { return log_has(c, ctl, "the etcd lease expired"); }, std::chrono::seconds(10)));
  // Nothing changed: the partition is where it was, at the same epoch, and every order is
  // found once with the invariant intact; new traffic flows.
  CHECK(owner_of(c, pid) == from);
  CHECK(epoch_of(c) == epoch);
  check_demo_again(c, drive, "--orders 1500 --items 100 --order-prefix paused-");
  // The role stays with the new controller; with the stop point gone, moves work again.
  CHECK(controller_of(c) != ctl);
  for (int n = 1; n <= 3; ++n) REQUIRE(c.launcher("restart " + std::to_string(n)).code == 0);
  auto ok = sh(c.ctl + "move " + std::to_string(pid) + " " + std::to_string(to));
  INFO(ok.text);
  CHECK(ok.code == 0);
  CHECK(owner_of(c, pid) == to);
}

TEST_CASE("etcd metadata: a source paused (SIGSTOP) past its lease while its partition is moved: rolled back, no stale commit after SIGCONT") {
  Cluster c(3, "etcd");
  std::string drive = std::string(TANDEM_RESERVATION_BIN) + " drive --quiet --config " + c.conf + " --orders 1500 --items 100";
  require_drive(drive);
  int ctl = controller_of(c);
  int pid = 0, from = 0, to = 0;
  for (int p = 1; p <= 6 && !pid; ++p) {
    int o = owner_of(c, p);
    if (o != ctl) pid = p, from = o, to = 6 - o - ctl;
  }
  REQUIRE(pid != 0);
  uint64_t epoch = epoch_of(c);
  REQUIRE(c.launcher("stop " + std::to_string(from)).code == 0);
  ContOnExit resume{c, from};
  std::this_thread::sleep_for(std::chrono::seconds(4));  // past the 3 s lease
  // Refused (the source does not take the controller's map) or aborted (it does not take the
  // freeze): either way nothing is committed and the partition stays.
  auto mv = sh(c.ctl + "move " + std::to_string(pid) + " " + std::to_string(to));
  INFO(mv.text);
  CHECK(mv.code != 0);
  CHECK(mv.text.find("stays on node " + std::to_string(from)) != std::string::npos);
  REQUIRE(c.launcher("cont " + std::to_string(from)).code == 0);
  // On resuming, the source finds its lease gone and takes a new one before it writes again.
  REQUIRE(tandem::testing::wait_until([&] { return log_has(c, from, "the etcd lease expired"); }, std::chrono::seconds(10)));
  CHECK(owner_of(c, pid) == from);
  CHECK(epoch_of(c) == epoch);
  check_demo_again(c, drive, "--orders 1500 --items 100 --order-prefix stalled-");
  CHECK(sh(c.ctl + "parked").text.find("no parked messages") != std::string::npos);
}

namespace {
// Node 3 starts with no copy of the map while what it needs to get one (the controller, or etcd)
// does not answer, so its start() keeps waiting; a SIGTERM then must stop it at once and
// cleanly. `hold`/`release` take that away and give it back.
void sigterm_while_starting(Cluster& c, const std::string& hold, const std::string& release, const std::string& waiting) {
  std::string drive = std::string(TANDEM_RESERVATION_BIN) + " drive --quiet --config " + c.conf + " --orders 300 --items 50";
  require_drive(drive);
  REQUIRE(c.launcher("kill 3").code == 0);
  std::string data = c.dir.sub("c") + "/node3";
  std::filesystem::rename(data, data + ".kept");  // put back below: node 3's partitions live there
  REQUIRE(sh(hold).code == 0);
  std::string log_path = c.dir.sub("c") + "/node-3.log", pid_path = c.dir.sub("c") + "/node-3.pid";
  // Started by hand: the launcher's `restart` would wait for the node to serve. Its log is read
  // from here on (the first life may have waited for the controller too, while it came up).
  size_t from = read_file(log_path).size();
  REQUIRE(sh("nohup " + std::string(TANDEM_RESERVATION_BIN) + " node --config " + c.conf + " --id 3 >>" + log_path +
             " 2>&1 & echo $! >" + pid_path).code == 0);
  bool waited = tandem::testing::wait_until([&] { return read_file(log_path).find(waiting, from) != std::string::npos; },
                                            std::chrono::seconds(30));
  auto t0 = std::chrono::steady_clock::now();
  REQUIRE(sh("kill -TERM $(cat " + pid_path + ")").code == 0);
  bool stopped = tandem::testing::wait_until([&] { return node_stopped(c, 3); }, std::chrono::seconds(60));
  double took_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  REQUIRE(sh(release).code == 0);
  REQUIRE(waited);
  REQUIRE(stopped);
  CHECK_MESSAGE(took_s < 5.0, "node 3 took " << took_s << " s to stop");
  std::string log = read_file(log_path).substr(from);
  INFO(log);
  CHECK(log.find("signal 15: stopping (it had not started: stopped while waiting for") != std::string::npos);
  CHECK(log.find("node 3: stopped\n") != std::string::npos);  // the last line of a clean stop
  CHECK(log.find("node 3: stopped\n") > log.find("signal 15: stopping"));
  CHECK(log.find("cannot start") == std::string::npos);
  // With its store back and the controller (or etcd) answering, node 3 serves again.
  std::filesystem::remove_all(data);
  std::filesystem::rename(data + ".kept", data);
  REQUIRE(c.launcher("restart 3").code == 0);
  check_demo_again(c, drive, "--orders 300 --items 50 --order-prefix after-");
}
}  // namespace

TEST_CASE("a node waiting at start for the controller's map stops at once on SIGTERM") {
  Cluster c;
  std::string pid1 = "$(cat " + c.dir.sub("c") + "/node-1.pid)";
  sigterm_while_starting(c, "kill -STOP " + pid1, "kill -CONT " + pid1,
                         "waiting for the controller (node 1) to serve the partition map");
}

TEST_CASE("etcd metadata: a node waiting at start for etcd stops at once on SIGTERM") {
  Cluster c(3, "etcd");
  std::string etcd = "$(cat " + c.dir.sub("c") + "/etcd.pid)";
  sigterm_while_starting(c, "kill -STOP " + etcd, "kill -CONT " + etcd, "waiting for etcd at");
}

TEST_CASE("two exports in opposite directions between two nodes do not wait on each other") {
  Cluster c;
  std::string drive = std::string(TANDEM_RESERVATION_BIN) + " drive --quiet --config " + c.conf + " --orders 600 --items 100";
  require_drive(drive);
  int from1 = 0, from2 = 0;  // a partition of node 1 and one of node 2
  for (int p = 1; p <= 9 && !(from1 && from2); ++p) {
    int o = owner_of(c, p);
    if (o == 1 && !from1) from1 = p;
    if (o == 2 && !from2) from2 = p;
  }
  REQUIRE((from1 && from2));
  // As two controllers at once would (a paused one resumed, and its successor): node 1 exports
  // to node 2 while node 2 exports to node 1. Each export waits for its chunks' ingest at the
  // other node.
  auto net = tandem::net::make_real_network();
  auto s1 = node_session(*net, c, 1, 3), s2 = node_session(*net, c, 2, 3);
  auto request = [](const std::shared_ptr<tandem::messaging::Session>& s, const std::string& method, std::string body) {
    auto p = std::make_shared<std::promise<std::pair<tandem::Status, std::string>>>();
    s->request(method, std::move(body), [p](tandem::Status st, std::string b) { p->set_value({st, std::move(b)}); });
    return p->get_future();
  };
  auto t0 = std::chrono::steady_clock::now();
  auto e1 = request(s1, "export", tandem::ByteWriter().varint(from1).varint(2).take());
  auto e2 = request(s2, "export", tandem::ByteWriter().varint(from2).varint(1).take());
  REQUIRE(e1.wait_for(std::chrono::seconds(60)) == std::future_status::ready);
  REQUIRE(e2.wait_for(std::chrono::seconds(60)) == std::future_status::ready);
  double took_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  auto r1 = e1.get(), r2 = e2.get();
  CHECK_MESSAGE(r1.first.is_ok(), r1.first.to_string());
  CHECK_MESSAGE(r2.first.is_ok(), r2.first.to_string());
  CHECK(std::stoul(r1.second) > 0);  // rows exported
  CHECK(std::stoul(r2.second) > 0);
  CHECK_MESSAGE(took_s < 10.0, "the two exports took " << took_s << " s");
  // The copies are not owned where they landed: drop them, and nothing of the owners changed.
  CHECK(request(s2, "drop", tandem::ByteWriter().varint(from1).take()).get().first.is_ok());
  CHECK(request(s1, "drop", tandem::ByteWriter().varint(from2).take()).get().first.is_ok());
  net->stop();
  CHECK(owner_of(c, from1) == 1);
  CHECK(owner_of(c, from2) == 2);
  check_demo_again(c, drive, "--orders 300 --items 100 --order-prefix after-");
}

TEST_CASE("backpressure: a stopped node makes the others' outboxes stop at their caps and clients get busy, all drains after") {
  tandem::testing::TempDir extra("limits");
  {
    std::ofstream t(extra.sub("types"));
    t << "type order hash slots=256 partitions=6\n"
         "type item range splits=sku-2,sku-4,sku-6,sku-8\n"
         "limits calls=200 outbox=100\n";
  }
  Cluster c(3, "embedded", "--types " + extra.sub("types"));
  auto run = std::async(std::launch::async, [&] {
    return sh(std::string(TANDEM_RESERVATION_BIN) + " drive --quiet --config " + c.conf +
              " --orders 20000 --items 300 --concurrency 256 --reply-timeout-ms 3000");
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));  // items set up, orders flowing
  REQUIRE(c.launcher("stop 3").code == 0);
  ContOnExit resume{c, 3};
  auto metric = [&](int node, const std::string& name) {
    auto m = sh("curl -s --max-time 5 http://127.0.0.1:" + std::to_string(c.base + 100 + node) + "/metrics");
    auto pos = m.text.find(name + "{node=\"" + std::to_string(node) + "\"} ");
    REQUIRE_MESSAGE(pos != std::string::npos, m.text);
    return std::stod(m.text.substr(m.text.find("} ", pos) + 2));
  };
  double busy = 0, deepest = 0;
  for (int i = 0; i < 15; ++i) {  // 3 s with node 3 stopped
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    for (int n = 1; n <= 2; ++n) deepest = std::max(deepest, metric(n, "tandem_outbox_depth"));
  }
  for (int n = 1; n <= 2; ++n) busy += metric(n, "tandem_busy_refusals_total");
  MESSAGE("BACKPRESSURE outbox cap=100 deepest=" << deepest << " busy answers=" << busy);
  CHECK(deepest <= 100 + 200);  // the cap, plus what calls admitted below it may still add
  CHECK(busy > 0);
  REQUIRE(c.launcher("cont 3").code == 0);
  // Recovery: the driver backs off on busy and places those orders again; all finish, the
  // invariant holds, the outboxes drain.
  auto r = run.get();
  check_demo_ok(r);
  CHECK(r.text.find(" busy=0") == std::string::npos);
  auto st = sh(c.ctl + "--json status");
  CHECK(st.text.find("\"outbox_depth\":0") != std::string::npos);
}

namespace {
struct Part {
  uint32_t id = 0, owner = 0;
  std::string type, range;
  uint64_t first_slot = 0;  // hash partitions: where the slots begin (the sort key)
};

// The partition map as tandemctl shows it (empty when no node answered).
std::vector<Part> partitions_of(Cluster& c) {
  auto r = sh(c.ctl + "--json partitions");
  std::vector<Part> out;
  if (r.code != 0) return out;
  auto j = nlohmann::json::parse(r.text, nullptr, false);
  if (j.is_discarded()) return out;
  for (auto& p : j["partitions"]) {
    Part x{p["id"].get<uint32_t>(), p["owner"].get<uint32_t>(), p["type"].get<std::string>(), p["range"].get<std::string>()};
    if (x.range.rfind("slots ", 0) == 0) x.first_slot = std::stoull(x.range.substr(6));
    out.push_back(x);
  }
  std::sort(out.begin(), out.end(), [](const Part& a, const Part& b) {
    return std::tie(a.type, a.first_slot, a.range) < std::tie(b.type, b.first_slot, b.range);
  });
  return out;
}

struct StormTotals {
  int rounds = 0, orders = 0, kills = 0, kills_in_moves = 0, pauses = 0, moves = 0, splits = 0, merges = 0, refused = 0, violations = 0;
};

// A tandemctl command that did not go through must say why (exit 1 and a "tandemctl:" line):
// refused (already there, too small, not adjacent), or the controller or a node was down.
bool changed(const Out& r, StormTotals& t) {
  if (r.code == 0) return true;
  ++t.refused;
  INFO(r.text);
  CHECK(r.code == 1);
  CHECK(r.text.find("tandemctl: ") != std::string::npos);
  return false;
}
}  // namespace

TEST_CASE("kill/move storm: kill -9, pauses, moves, splits and merges while the demo runs, round after round") {
  // TANDEM_STORM_SECONDS: how long to keep starting rounds (40 s by default; the soak run: 30 min).
  const char* secs_env = std::getenv("TANDEM_STORM_SECONDS");
  int seconds = secs_env ? std::max(1, std::atoi(secs_env)) : 40;
  Cluster c;
  std::mt19937 rnd(std::random_device{}());
  StormTotals t;
  auto start = std::chrono::steady_clock::now();
  auto elapsed_s = [&] {
    return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::steady_clock::now() - start).count();
  };
  const int kOrders = 5000;
  while (t.rounds == 0 || elapsed_s() < seconds) {
    std::string drive = std::string(TANDEM_RESERVATION_BIN) + " drive --quiet --config " + c.conf + " --orders " +
                        std::to_string(kOrders) + " --items 300 --stock 100000 --concurrency 64 --order-prefix r" +
                        std::to_string(t.rounds) + "-";
    auto run = std::async(std::launch::async, [&] { return sh(drive); });
    while (run.wait_for(std::chrono::milliseconds(150 + rnd() % 450)) != std::future_status::ready) {
      int node = 1 + static_cast<int>(rnd() % 3);
      uint32_t what = rnd() % 100;
      if (what < 15) {  // kill -9 and restart
        if (c.launcher("kill " + std::to_string(node)).code == 0) ++t.kills;
        std::this_thread::sleep_for(std::chrono::milliseconds(100 + rnd() % 400));
        auto r = c.launcher("restart " + std::to_string(node));
        INFO(r.text);
        CHECK(r.code == 0);
        continue;
      }
      if (what < 25) {  // SIGSTOP, then SIGCONT
        if (c.launcher("stop " + std::to_string(node)).code == 0) ++t.pauses;
        std::this_thread::sleep_for(std::chrono::milliseconds(300 + rnd() % 1200));
        CHECK(c.launcher("cont " + std::to_string(node)).code == 0);
        continue;
      }
      auto parts = partitions_of(c);
      if (parts.empty()) continue;  // no controller answered just now
      auto& p = parts[rnd() % parts.size()];
      if (what < 65) {
        // A quarter of the moves have a node killed while they run (any node: the source, the
        // target, the controller or a bystander).
        std::future<void> killer;
        if (rnd() % 4 == 0) {
          int victim = 1 + static_cast<int>(rnd() % 3);
          int after_ms = static_cast<int>(rnd() % 300);
          killer = std::async(std::launch::async, [&c, &t, victim, after_ms] {
            std::this_thread::sleep_for(std::chrono::milliseconds(after_ms));
            if (c.launcher("kill " + std::to_string(victim)).code == 0) ++t.kills_in_moves;
          });
        }
        t.moves += changed(sh(c.ctl + "move " + std::to_string(p.id) + " " + std::to_string(node)), t);
        if (killer.valid()) {
          killer.get();
          for (int n = 1; n <= 3; ++n)
            if (c.launcher("status").text.find("node " + std::to_string(n) + "  127.0.0.1:" + std::to_string(c.port(n)) +
                                               "  stopped") != std::string::npos) {
              auto r = c.launcher("restart " + std::to_string(n));
              INFO(r.text);
              CHECK(r.code == 0);
            }
        }
      } else if (what < 80 && parts.size() < 40) {
        t.splits += changed(sh(c.ctl + "split " + std::to_string(p.id)), t);
      } else {
        // Two neighbours of one type: onto one node first, then joined.
        size_t i = rnd() % parts.size();
        if (i + 1 >= parts.size() || parts[i].type != parts[i + 1].type) continue;
        if (parts[i].owner != parts[i + 1].owner) {
          if (!changed(sh(c.ctl + "move " + std::to_string(parts[i + 1].id) + " " + std::to_string(parts[i].owner)), t))
            continue;
          ++t.moves;
        }
        t.merges += changed(sh(c.ctl + "merge " + std::to_string(parts[i].id) + " " + std::to_string(parts[i + 1].id)), t);
      }
    }
    auto r = run.get();
    t.orders += kOrders;
    ++t.rounds;
    bool ok = r.code == 0 && r.text.find("invariant=ok") != std::string::npos;
    if (!ok) ++t.violations;
    CAPTURE(t.rounds);
    check_demo_ok(r);
    // Quiet at the end of a round: every node serves, the outboxes drain, nothing is parked.
    CHECK(tandem::testing::wait_until(
        [&] {
          auto st = sh(c.ctl + "--json status");
          return st.code == 0 && st.text.find("\"outbox_depth\":0") != std::string::npos &&
                 st.text.find("\"outbox_depth\":1") == std::string::npos && st.text.find("\"outbox_depth\":2") == std::string::npos;
        },
        std::chrono::seconds(60)));
    CHECK(sh(c.ctl + "parked").text.find("no parked messages") != std::string::npos);
    MESSAGE("STORM round " << t.rounds << " at " << elapsed_s() << " s: kills=" << t.kills << " pauses=" << t.pauses
                           << " moves=" << t.moves << " splits=" << t.splits << " merges=" << t.merges);
  }
  // Orders of the first and the last round and of up to 3 others read back once more through
  // the final map (each read checks every item against all confirmed orders).
  std::set<int> sample{0, t.rounds - 1};
  for (int i = 0; i < 3; ++i) sample.insert(static_cast<int>(rnd() % t.rounds));
  for (int k : sample) {
    auto again = sh(std::string(TANDEM_RESERVATION_BIN) + " drive --quiet --config " + c.conf + " --orders " +
                    std::to_string(kOrders) + " --items 300 --stock 100000 --concurrency 64 --order-prefix r" +
                    std::to_string(k) + "-");
    if (again.code != 0 || again.text.find("invariant=ok") == std::string::npos) ++t.violations;
    check_demo_ok(again);
  }
  MESSAGE("STORM seconds=" << elapsed_s() << " rounds=" << t.rounds << " orders=" << t.orders << " kills=" << t.kills
                           << " kills_in_moves=" << t.kills_in_moves << " pauses=" << t.pauses << " moves=" << t.moves
                           << " splits=" << t.splits << " merges=" << t.merges << " refused=" << t.refused << " violations=" << t.violations);
  CHECK(t.violations == 0);
  CHECK(t.kills + t.pauses >= 1);
  CHECK(t.moves >= 1);
}
