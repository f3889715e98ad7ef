#include <tandem/core/log.h>

namespace tandem::log {

void set_level(std::string_view name) {
  auto lvl = spdlog::level::from_str(std::string(name));
  if (lvl != spdlog::level::off || name == "off") spdlog::set_level(lvl);
}

}  // namespace tandem::log
