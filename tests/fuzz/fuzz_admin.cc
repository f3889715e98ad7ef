// libFuzzer target: tandemctl's command line. The input is split at NUL bytes into arguments.
// Any argument list must give a command or a clear refusal, never a crash or a hang; a parsed
// command names a known command with an argument count it takes, and the request body sent to
// the controller decodes back to the ids that were typed.
#include <cstdint>
#include <cstring>
#include <set>
#include <string>
#include <vector>

#include <tandem/core/bytes.h>

#include "admin_command.h"

using namespace tandem;

namespace {
// The decimal text `s` (leading zeros allowed) names `v`.
bool names(const std::string& s, uint64_t v) {
  size_t z = s.find_first_not_of('0');
  return z != std::string::npos && s.substr(z) == std::to_string(v);
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::vector<std::string> parts{"tandemctl"};
  std::string cur;
  for (size_t i = 0; i < size; ++i) {
    if (data[i] == 0) {
      parts.push_back(cur);
      cur.clear();
    } else {
      cur += static_cast<char>(data[i]);
    }
  }
  if (size > 0) parts.push_back(cur);
  if (parts.size() > 64) return 0;
  std::vector<char*> argv;
  for (auto& p : parts) argv.push_back(p.data());
  argv.push_back(nullptr);

  auto c = admin::parse_command(static_cast<int>(parts.size()), argv.data());
  if (!c) {
    if (c.status().code() != Code::kInvalidArgument || c.status().message().empty()) __builtin_trap();
    return 0;
  }
  if (c->help) return 0;
  static const std::set<std::string> kNames{"status", "stages", "partitions", "controller", "inspect",   "parked",     "redrive",
                                            "move",   "split",      "merge",      "rebalance", "drain-node", "add-node"};
  if (!kNames.count(c->name) || c->config.empty()) __builtin_trap();
  if (c->method.empty()) return 0;
  // The body the controller decodes: a varint and a byte string.
  ByteReader r(c->body);
  auto id = r.varint();
  auto arg = r.bytes();
  if (!id || !arg || !r.done()) __builtin_trap();
  if (c->name == "move" || c->name == "split" || c->name == "merge") {
    if (*id == 0 || *id > UINT32_MAX || !names(c->args[0], *id)) __builtin_trap();
    if (*arg != (c->args.size() > 1 ? c->args[1] : "")) __builtin_trap();
  }
  if (c->name == "move" && !names(c->args[1], c->target_node)) __builtin_trap();
  if (c->name == "drain-node" && (*id != c->target_node || *id == 0)) __builtin_trap();
  return 0;
}
