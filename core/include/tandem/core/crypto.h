// HMAC-SHA256 and secure random bytes (OpenSSL), for the cluster handshake.
#pragma once

#include <string>
#include <string_view>

namespace tandem::crypto {

std::string hmac_sha256(std::string_view key, std::string_view data);
// Constant-time comparison.
bool equal(std::string_view a, std::string_view b);
std::string random_bytes(size_t n);
std::string to_hex(std::string_view bytes);

}  // namespace tandem::crypto
