#include <tandem/core/sometimes.h>

#include <atomic>

namespace tandem {

namespace {
std::atomic<uint64_t> g_counts[static_cast<int>(Sometimes::kCount)];
}

std::string_view sometimes_name(Sometimes s) {
  switch (s) {
    case Sometimes::kDuplicateAfterMove: return "duplicate_after_move";
    case Sometimes::kExpiryRacesConfirm: return "expiry_races_confirm";
    case Sometimes::kReplyAfterRequesterMoved: return "reply_after_requester_moved";
    case Sometimes::kForwardChain: return "forward_chain_2";
    case Sometimes::kCount: break;
  }
  return "?";
}

void sometimes(Sometimes s) { g_counts[static_cast<int>(s)].fetch_add(1, std::memory_order_relaxed); }
uint64_t sometimes_count(Sometimes s) { return g_counts[static_cast<int>(s)].load(std::memory_order_relaxed); }

}  // namespace tandem
