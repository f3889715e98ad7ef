@0xe1a6c3b5d7f80921;
# Messages and state of the order/inventory reservation demo.

struct Line {
  item @0 :Text;
  qty @1 :UInt32;
}

# client -> Order
struct PlaceOrder {
  lines @0 :List(Line);
  deadlineMs @1 :Int64;   # how long the order may take to decide
}

enum OrderStatus {
  none @0;
  pending @1;
  confirmed @2;
  cancelled @3;
  broken @4;
}

# Order -> client
struct OrderResult {
  status @0 :OrderStatus;
  reason @1 :Text;
}

# client -> Item
struct SetupItem {
  stock @0 :UInt64;
}
struct SetupDone {
  stock @0 :UInt64;
}

# Order -> Item, as a tentative operation
struct Reserve {
  qty @0 :UInt32;
}

struct ItemState {
  initial @0 :UInt64;
  stock @1 :UInt64;
  reserved @2 :UInt64;
  sold @3 :UInt64;
}

struct OrderState {
  status @0 :OrderStatus;
  lines @1 :List(Line);
  group @2 :UInt64;
  replyToken @3 :Data;
  reason @4 :Text;
}
