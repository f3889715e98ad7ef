#include <tandem/core/crash_point.h>

#include <atomic>
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
  CrashSpec() {
    const char* v = std::getenv("TANDEM_CRASH_AT");
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
CrashSpec& spec() {
  static CrashSpec s;
  return s;
}
}  // namespace

void crash_point(std::string_view name) {
  auto& s = spec();
  if (s.name.empty() || s.name != name) return;
  if (s.hits.fetch_add(1) + 1 != s.nth) return;
  static const char kMsg[] = "tandem: crash point reached, exiting\n";
  ssize_t ignored = ::write(2, kMsg, sizeof(kMsg) - 1);
  (void)ignored;
  ::_exit(137);
}
#endif

}  // namespace tandem
