// Named crash points: with TANDEM_CRASH_AT=<name>[:<n>] in the environment, the process exits
// abruptly (_exit, no flush, like kill -9) the n-th time (default 1st) it reaches <name>.
// With TANDEM_STOP_AT=<name>[:<n>] it pauses there instead (SIGSTOP to itself) and goes on
// at SIGCONT, as a process stalled at that moment would.
// Compiled to nothing without TANDEM_TEST_HOOKS.
#pragma once

#include <string_view>

namespace tandem {

#ifdef TANDEM_TEST_HOOKS
void crash_point(std::string_view name);
#define TANDEM_CRASH_POINT(name) ::tandem::crash_point(name)
#else
#define TANDEM_CRASH_POINT(name) ((void)0)
#endif

}  // namespace tandem
