#include <tandem/messaging/envelope.h>

#include <doctest/doctest.h>

#include <tandem/core/env.h>

using namespace tandem;
using namespace tandem::messaging;

TEST_CASE("an envelope survives encoding with every field") {
  Envelope e;
  e.from = {"order", std::string("o\0 1", 4)};
  e.to = {"item", "sku-9"};
  e.seq = 42;
  e.kind = Kind::kTry;
  e.correlation = 7;
  e.payload_type = 0xABCDEF;
  e.payload = std::string(100, 'p');
  e.trace_id = 99;
  e.sent_at_ms = 123456;
  e.idempotency_key = "idem";
  e.status = 3;
  e.deadline_ms = 777;
  auto d = decode_envelope(encode(e));
  REQUIRE(d.is_ok());
  CHECK(d->from == e.from);
  CHECK(d->to == e.to);
  CHECK(d->seq == 42);
  CHECK(d->kind == Kind::kTry);
  CHECK(d->correlation == 7);
  CHECK(d->payload_type == 0xABCDEF);
  CHECK(d->payload == e.payload);
  CHECK(d->idempotency_key == "idem");
  CHECK(d->status == 3);
  CHECK(d->deadline_ms == 777);
}

TEST_CASE("garbage, truncated and misaligned bytes decode to kCorruption, never a crash") {
  Random r(3);
  Envelope e;
  e.from = {"a", "b"};
  e.to = {"c", "d"};
  auto good = encode(e);
  CHECK(decode_envelope("").status().code() == Code::kCorruption);
  CHECK(decode_envelope("abc").status().code() == Code::kCorruption);
  CHECK(decode_envelope(good.substr(0, good.size() - 8)).status().code() == Code::kCorruption);
  for (int i = 0; i < 2000; ++i) {
    std::string junk = good;
    for (int k = 0; k < 4; ++k) junk[r.uniform(junk.size())] = static_cast<char>(r.next());
    auto d = decode_envelope(junk);  // may decode to some envelope, may not: must not crash
    (void)d;
  }
}

TEST_CASE("dedup keeps a watermark and a sparse set above it") {
  Dedup d;
  CHECK_FALSE(d.applied(1));
  CHECK(d.mark(2));
  CHECK(d.applied(2));
  CHECK(d.watermark() == 0);
  CHECK(d.mark(1));
  CHECK(d.watermark() == 2);  // 1 closes the gap, 2 folds in
  CHECK(d.above_count() == 0);
  CHECK(d.mark(5));
  CHECK(d.applied(5));
  CHECK_FALSE(d.applied(4));
  auto back = Dedup::decode(d.encode());
  REQUIRE(back.is_ok());
  CHECK(back->watermark() == 2);
  CHECK(back->applied(5));
  CHECK_FALSE(back->applied(3));
}

TEST_CASE("the dedup window is bounded: a full sparse set refuses instead of forgetting") {
  Dedup d;
  for (uint64_t s = 0; s < Dedup::kMaxAbove; ++s) REQUIRE(d.mark(10 + s));
  CHECK_FALSE(d.mark(100000));
  CHECK(d.mark(1));  // the watermark still advances
  CHECK(d.watermark() == 1);
}

TEST_CASE("outgoing sequence numbers start at 1 and persist") {
  Dedup d;
  CHECK(d.next_out_seq() == 1);
  CHECK(d.next_out_seq() == 2);
  auto back = Dedup::decode(d.encode());
  CHECK(back->next_out_seq() == 3);
}
