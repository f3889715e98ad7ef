@0xf536da84a869b661;
# Messages and state of the entities the runtime tests use.

struct Add {
  n @0 :Int64;
  forwardTo @1 :Text;    # also add n to this counter (an entity-to-entity message)
  forwardType @2 :Text;  # type of the forward target; "counter" when empty
}
struct Total { value @0 :Int64; }
struct CounterState { value @0 :Int64; }
struct Boom { n @0 :Int64; }
struct Schedule { delayMs @0 :Int64; n @1 :Int64; }
struct Tick { n @0 :Int64; }
struct Unhandled { x @0 :Int64; }

struct Hold { qty @0 :UInt32; }
struct StockState { stock @0 :Int64; held @1 :Int64; confirmed @2 :Int64; }
struct Buy {
  providers @0 :List(Text);
  providerType @1 :Text;   # "stock" when empty
  qty @2 :UInt32;
  deadlineMs @3 :Int64;
}
struct BuyState { outcome @0 :UInt8; reason @1 :Text; done @2 :Bool; token @3 :Data; }
