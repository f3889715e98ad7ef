@0xcaf9c7c35c289494;
# Messages and state of the benchmark entity.
struct Ping { hops @0 :UInt64; }
struct Init { value @0 :UInt64; }
struct BenchState { count @0 :UInt64; }
