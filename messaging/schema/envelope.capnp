@0xc4b1e7a3d2f90a11;
# Durable and wire formats of the messaging layer. Fields are only ever added (never renumbered),
# so outbox rows and activity records written by an older build stay readable.

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("tandem::messaging::schema");

struct Ref {
  type @0 :Text;
  key @1 :Data;
}

enum Kind {
  request @0;       # entity -> entity
  reply @1;         # answer to a request (correlation = request seq)
  try @2;           # tentative operation request (correlation = op id)
  confirm @3;
  cancel @4;
  opResult @5;      # provider -> requester: status of an operation
  timer @6;         # durable timer firing, to self
  clientRequest @7; # external client -> entity (idempotencyKey set)
  clientReply @8;   # entity -> external client
  internal @9;      # runtime-internal timer (operation expiry, escrow deadline)
}

struct Envelope {
  from @0 :Ref;
  to @1 :Ref;
  seq @2 :UInt64;
  kind @3 :Kind;
  correlation @4 :UInt64;
  payloadType @5 :UInt64;
  payload @6 :Data;
  traceId @7 :UInt64;
  sentAtMs @8 :Int64;
  idempotencyKey @9 :Data;
  status @10 :UInt32;      # opResult: operation status; clientReply: error code (0 = ok)
  deadlineMs @11 :Int64;   # try: requester's deadline
}

# What an entity remembers about one partner's message stream (DESIGN section 5).
struct Dedup {
  watermark @0 :UInt64;        # every seq <= watermark has been applied
  above @1 :List(UInt64);      # applied seqs > watermark (bounded)
  nextOutSeq @2 :UInt64;       # the last seq this entity assigned to a message for the partner
}

# ---- wire protocol: length-prefixed frames (u32 big-endian length, then one message) ----

struct Frame {
  union {
    challenge @0 :Data;     # server -> client, first frame: the server's nonce
    auth @1 :Auth;          # client -> server
    welcome @2 :Data;       # server -> client: proof that the server knows the secret too
    deliver @3 :Deliver;    # an envelope for an entity the receiver hosts
    ack @4 :Ack;            # answer to a deliver
    request @5 :Rpc;        # map fetches, client calls, admin commands
    response @6 :Rpc;
    refused @7 :Text;       # server -> client: why the handshake failed, just before the server closes
  }
  node @8 :UInt32;          # on a challenge: the server's node id (0: not a cluster node); the welcome's proof covers it
  protocol @9 :UInt16;      # on a challenge: the server's wire protocol (tandem::messaging::kWireProtocol; 0 before it existed)
}

struct Auth {
  role @0 :Text;        # "node", "client" or "admin"
  nodeId @1 :UInt32;    # for role "node"
  nonce @2 :Data;
  mac @3 :Data;         # HMAC-SHA256(secret, "tandem/<protocol> client" | server nonce | nonce | role | nodeId)
  protocol @4 :UInt16;  # the client's wire protocol
}

struct Deliver {
  id @0 :UInt64;
  envelope @1 :Data;    # an encoded Envelope
}

struct Ack {
  id @0 :UInt64;
  code @1 :UInt8;       # tandem::Code
  message @2 :Text;
}

struct Rpc {
  id @0 :UInt64;
  method @1 :Text;
  body @2 :Data;
  code @3 :UInt8;       # responses: tandem::Code
  message @4 :Text;
}
