// The command line of tandemctl, parsed and checked before any connection is made: a mistyped
// command, a wrong count of arguments or a malformed id is refused here with a clear message.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <tandem/core/status.h>

namespace tandem::admin {

extern const char* const kUsage;

struct Command {
  std::string name;               // status, partitions, inspect, ..., add-node
  std::vector<std::string> args;  // its arguments, as typed
  std::string config = ".tandem/cluster/cluster.conf";
  bool json = false;
  bool help = false;  // --help: print the usage, nothing else is checked
  uint32_t node = 0;  // --node: limits status and parked to one node (0: every node)
  // For the commands the controller runs (move, split, merge, rebalance, drain-node, add-node):
  // the request method, its body, and the node the command names (move's target; 0 if none).
  std::string method;
  std::string body;
  uint32_t target_node = 0;
};

// argv[0] is the program name. Never throws; every refusal is kInvalidArgument.
Result<Command> parse_command(int argc, char** argv);

}  // namespace tandem::admin
