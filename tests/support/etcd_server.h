// A real etcd server (Debian's etcd-server) on a loopback port, in a scratch folder, for the
// tests that exercise the etcd metadata store. Stopped (by its pid) when the object goes away.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <random>
#include <string>
#include <vector>

#include <tandem/core/etcd.h>

#include "test_util.h"

extern char** environ;

namespace tandem::testing {

class EtcdServer {
 public:
  EtcdServer() {
    std::random_device rd;
    for (int attempt = 0; attempt < 5 && pid_ <= 0; ++attempt) {
      port_ = 32000 - static_cast<int>(rd() % 150) * 2;  // below the ephemeral range; tests use 10000-31800 for nodes
      if (!spawn()) continue;
      EtcdClient c(*EtcdAddress::parse(url()), 500);
      bool up = wait_until([&] { return c.get("/probe").is_ok() || !alive(); }, std::chrono::seconds(20)) && alive();
      if (!up) stop();
    }
  }
  ~EtcdServer() { stop(); }
  bool ok() const { return pid_ > 0; }
  int port() const { return port_; }
  pid_t pid() const { return pid_; }
  std::string url(const std::string& prefix = "/tandem") const {
    return "etcd://127.0.0.1:" + std::to_string(port_) + prefix;
  }
  void stop() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGKILL);
    int st;
    ::waitpid(pid_, &st, 0);
    pid_ = -1;
  }

 private:
  bool alive() const {
    int st;
    return pid_ > 0 && ::waitpid(pid_, &st, WNOHANG) == 0;
  }
  bool spawn() {
    std::string client = "http://127.0.0.1:" + std::to_string(port_);
    std::string peer = "http://127.0.0.1:" + std::to_string(port_ + 1);
    std::string log = dir_.sub("etcd-" + std::to_string(port_) + ".log");
    std::vector<std::string> args = {"etcd", "--name", "t", "--data-dir", dir_.sub("data-" + std::to_string(port_)),
                                     "--listen-client-urls", client, "--advertise-client-urls", client,
                                     "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                                     "--initial-cluster", "t=" + peer, "--logger", "zap", "--log-outputs", log};
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
    pid_t pid;
    int rc = posix_spawnp(&pid, "etcd", &fa, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0) return false;
    pid_ = pid;
    return true;
  }
  TempDir dir_{"etcd"};
  int port_ = 0;
  pid_t pid_ = -1;
};

}  // namespace tandem::testing
