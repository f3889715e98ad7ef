// tandemctl's command line: parsed and checked before any connection is made.
#include <doctest/doctest.h>

#include <cstdlib>
#include <sstream>

#include <tandem/core/bytes.h>

#include "admin_command.h"

using namespace tandem;

namespace {
Result<admin::Command> parse(const std::string& line) {
  std::vector<std::string> parts{"tandemctl"};
  std::istringstream in(line);
  for (std::string w; in >> w;) parts.push_back(w);
  std::vector<char*> argv;
  for (auto& p : parts) argv.push_back(p.data());
  argv.push_back(nullptr);
  return admin::parse_command(static_cast<int>(parts.size()), argv.data());
}
}  // namespace

TEST_CASE("commands parse into the request the controller gets") {
  ::unsetenv("TANDEM_CLUSTER_DIR");
  auto m = parse("--json --config /tmp/x.conf move 12 3");
  REQUIRE(m);
  CHECK(m->name == "move");
  CHECK(m->json);
  CHECK(m->config == "/tmp/x.conf");
  CHECK(m->method == "move");
  CHECK(m->target_node == 3);
  ByteReader r(m->body);
  CHECK(r.varint() == 12u);
  CHECK(r.bytes() == std::string("3"));
  CHECK(r.done());

  auto s = parse("split 7");
  REQUIRE(s);
  CHECK(s->args.size() == 1);
  CHECK(parse("split 7 sku-500"));
  auto d = parse("drain-node 2");
  REQUIRE(d);
  CHECK(d->method == "drain");
  auto rb = parse("rebalance --dry-run");
  REQUIRE(rb);
  ByteReader rr(rb->body);
  CHECK(rr.varint() == 1u);
  auto st = parse("--node 2 status");
  REQUIRE(st);
  CHECK(st->node == 2);
  CHECK(st->method.empty());
  CHECK(parse("--help")->help);
  CHECK(parse("add-node 4 127.0.0.1:7104 127.0.0.1:7204")->target_node == 4);
  CHECK(parse("status")->config == ".tandem/cluster/cluster.conf");
}

TEST_CASE("mistakes are refused with a message naming them") {
  struct Case {
    const char* line;
    const char* says;
  };
  for (auto [line, says] : std::initializer_list<Case>{
           {"", "missing command"},
           {"stauts", "unknown command 'stauts'"},
           {"inspect item", "'inspect' takes 2 argument(s), got 1"},
           {"split", "'split' takes 1 or 2 argument(s), got 0"},
           {"status extra", "'status' takes 0 argument(s), got 1"},
           {"--bogus status", "unknown flag --bogus"},
           {"--node x status", "--node expects a node id"},
           {"--node 0 status", "--node expects a node id"},
           {"--config", "flag --config needs a value"},
           {"move x 2", "PARTITION must be a partition id"},
           {"move 0 2", "PARTITION must be a partition id"},
           {"move 4294967296 2", "PARTITION must be a partition id"},
           {"move 1 two", "NODE must be a node id, not 'two'"},
           {"merge 1 -3", "PARTITION must be a partition id, not '-3'"},
           {"drain-node x", "NODE must be a node id"},
           {"add-node 4 nowhere 127.0.0.1:1", "nowhere"},
           {"inspect ghost", "'inspect' takes 2 argument(s)"},
           {"--dry-run move 1 2", "--dry-run applies to rebalance only"},
       }) {
    CAPTURE(line);
    auto r = parse(line);
    REQUIRE_FALSE(r);
    CHECK(r.status().code() == Code::kInvalidArgument);
    CHECK(r.status().message().find(says) != std::string::npos);
  }
}

TEST_CASE("help in each spelling, the config beside TANDEM_CLUSTER_DIR, and an empty split point") {
  for (const char* line : {"-h", "--help", "help", "help move", "--json -h", "--node 2 -h"}) {
    CAPTURE(line);
    auto h = parse(line);
    REQUIRE(h);
    CHECK(h->help);
  }
  // As an argument's value, -h is that value.
  CHECK_FALSE(parse("inspect order -h")->help);
  CHECK(parse("inspect order -h")->args[1] == "-h");
  CHECK_FALSE(parse("--config -h status")->help);
  ::setenv("TANDEM_CLUSTER_DIR", "/tmp/elsewhere", 1);
  CHECK(parse("status")->config == "/tmp/elsewhere/cluster.conf");
  CHECK(parse("--config /tmp/x.conf status")->config == "/tmp/x.conf");  // the flag wins
  ::unsetenv("TANDEM_CLUSTER_DIR");
  CHECK(parse("status")->config == ".tandem/cluster/cluster.conf");
  std::vector<std::string> parts{"tandemctl", "split", "7", ""};
  std::vector<char*> argv;
  for (auto& p : parts) argv.push_back(p.data());
  argv.push_back(nullptr);
  auto r = admin::parse_command(static_cast<int>(parts.size()), argv.data());
  REQUIRE_FALSE(r);
  CHECK(r.status().message().find("the split point is empty") != std::string::npos);
}
