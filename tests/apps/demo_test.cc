// The reservation demo as real processes: faults on the delivery path, a kill at every named
// crash point followed by a restart, and kill -9 at random moments. Each restart reruns the
// driver with the same seed: every order is retried with its idempotency key, and the run must
// end with the invariant read back from the store.
#include <doctest/doctest.h>

#include <fcntl.h>
#include <cstdlib>
#include <fstream>
#include <random>
#include <signal.h>
#include <spawn.h>
#include <sstream>
#include <sys/wait.h>
#include <thread>
#include <vector>

#include <tandem/core/env.h>

#include "test_util.h"

extern char** environ;

namespace {

struct Run {
  int exit_code = -1;  // 128 + signal when killed
  std::string output;
  std::string result_line() const {
    std::istringstream in(output);
    std::string line, last;
    while (std::getline(in, line))
      if (line.rfind("RESULT ", 0) == 0) last = line;
    return last;
  }
};

// Runs the demo binary; kills it after `kill_after_ms` (SIGKILL) when positive, and after a
// hard limit in any case.
Run run_demo(const std::vector<std::string>& args, const std::string& crash_at, const std::string& log,
             int kill_after_ms = 0, int limit_s = 240) {
  std::vector<std::string> argv_s{TANDEM_RESERVATION_BIN, "demo", "--quiet"};
  argv_s.insert(argv_s.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : argv_s) argv.push_back(a.data());
  argv.push_back(nullptr);
  std::vector<std::string> env_s;
  for (char** e = environ; *e; ++e)
    if (std::string(*e).rfind("TANDEM_CRASH_AT=", 0) != 0) env_s.push_back(*e);
  if (!crash_at.empty()) env_s.push_back("TANDEM_CRASH_AT=" + crash_at);
  std::vector<char*> envp;
  for (auto& e : env_s) envp.push_back(e.data());
  envp.push_back(nullptr);

  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
  posix_spawn_file_actions_adddup2(&fa, 1, 2);
  pid_t pid = 0;
  int rc = posix_spawn(&pid, argv[0], &fa, nullptr, argv.data(), envp.data());
  posix_spawn_file_actions_destroy(&fa);
  REQUIRE(rc == 0);
  Run r;
  int status = 0;
  auto start = std::chrono::steady_clock::now();
  bool killed = false;
  while (true) {
    pid_t w = waitpid(pid, &status, WNOHANG);
    if (w == pid) break;
    auto elapsed = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start);
    if (!killed && ((kill_after_ms > 0 && elapsed.count() >= kill_after_ms) || elapsed.count() > limit_s * 1000)) {
      kill(pid, SIGKILL);
      killed = true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  std::ifstream in(log);
  r.output.assign(std::istreambuf_iterator<char>(in), {});
  std::ofstream(log, std::ios::trunc).close();
  return r;
}

void check_ok(const Run& r) {
  INFO(r.output.substr(r.output.size() > 3000 ? r.output.size() - 3000 : 0));
  CHECK(r.exit_code == 0);
  auto line = r.result_line();
  CHECK(line.find("invariant=ok") != std::string::npos);
}

const std::vector<std::string> kSmall{"--orders", "1500", "--items", "150", "--stock", "20", "--durability", "relaxed"};

std::vector<std::string> with(std::vector<std::string> base, const std::vector<std::string>& more) {
  base.insert(base.end(), more.begin(), more.end());
  return base;
}

// Kills the demo at `point` on its n-th hit, for each n, then reruns it to completion.
void crash_and_recover(const std::string& point, const std::vector<int>& hits, const std::vector<std::string>& args) {
  tandem::testing::TempDir dir("crash");
  std::string log = dir.sub("log");
  for (int n : hits) {
    CAPTURE(point);
    CAPTURE(n);
    auto data = with(args, {"--data", dir.sub("data-" + std::to_string(n))});
    auto crashed = run_demo(with(data, {"--fresh"}), point + ":" + std::to_string(n), log);
    INFO(crashed.output.substr(crashed.output.size() > 2000 ? crashed.output.size() - 2000 : 0));
    REQUIRE_MESSAGE(crashed.exit_code == 137, "the crash point was not reached");
    CHECK(crashed.output.find("crash point reached") != std::string::npos);
    check_ok(run_demo(data, "", log));
  }
  MESSAGE("CRASH point=" << point << " kills=" << hits.size() << " recovered=" << hits.size());
}

// Kills the demo at commit:after_write on its n-th hit, then kills the restart while it
// recovers (after it re-sent its outbox rows), then lets a third run finish.
void crash_during_recovery(const std::vector<int>& hits, const std::vector<std::string>& args) {
  tandem::testing::TempDir dir("recovery");
  std::string log = dir.sub("log");
  for (int n : hits) {
    CAPTURE(n);
    auto data = with(args, {"--data", dir.sub("data-" + std::to_string(n))});
    auto first = run_demo(with(data, {"--fresh"}), "commit:after_write:" + std::to_string(n), log);
    REQUIRE_MESSAGE(first.exit_code == 137, "the first crash point was not reached");
    auto second = run_demo(data, "recovery:outbox_resent", log);
    INFO(second.output.substr(second.output.size() > 2000 ? second.output.size() - 2000 : 0));
    REQUIRE_MESSAGE(second.exit_code == 137, "the recovery crash point was not reached");
    check_ok(run_demo(data, "", log));
  }
  MESSAGE("CRASH point=recovery:outbox_resent kills=" << 2 * hits.size() << " recovered=" << hits.size());
}

}  // namespace

TEST_CASE("the demo on one node ends with every order terminal and the invariant ok") {
  tandem::testing::TempDir dir("demo");
  auto r = run_demo(with(kSmall, {"--data", dir.sub("data"), "--durability", "strict"}), "", dir.sub("log"));
  check_ok(r);
  CHECK(r.result_line().find("orders=1500 ") != std::string::npos);
  CHECK(r.result_line().find("durability=strict") != std::string::npos);
}

TEST_CASE("a second run on the same data with the same order prefix is told why its count is off, a new prefix passes") {
  tandem::testing::TempDir dir("rerun");
  const std::vector<std::string> base{"--items", "50", "--stock", "20", "--durability", "relaxed", "--data", dir.sub("data")};
  check_ok(run_demo(with(base, {"--orders", "300"}), "", dir.sub("log")));
  auto again = run_demo(with(base, {"--orders", "200"}), "", dir.sub("log"));
  CHECK(again.exit_code == 1);
  CHECK(again.result_line().find("invariant=FAILED:expected 200 orders named 'order-N', found 300") != std::string::npos);
  CHECK(again.result_line().find("--order-prefix") != std::string::npos);
  check_ok(run_demo(with(base, {"--orders", "200", "--order-prefix", "second-"}), "", dir.sub("log")));
}

TEST_CASE("the counts in RESULT are the run's answers: a rerun gets the same, refused orders count in neither") {
  tandem::testing::TempDir dir("counts");
  const std::vector<std::string> base{"--items", "50", "--stock", "20", "--durability", "relaxed", "--data",
                                      dir.sub("data"), "--orders", "300"};
  auto field = [](const std::string& line, const std::string& name) -> uint64_t {
    auto at = line.find(" " + name + "=");
    REQUIRE(at != std::string::npos);
    return std::stoull(line.substr(at + name.size() + 2));
  };
  auto first = run_demo(base, "", dir.sub("log"));
  check_ok(first);
  uint64_t confirmed = field(first.result_line(), "confirmed"), cancelled = field(first.result_line(), "cancelled");
  CHECK(confirmed + cancelled == 300);
  CHECK(cancelled > 0);  // 20 units of 50 items do not serve 300 orders
  // The same orders again (same prefix, same seed): each is answered from its stored reply.
  auto again = run_demo(base, "", dir.sub("log"));
  check_ok(again);
  CHECK(field(again.result_line(), "confirmed") == confirmed);
  CHECK(field(again.result_line(), "cancelled") == cancelled);
  // Other orders under the same names (another seed): refused, and counted as neither.
  auto other = run_demo(with(base, {"--seed", "7"}), "", dir.sub("log"));
  CHECK(other.exit_code == 1);
  auto line = other.result_line();
  INFO(line);
  auto at = line.find("invariant=FAILED:");
  REQUIRE(at != std::string::npos);
  uint64_t refused = std::stoull(line.substr(at + 17));
  CHECK(line.find(" orders refused, first: ") != std::string::npos);
  CHECK(refused > 0);
  CHECK(field(line, "confirmed") + field(line, "cancelled") + refused == 300);
}

TEST_CASE("the demo with every delivery duplicated 3 times and reordered keeps the invariant") {
  tandem::testing::TempDir dir("dup");
  auto r = run_demo(with(kSmall, {"--data", dir.sub("data"), "--no-inline", "--duplicate", "1", "--delay", "0.5",
                                  "--max-delay-us", "20000"}),
                    "", dir.sub("log"));
  check_ok(r);
  auto line = r.result_line();
  auto pos = line.find("duplicates=");
  REQUIRE(pos != std::string::npos);
  CHECK(std::stoull(line.substr(pos + 11)) >= 10000);  // the runtime really saw and dropped them
}

TEST_CASE("the demo with lost deliveries keeps the invariant: the relay resends") {
  tandem::testing::TempDir dir("drop");
  check_ok(run_demo(with(kSmall, {"--data", dir.sub("data"), "--no-inline", "--drop", "0.2"}), "", dir.sub("log")));
}

// 30 crash moments over the six named crash points, each point 5 times. Small groups
// (--max-batch 64) give many commits per run, and spill messages into outbox rows.
TEST_CASE("crash point commit:before_write, then restart: invariant holds") {
  crash_and_recover("commit:before_write", {1, 3, 10, 30, 60}, with(kSmall, {"--max-batch", "64"}));
}
TEST_CASE("crash point commit:after_write (committed, not acknowledged), then restart: invariant holds") {
  crash_and_recover("commit:after_write", {1, 5, 20, 40, 70}, with(kSmall, {"--max-batch", "64"}));
}
TEST_CASE("crash point commit:before_ack, then restart: invariant holds") {
  crash_and_recover("commit:before_ack", {2, 8, 25, 50, 80}, with(kSmall, {"--max-batch", "64"}));
}
TEST_CASE("crash point relay:acked_before_delete (sent, not deleted), then restart: invariant holds") {
  crash_and_recover("relay:acked_before_delete", {1, 50, 400, 900, 1500}, with(kSmall, {"--no-inline"}));
}
TEST_CASE("crash point recovery:outbox_resent (a crash during recovery), then restart: invariant holds") {
  crash_during_recovery({2, 10, 25, 40, 60}, with(kSmall, {"--max-batch", "64", "--no-inline"}));
}
TEST_CASE("crash point timer:fired_before_commit, then restart: invariant holds and timers drain") {
  // Delays past the 150 ms deadline make escrow deadlines fire while orders are in flight.
  crash_and_recover("timer:fired_before_commit", {1, 3, 10, 18, 25},
                    with(kSmall, {"--no-inline", "--delay", "0.3", "--max-delay-us", "400000", "--deadline-ms", "150"}));
}

TEST_CASE("kill -9 at random moments, then restart: invariant holds") {
  // Each episode: a fresh store, up to 4 runs killed at random moments, then a run to the end.
  // TANDEM_KILL_EPISODES sets the number of episodes (1 by default; the soak run uses more).
  const char* episodes_env = std::getenv("TANDEM_KILL_EPISODES");
  int episodes = episodes_env ? std::max(1, std::atoi(episodes_env)) : 1;
  uint64_t seed = std::random_device{}();
  CAPTURE(seed);
  tandem::Random rnd(seed);
  int kills = 0;
  for (int e = 0; e < episodes; ++e) {
    tandem::testing::TempDir dir("kill");
    auto args = with({"--orders", "5000", "--items", "300", "--stock", "40"}, {"--data", dir.sub("data")});
    for (int i = 0; i < 4; ++i) {
      auto r = run_demo(i == 0 ? with(args, {"--fresh"}) : args, "", dir.sub("log"),
                        100 + static_cast<int>(rnd.uniform(800)));
      if (r.exit_code == 128 + SIGKILL) ++kills;
    }
    CAPTURE(e);
    check_ok(run_demo(args, "", dir.sub("log")));
  }
  MESSAGE("SUMMARY kill9 episodes=" << episodes << " kills=" << kills);
  CHECK(kills >= episodes);
}
