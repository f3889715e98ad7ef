// Logging: the one place spdlog is reached from. One line per significant event, carrying
// node id, partition and entity ref where they apply.
#pragma once

#include <spdlog/spdlog.h>

namespace tandem::log {

// Sets the global level from a name ("trace".."off"); unknown names keep the current level.
void set_level(std::string_view name);

using spdlog::debug;
using spdlog::error;
using spdlog::info;
using spdlog::warn;

}  // namespace tandem::log
