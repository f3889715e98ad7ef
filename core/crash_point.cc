#include <tandem/core/crash_point.h>

#include <atomic>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <string>
#include <unistd.h>

namespace tandem {

#ifdef TANDEM_TEST_HOOKS
namespace {
struct CrashSpec {
  std::string name;
  long nth = 1;
  std::atomic<long> hits{0};
  explicit CrashSpec(const char* var) {
    const char* v = std::getenv(var);
    if (!v || !*v) return;
    // Point names contain ':' themselves; a trailing ":<digits>" is the hit count.
    std::string s(v);
    auto colon = s.rfind(':');
    bool counted = colon != std::string::npos && colon + 1 < s.size() &&
                   s.find_first_not_of("0123456789", colon + 1) == std::string::npos;
    name = counted ? s.substr(0, colon) : s;
    if (counted) nth = std::max(1L, std::atol(s.c_str() + colon + 1));
  }
};
CrashSpec& crash_spec() {
  static CrashSpec s("TANDEM_CRASH_AT");
  return s;
}
CrashSpec& stop_spec() {
  static CrashSpec s("TANDEM_STOP_AT");
  return s;
}
bool reached(CrashSpec& s, std::string_view name) {
  return !s.name.empty() && s.name == name && s.hits.fetch_add(1) + 1 == s.nth;
}
}  // namespace

void crash_point(std::string_view name) {
  if (reached(stop_spec(), name)) {
    static const char kStop[] = "tandem: stop point reached, pausing (SIGSTOP)\n";
    ssize_t ignored = ::write(2, kStop, sizeof(kStop) - 1);
    (void)ignored;
    ::raise(SIGSTOP);  // continues at SIGCONT
  }
  if (!reached(crash_spec(), name)) return;
  static const char kMsg[] = "tandem: crash point reached, exiting\n";
  ssize_t ignored = ::write(2, kMsg, sizeof(kMsg) - 1);
  (void)ignored;
  ::_exit(137);
}
#endif

}  // namespace tandem
