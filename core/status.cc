#include <tandem/core/status.h>

namespace tandem {

std::string_view code_name(Code c) {
  switch (c) {
    case Code::kOk: return "ok";
    case Code::kNotFound: return "not-found";
    case Code::kInvalidArgument: return "invalid-argument";
    case Code::kConflict: return "conflict";
    case Code::kOverloaded: return "overloaded";
    case Code::kUnavailable: return "unavailable";
    case Code::kUnknownOutcome: return "unknown-outcome";
    case Code::kCorruption: return "corruption";
    case Code::kInternal: return "internal";
  }
  return "?";
}

std::string Status::to_string() const {
  if (is_ok()) return "ok";
  std::string s(code_name(code_));
  s += ": ";
  s += message_;
  return s;
}

}  // namespace tandem
