@0xcaf9c7c35c289494;
# Messages and state of the benchmark entity.
struct Ping { hops @0 :UInt64; }
struct Init { value @0 :UInt64; }
struct BenchState { count @0 :UInt64; }
struct Echo { target @0 :Text; }      # client -> pinger: echo back, or ask `target` first
struct PingerState { tokens @0 :List(Data); }   # clients waiting for an Answer
struct Ask {}       # pinger -> pinger (request)
struct Answer {}    # its reply
