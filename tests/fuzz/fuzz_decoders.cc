// libFuzzer target: the decoders of bytes that cross a process or disk boundary: envelopes,
// dedup records, the partition map, key codec readers and placement keys. Each must reject
// bad input with an error, never crash; what decodes must re-encode to something that decodes
// to the same value.
#include <cstdint>
#include <string>
#include <string_view>

#include <tandem/core/key_codec.h>
#include <tandem/messaging/envelope.h>
#include <tandem/partition/partition_map.h>
#include <tandem/partition/placement.h>

using namespace tandem;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  std::string_view in(reinterpret_cast<const char*>(data) + 1, size - 1);
  switch (data[0] % 4) {
    case 0: {
      auto e = messaging::decode_envelope(in);
      if (e) {
        auto again = messaging::decode_envelope(messaging::encode(*e));
        if (!again || again->seq != e->seq || again->to.key != e->to.key || again->payload != e->payload) __builtin_trap();
      }
      break;
    }
    case 1: {
      auto d = messaging::Dedup::decode(in);
      if (d) {
        auto again = messaging::Dedup::decode(d->encode());
        if (!again || again->watermark() != d->watermark()) __builtin_trap();
      }
      break;
    }
    case 2: {
      auto m = partition::PartitionMap::decode(in);
      if (m) {
        auto again = partition::PartitionMap::decode(m->encode());
        if (!again || again->epoch != m->epoch || again->partitions.size() != m->partitions.size()) __builtin_trap();
        for (auto& p : m->partitions) (void)m->key_range(p);
      }
      break;
    }
    default: {
      keys::Reader r(in);
      for (int i = 0; i < 16; ++i) {
        if (!r.bytes() && !r.u64() && !r.u16() && !r.u8()) break;
      }
      partition::Placement placement;
      EntityRef ref;
      std::string_view rest;
      (void)placement.decode_entity(in, ref, rest);
      break;
    }
  }
  return 0;
}
