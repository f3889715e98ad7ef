// Payload: a received Cap'n Proto message, readable as the user's own struct type.
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include <capnp/generated-header-support.h>
#include <capnp/message.h>

namespace tandem::entity {

// Owns an aligned copy of the bytes. Throws kj::Exception (caught by the runtime, which then
// parks the message as malformed) when the bytes are not a valid message.
class Payload {
 public:
  explicit Payload(std::string_view bytes);
  ~Payload();
  Payload(Payload&&) noexcept;
  template <class M>
  typename M::Reader get() {
    return reader().getRoot<M>();
  }
  capnp::MessageReader& reader();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Serializes a message built by `fill(M::Builder)` into flat bytes.
std::string to_bytes(capnp::MessageBuilder& mb);

template <class M, class Fill>
std::string build(Fill&& fill) {
  capnp::MallocMessageBuilder mb(64);
  fill(mb.initRoot<M>());
  return to_bytes(mb);
}

}  // namespace tandem::entity
