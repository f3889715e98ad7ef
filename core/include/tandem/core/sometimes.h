// "Sometimes" properties: hard cases the runtime marks where they happen, so the simulator can
// prove its fault generator reached them (a case never reached is a gap in the testing, not
// in the code). Counting is a relaxed atomic increment; production ignores the counts.
#pragma once

#include <cstdint>
#include <string_view>

namespace tandem {

enum class Sometimes : uint8_t {
  kDuplicateAfterMove,        // a duplicate delivery recognised for an entity whose partition arrived by a move
  kExpiryRacesConfirm,        // a confirm or cancel reached a provider whose operation had already expired
  kReplyAfterRequesterMoved,  // an operation's answer reached a requester whose partition had moved in meanwhile
  kForwardChain,              // one message re-routed twice or more (moved, then moved again)
  kCount
};

std::string_view sometimes_name(Sometimes s);
void sometimes(Sometimes s);
uint64_t sometimes_count(Sometimes s);

}  // namespace tandem
