// Command-line flags for Tandem's programs: `--name value` or `--name=value`, booleans as
// `--name`. Unknown flags and malformed values are errors with a clear message.
#pragma once

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

#include <tandem/core/status.h>

namespace tandem {

class Flags {
 public:
  // `known` lists the value flags, `switches` the boolean ones. Positional arguments are kept.
  static Result<Flags> parse(int argc, char** argv, int first, const std::set<std::string>& known,
                             const std::set<std::string>& switches);
  bool has(const std::string& name) const { return values_.count(name) > 0; }
  std::string str(const std::string& name, const std::string& def) const;
  Result<uint64_t> u64(const std::string& name, uint64_t def) const;
  Result<int64_t> i64(const std::string& name, int64_t def) const;
  Result<double> f64(const std::string& name, double def) const;
  const std::vector<std::string>& positional() const { return positional_; }

 private:
  std::map<std::string, std::string> values_;
  std::vector<std::string> positional_;
};

}  // namespace tandem
