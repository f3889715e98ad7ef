// Every decoder of bytes that come from disk or the network, fed with seeded mutations of valid
// inputs (and pure noise): each either decodes or reports an error; none crashes or hangs
// (ASan/UBSan in the default test build watch the memory accesses).
#include <doctest/doctest.h>

#include <tandem/core/bytes.h>
#include <tandem/core/env.h>
#include <tandem/core/key_codec.h>
#include <tandem/messaging/envelope.h>
#include <tandem/messaging/session.h>
#include <tandem/partition/partition_map.h>

#include "records.h"
#include "rpc.h"

using namespace tandem;

namespace {

std::string mutate(Random& r, std::string s) {
  int edits = 1 + static_cast<int>(r.uniform(4));
  for (int i = 0; i < edits; ++i) {
    switch (r.uniform(4)) {
      case 0:
        if (!s.empty()) s[r.uniform(s.size())] = static_cast<char>(r.next());
        break;
      case 1:
        if (!s.empty()) s.resize(r.uniform(s.size()));
        break;
      case 2:
        s.insert(r.uniform(s.size() + 1), 1, static_cast<char>(r.next()));
        break;
      default:
        if (!s.empty()) s[r.uniform(s.size())] ^= static_cast<char>(1 << r.uniform(8));
    }
  }
  return s;
}

template <class F>
void hammer(const std::vector<std::string>& seeds, F&& decode, int rounds = 20000) {
  Random r(1234);
  for (int i = 0; i < rounds; ++i) {
    std::string in = r.uniform(10) == 0 ? std::string(r.uniform(64), static_cast<char>(r.next()))
                                        : mutate(r, seeds[r.uniform(seeds.size())]);
    decode(in);
  }
}

}  // namespace

TEST_CASE("envelope and dedup decoders survive corrupted bytes") {
  messaging::Envelope e;
  e.from = {"order", "o-1"};
  e.to = {"item", "sku-1"};
  e.seq = 7;
  e.payload = std::string(40, 'p');
  e.idempotency_key = "k";
  messaging::Dedup d;
  for (uint64_t s : {1, 2, 5, 9}) d.mark(s);
  hammer({messaging::encode(e)}, [](const std::string& b) { (void)messaging::decode_envelope(b); });
  hammer({d.encode()}, [](const std::string& b) { (void)messaging::Dedup::decode(b); });
}

TEST_CASE("runtime record decoders survive corrupted bytes") {
  entity::ProviderOp op;
  op.payload = "xyz";
  entity::EscrowGroup g;
  g.ops.push_back({{"item", "a"}, 3, entity::OpStatus::kAccepted});
  entity::ReplyRow rr;
  rr.payload = "reply";
  std::vector<std::string> seeds{op.encode(), g.encode(), rr.encode(), entity::TimerRow{5, "env"}.encode(),
                                 entity::ParkedRow{"env", "why"}.encode(), entity::RequesterOp{4}.encode()};
  hammer(seeds, [](const std::string& b) {
    (void)entity::ProviderOp::decode(b);
    (void)entity::EscrowGroup::decode(b);
    (void)entity::ReplyRow::decode(b);
    (void)entity::TimerRow::decode(b);
    (void)entity::ParkedRow::decode(b);
    (void)entity::RequesterOp::decode(b);
  });
  entity::rpc::Call call{{"order", "o"}, 1, "payload", "client", "idem"};
  hammer({call.encode(), entity::rpc::encode_list({"a", "bb"}), entity::rpc::Reply{1, "x"}.encode()},
         [](const std::string& b) {
           (void)entity::rpc::Call::decode(b);
           (void)entity::rpc::Reply::decode(b);
           (void)entity::rpc::decode_list(b);
         });
}

TEST_CASE("key, partition map and cluster config parsers survive corrupted input") {
  std::string k;
  keys::append_bytes(k, std::string("a\0b", 3));
  keys::append_u16(k, 3);
  keys::append_u64(k, 9);
  hammer({k}, [](const std::string& b) {
    keys::Reader r(b);
    (void)r.bytes();
    (void)r.u16();
    (void)r.u64();
  });
  auto map = partition::PartitionMap::initial({{1, {"127.0.0.1", 1}, {"127.0.0.1", 2}, "d"}},
                                              {{"order", {partition::TypeScheme::Kind::kHash, 16}, 2, {}},
                                               {"item", {partition::TypeScheme::Kind::kRange, 0}, 0, {"m"}}});
  hammer({map.encode()}, [](const std::string& b) {
    auto m = partition::PartitionMap::decode(b);
    if (m) (void)m->find({"order", "x"});
  });
  std::string conf =
      "secret-file s\nnode 1 127.0.0.1:7001 admin 127.0.0.1:7101 data d1\ntype order hash slots=64 partitions=4\n"
      "type item range splits=b,m\n";
  hammer({conf}, [](const std::string& b) { (void)partition::ClusterConfig::parse(b, "/tmp"); }, 5000);
}

TEST_CASE("the frame reader survives any byte stream and never accepts a frame over its limit") {
  std::string stream = messaging::Session::frame("hello") + messaging::Session::frame(std::string(100, 'z'));
  hammer({stream}, [](const std::string& b) {
    messaging::Session::FrameReader r(64);
    if (!r.feed(b)) return;
    while (auto f = r.next()) CHECK(f->size() <= 64);
  });
}
