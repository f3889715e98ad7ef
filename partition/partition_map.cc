#include <tandem/partition/partition_map.h>
#include <tandem/core/etcd.h>

#include <algorithm>
#include <climits>
#include <map>
#include <charconv>
#include <fstream>
#include <filesystem>
#include <sstream>

#include <tandem/core/bytes.h>
#include <tandem/core/key_codec.h>

namespace tandem::partition {

namespace {
constexpr uint8_t kMapV1 = 1;  // + moves and splits counters at the end

void put_endpoint(ByteWriter& w, const net::Endpoint& e) { w.bytes(e.host).varint(e.port); }
bool get_endpoint(ByteReader& r, net::Endpoint& e) {
  auto h = r.bytes();
  auto p = r.varint();
  if (!h || !p || *p > 65535) return false;
  e.host = *h;
  e.port = static_cast<uint16_t>(*p);
  return true;
}
}  // namespace

PartitionMap PartitionMap::initial(std::vector<NodeInfo> nodes, std::vector<TypeSpec> types) {
  PartitionMap m;
  m.epoch = 1;
  m.nodes = std::move(nodes);
  m.types = std::move(types);
  uint32_t next_id = 1;
  size_t rr = 0;
  for (auto& t : m.types) {
    if (t.scheme.kind == TypeScheme::Kind::kHash) {
      uint32_t n = std::clamp<uint32_t>(t.partitions ? t.partitions : static_cast<uint32_t>(m.nodes.size()), 1,
                                        t.scheme.slots);
      for (uint32_t i = 0; i < n; ++i) {
        PartitionInfo p;
        p.id = next_id++;
        p.type = t.name;
        p.slot_begin = static_cast<uint16_t>(uint64_t{t.scheme.slots} * i / n);
        p.slot_end = static_cast<uint16_t>(uint64_t{t.scheme.slots} * (i + 1) / n);
        p.owner = m.nodes[rr++ % m.nodes.size()].id;
        m.partitions.push_back(p);
      }
    } else {
      std::string begin;
      for (size_t i = 0; i <= t.split_keys.size(); ++i) {
        PartitionInfo p;
        p.id = next_id++;
        p.type = t.name;
        p.key_begin = begin;
        p.key_end = i < t.split_keys.size() ? t.split_keys[i] : "";
        begin = p.key_end;
        p.owner = m.nodes[rr++ % m.nodes.size()].id;
        m.partitions.push_back(p);
      }
    }
  }
  return m;
}

const TypeSpec* PartitionMap::type(std::string_view name) const {
  for (auto& t : types)
    if (t.name == name) return &t;
  return nullptr;
}

const NodeInfo* PartitionMap::node(uint32_t id) const {
  for (auto& n : nodes)
    if (n.id == id) return &n;
  return nullptr;
}

PartitionInfo* PartitionMap::partition(uint32_t id) {
  for (auto& p : partitions)
    if (p.id == id) return &p;
  return nullptr;
}

KeyRange PartitionMap::key_range(const PartitionInfo& p) const {
  std::string tp = Placement::type_prefix(p.type);
  auto* t = type(p.type);
  if (t && t->scheme.kind == TypeScheme::Kind::kHash) {
    std::string b = tp, e = tp;
    keys::append_u16(b, p.slot_begin);
    if (p.slot_end >= t->scheme.slots) return {b, keys::prefix_successor(tp)};
    keys::append_u16(e, p.slot_end);
    return {b, e};
  }
  std::string b = tp;
  if (!p.key_begin.empty()) keys::append_bytes(b, p.key_begin);
  if (p.key_end.empty()) return {b, keys::prefix_successor(tp)};
  std::string e = tp;
  keys::append_bytes(e, p.key_end);
  return {b, e};
}

Result<PartitionMap> PartitionMap::with_move(uint32_t id, uint32_t to) const {
  PartitionMap m = *this;
  auto* p = m.partition(id);
  if (!p) return Status::invalid_argument("no partition " + std::to_string(id));
  if (!m.node(to)) return Status::invalid_argument("no node " + std::to_string(to));
  if (p->owner == to) return Status::invalid_argument("partition " + std::to_string(id) + " is already on node " + std::to_string(to));
  if (m.is_draining(to)) return Status::invalid_argument("node " + std::to_string(to) + " is draining");
  p->owner = to;
  ++m.epoch;
  ++m.moves;
  return m;
}

Result<PartitionMap> PartitionMap::with_split(uint32_t id, const std::string& at) const {
  PartitionMap m = *this;
  auto* p = m.partition(id);
  if (!p) return Status::invalid_argument("no partition " + std::to_string(id));
  auto* t = m.type(p->type);
  PartitionInfo half = *p;
  uint32_t next = 0;
  for (auto& q : m.partitions) next = std::max(next, q.id);
  half.id = next + 1;
  if (t->scheme.kind == TypeScheme::Kind::kHash) {
    uint64_t slot = (p->slot_begin + p->slot_end) / 2;
    if (!at.empty()) {
      auto [ptr, ec] = std::from_chars(at.data(), at.data() + at.size(), slot);
      if (ec != std::errc() || ptr != at.data() + at.size())
        return Status::invalid_argument("split point of a hash partition is a slot number, not '" + at + "'");
    }
    if (slot <= p->slot_begin || slot >= p->slot_end)
      return Status::invalid_argument("slot " + std::to_string(slot) + " is not inside partition " + std::to_string(id) +
                                      " (slots " + std::to_string(p->slot_begin) + ".." + std::to_string(p->slot_end) + ")");
    half.slot_begin = static_cast<uint16_t>(slot);
    p->slot_end = static_cast<uint16_t>(slot);
  } else {
    if (at.empty()) return Status::invalid_argument("splitting a range partition needs a key");
    if (at <= p->key_begin || (!p->key_end.empty() && at >= p->key_end))
      return Status::invalid_argument("key '" + at + "' is not inside partition " + std::to_string(id));
    half.key_begin = at;
    p->key_end = at;
  }
  m.partitions.push_back(half);
  ++m.epoch;
  ++m.splits;
  return m;
}

Result<PartitionMap> PartitionMap::with_node(const NodeInfo& n) const {
  if (n.id == 0) return Status::invalid_argument("node ids start at 1");
  if (node(n.id)) return Status::invalid_argument("node " + std::to_string(n.id) + " is already in the cluster");
  for (auto& o : nodes)
    if (o.addr.to_string() == n.addr.to_string() || o.admin.to_string() == n.admin.to_string())
      return Status::invalid_argument("address already used by node " + std::to_string(o.id));
  PartitionMap m = *this;
  m.nodes.push_back(n);
  ++m.epoch;
  return m;
}

bool PartitionMap::is_draining(uint32_t node) const {
  return std::find(draining.begin(), draining.end(), node) != draining.end();
}

Result<PartitionMap> PartitionMap::with_merge(uint32_t a_id, uint32_t b_id) const {
  PartitionMap m = *this;
  auto* a = m.partition(a_id);
  auto* b = m.partition(b_id);
  if (!a) return Status::invalid_argument("no partition " + std::to_string(a_id));
  if (!b) return Status::invalid_argument("no partition " + std::to_string(b_id));
  if (a_id == b_id) return Status::invalid_argument("cannot merge a partition with itself");
  if (a->type != b->type) return Status::invalid_argument("partitions " + std::to_string(a_id) + " and " + std::to_string(b_id) + " hold different types");
  if (a->owner != b->owner)
    return Status::invalid_argument("partitions " + std::to_string(a_id) + " and " + std::to_string(b_id) +
                                    " are on different nodes; move one first");
  auto* t = m.type(a->type);
  if (t->scheme.kind == TypeScheme::Kind::kHash) {
    if (a->slot_end == b->slot_begin) a->slot_end = b->slot_end;
    else if (b->slot_end == a->slot_begin) a->slot_begin = b->slot_begin;
    else return Status::invalid_argument("partitions " + std::to_string(a_id) + " and " + std::to_string(b_id) + " are not adjacent");
  } else {
    if (!a->key_end.empty() && a->key_end == b->key_begin) a->key_end = b->key_end;
    else if (!b->key_end.empty() && b->key_end == a->key_begin) a->key_begin = b->key_begin;
    else return Status::invalid_argument("partitions " + std::to_string(a_id) + " and " + std::to_string(b_id) + " are not adjacent");
  }
  m.partitions.erase(std::remove_if(m.partitions.begin(), m.partitions.end(), [&](auto& p) { return p.id == b_id; }),
                     m.partitions.end());
  ++m.epoch;
  return m;
}

std::vector<std::pair<uint32_t, uint32_t>> PartitionMap::rebalance_plan(const std::set<uint32_t>& down) const {
  std::vector<std::pair<uint32_t, uint32_t>> plan;
  std::map<uint32_t, std::vector<uint32_t>> by_node;  // node -> partitions, of the nodes that answer
  for (auto& n : nodes)
    if (!down.count(n.id)) by_node[n.id];
  for (auto& p : partitions)
    if (!down.count(p.owner)) by_node[p.owner].push_back(p.id);
  auto least = [&]() -> uint32_t {
    uint32_t best = 0;
    size_t count = SIZE_MAX;
    for (auto& [id, ps] : by_node)
      if (!is_draining(id) && ps.size() < count) best = id, count = ps.size();
    return best;
  };
  for (uint32_t d : draining) {
    for (auto pid : std::vector<uint32_t>(by_node[d])) {
      uint32_t to = least();
      if (!to) return plan;  // every node is draining
      plan.emplace_back(pid, to);
      by_node[to].push_back(pid);
    }
    by_node[d].clear();
  }
  while (true) {
    uint32_t most = 0;
    size_t count = 0;
    for (auto& [id, ps] : by_node)
      if (!is_draining(id) && ps.size() > count) most = id, count = ps.size();
    uint32_t to = least();
    if (!most || !to || by_node[most].size() <= by_node[to].size() + 1) break;
    uint32_t pid = by_node[most].back();
    by_node[most].pop_back();
    by_node[to].push_back(pid);
    plan.emplace_back(pid, to);
  }
  return plan;
}

Placement PartitionMap::placement() const {
  Placement p;
  for (auto& t : types) p.set_scheme(t.name, t.scheme);
  return p;
}

const PartitionInfo* PartitionMap::find(const EntityRef& ref) const {
  auto* t = type(ref.type);
  if (!t) return nullptr;
  uint16_t slot = 0;
  if (t->scheme.kind == TypeScheme::Kind::kHash) slot = placement().slot_of(ref.type, ref.key);
  for (auto& p : partitions) {
    if (p.type != ref.type) continue;
    if (t->scheme.kind == TypeScheme::Kind::kHash) {
      if (slot >= p.slot_begin && slot < p.slot_end) return &p;
    } else if (ref.key >= p.key_begin && (p.key_end.empty() || ref.key < p.key_end)) {
      return &p;
    }
  }
  return nullptr;
}

std::string PartitionMap::encode() const {
  ByteWriter w;
  w.u8(kMapV1).varint(epoch).varint(nodes.size());
  for (auto& n : nodes) {
    w.varint(n.id);
    put_endpoint(w, n.addr);
    put_endpoint(w, n.admin);
    w.bytes(n.data_dir);
  }
  w.varint(types.size());
  for (auto& t : types) {
    w.bytes(t.name).u8(static_cast<uint8_t>(t.scheme.kind)).varint(t.scheme.slots).varint(t.partitions);
    w.varint(t.split_keys.size());
    for (auto& k : t.split_keys) w.bytes(k);
  }
  w.varint(partitions.size());
  for (auto& p : partitions)
    w.varint(p.id).bytes(p.type).varint(p.slot_begin).varint(p.slot_end).bytes(p.key_begin).bytes(p.key_end).varint(p.owner);
  w.varint(moves).varint(splits).varint(draining.size());
  for (auto d : draining) w.varint(d);
  return w.take();
}

Result<PartitionMap> PartitionMap::decode(std::string_view bytes) {
  ByteReader r(bytes);
  PartitionMap m;
  auto bad = [] { return Status::corruption("partition map does not decode"); };
  auto v = r.u8();
  auto e = r.varint();
  auto nn = r.varint();
  if (!v || *v != kMapV1 || !e || !nn || *nn > 10'000) return bad();
  m.epoch = *e;
  for (uint64_t i = 0; i < *nn; ++i) {
    NodeInfo n;
    auto id = r.u32();
    if (!id || !get_endpoint(r, n.addr) || !get_endpoint(r, n.admin)) return bad();
    auto d = r.bytes();
    if (!d) return bad();
    n.id = *id;
    n.data_dir = *d;
    m.nodes.push_back(n);
  }
  auto nt = r.varint();
  if (!nt || *nt > 10'000) return bad();
  for (uint64_t i = 0; i < *nt; ++i) {
    TypeSpec t;
    auto name = r.bytes();
    auto kind = r.u8();
    auto slots = r.u16();
    auto parts = r.u32();
    auto ns = r.varint();
    if (!name || !kind || !slots || !parts || !ns || *ns > 100'000) return bad();
    t.name = *name;
    t.scheme.kind = *kind ? TypeScheme::Kind::kRange : TypeScheme::Kind::kHash;
    t.scheme.slots = *slots;
    t.partitions = *parts;
    for (uint64_t k = 0; k < *ns; ++k) {
      auto key = r.bytes();
      if (!key) return bad();
      t.split_keys.push_back(*key);
    }
    m.types.push_back(t);
  }
  auto np = r.varint();
  if (!np || *np > 1'000'000) return bad();
  for (uint64_t i = 0; i < *np; ++i) {
    PartitionInfo p;
    auto id = r.u32();
    auto type = r.bytes();
    auto sb = r.u16();
    auto se = r.u16();
    auto kb = r.bytes();
    auto ke = r.bytes();
    auto owner = r.u32();
    if (!id || !type || !sb || !se || !kb || !ke || !owner) return bad();
    p.id = *id;
    p.type = *type;
    p.slot_begin = *sb;
    p.slot_end = *se;
    p.key_begin = *kb;
    p.key_end = *ke;
    p.owner = *owner;
    m.partitions.push_back(p);
  }
  auto mv = r.varint();
  auto sp = r.varint();
  if (!mv || !sp) return bad();
  m.moves = *mv;
  m.splits = *sp;
  auto nd = r.varint();
  if (!nd || *nd > 10'000) return bad();
  for (uint64_t i = 0; i < *nd; ++i) {
    auto d = r.u32();
    if (!d) return bad();
    m.draining.push_back(*d);
  }
  return m;
}

// ---- config ----

const NodeInfo* ClusterConfig::node(uint32_t id) const {
  for (auto& n : nodes)
    if (n.id == id) return &n;
  return nullptr;
}

Result<ClusterConfig> ClusterConfig::load(const std::string& path) {
  std::ifstream in(path);
  if (!in) return Status::invalid_argument("cannot read cluster config " + path);
  std::stringstream ss;
  ss << in.rdbuf();
  auto slash = path.rfind('/');
  return parse(ss.str(), slash == std::string::npos ? "." : path.substr(0, slash));
}

Result<std::string> ClusterConfig::read_secret() const {
  if (insecure_dev) return std::string(kInsecureDevSecret);
  std::string p = secret_file.empty() || secret_file[0] == '/' ? secret_file : dir + "/" + secret_file;
  std::ifstream in(p);
  if (!in) return Status::invalid_argument("cannot read the cluster secret file '" + p + "'");
  std::string s;
  std::getline(in, s);
  if (s.size() < 16) return Status::invalid_argument("the cluster secret in '" + p + "' is shorter than 16 characters");
  return s;
}

Result<ClusterConfig> ClusterConfig::parse(std::string_view text, const std::string& dir) {
  ClusterConfig c;
  c.dir = dir;
  std::istringstream in{std::string(text)};
  std::string line;
  int lineno = 0;
  auto err = [&](const std::string& what) {
    return Status::invalid_argument("cluster config line " + std::to_string(lineno) + ": " + what);
  };
  auto number = [](const std::string& s, uint64_t& out) {
    auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
    return ec == std::errc() && p == s.data() + s.size();
  };
  while (std::getline(in, line)) {
    ++lineno;
    if (auto hash = line.find('#'); hash != std::string::npos) line.resize(hash);
    std::istringstream ws(line);
    std::vector<std::string> w;
    for (std::string t; ws >> t;) w.push_back(t);
    if (w.empty()) continue;
    if (w[0] == "secret-file" && w.size() == 2) {
      c.secret_file = w[1];
    } else if (w[0] == "insecure-dev" && w.size() == 1) {
      c.insecure_dev = true;
    } else if (w[0] == "durability" && w.size() == 2) {
      if (w[1] != "strict" && w[1] != "relaxed") return err("durability must be strict or relaxed");
      c.durability = w[1];
    } else if (w[0] == "limits" && w.size() >= 2) {
      for (size_t i = 1; i < w.size(); ++i) {
        auto eq = w[i].find('=');
        uint64_t v = 0;
        std::string k = eq == std::string::npos ? w[i] : w[i].substr(0, eq);
        if (eq == std::string::npos || !number(w[i].substr(eq + 1), v) || v == 0)
          return err("expected: limits [calls=N] [outbox=N] [inbox=N] with N > 0");
        if (k == "calls") c.max_pending_calls = v;
        else if (k == "outbox") c.max_outbox = v;
        else if (k == "inbox") c.max_inbox = v;
        else return err("unknown limit '" + k + "' (calls, outbox or inbox)");
      }
    } else if (w[0] == "meta" && w.size() == 2) {
      if (w[1] != "embedded")
        if (auto a = EtcdAddress::parse(w[1]); !a) return err(a.status().message());
      c.meta = w[1];
    } else if (w[0] == "node") {
      // node <id> <host:port> admin <host:port> data <dir>
      if (w.size() != 7 || w[3] != "admin" || w[5] != "data") return err("expected: node <id> <host:port> admin <host:port> data <dir>");
      uint64_t id;
      if (!number(w[1], id) || id == 0 || id > 1'000'000) return err("node id must be a positive integer");
      auto addr = net::Endpoint::parse(w[2]);
      auto admin = net::Endpoint::parse(w[4]);
      if (!addr) return err(addr.status().message());
      if (!admin) return err(admin.status().message());
      if (c.node(static_cast<uint32_t>(id))) return err("node " + w[1] + " is listed twice");
      // Two nodes on one port would each take the other's peers for itself (caught only at the
      // handshake), and two on one data directory would fight over its RocksDB.
      auto same = [](const net::Endpoint& a, const net::Endpoint& b) { return a.host == b.host && a.port == b.port; };
      if (same(*addr, *admin)) return err("node " + w[1] + " has " + w[2] + " as both its node and its admin address");
      auto dir = std::filesystem::path(w[6]).lexically_normal();
      for (auto& n : c.nodes) {
        for (auto* mine : {&*addr, &*admin})
          if (same(*mine, n.addr) || same(*mine, n.admin))
            return err("node " + w[1] + "'s address " + mine->to_string() + " is node " + std::to_string(n.id) + "'s already");
        if (std::filesystem::path(n.data_dir).lexically_normal() == dir)
          return err("node " + w[1] + "'s data directory " + w[6] + " is node " + std::to_string(n.id) + "'s already");
      }
      c.nodes.push_back({static_cast<uint32_t>(id), *addr, *admin, w[6]});
    } else if (w[0] == "type" && w.size() >= 3) {
      // type <name> hash [slots=N] [partitions=N]  |  type <name> range [splits=k1,k2,...]
      TypeSpec t;
      t.name = w[1];
      if (auto s = validate_ref({t.name, ""}); !s) return err(s.message());
      if (w[2] == "hash") {
        t.scheme.kind = TypeScheme::Kind::kHash;
      } else if (w[2] == "range") {
        t.scheme.kind = TypeScheme::Kind::kRange;
        t.scheme.slots = 0;
      } else {
        return err("a type's scheme is hash or range, not '" + w[2] + "'");
      }
      for (size_t i = 3; i < w.size(); ++i) {
        auto eq = w[i].find('=');
        std::string k = w[i].substr(0, eq), v = eq == std::string::npos ? "" : w[i].substr(eq + 1);
        uint64_t n = 0;
        if (k == "slots" && t.scheme.kind == TypeScheme::Kind::kHash && number(v, n) && n >= 1 && n <= 65535) {
          t.scheme.slots = static_cast<uint16_t>(n);
        } else if (k == "partitions" && number(v, n) && n >= 1 && n <= 65535) {
          t.partitions = static_cast<uint32_t>(n);
        } else if (k == "splits" && t.scheme.kind == TypeScheme::Kind::kRange && !v.empty()) {
          std::istringstream ks(v);
          for (std::string key; std::getline(ks, key, ',');) t.split_keys.push_back(key);
          if (!std::is_sorted(t.split_keys.begin(), t.split_keys.end()) ||
              std::adjacent_find(t.split_keys.begin(), t.split_keys.end()) != t.split_keys.end())
            return err("split keys must be sorted and distinct");
        } else {
          return err("unknown or malformed type option '" + w[i] + "'");
        }
      }
      c.types.push_back(t);
    } else {
      return err("unknown setting '" + w[0] + "'");
    }
  }
  if (c.nodes.empty()) return Status::invalid_argument("cluster config lists no nodes");
  if (c.insecure_dev && !c.secret_file.empty())
    return Status::invalid_argument("cluster config has both secret-file and insecure-dev: choose one");
  if (c.secret_file.empty() && !c.insecure_dev)
    return Status::invalid_argument("cluster config names no secret-file (every node needs the cluster secret; a "
                                    "throwaway local cluster may say `insecure-dev` instead, which uses a fixed, "
                                    "public secret)");
  return c;
}

const NodeInfo* find_node(const PartitionMap& map, const ClusterConfig& config, uint32_t id) {
  if (auto* n = map.node(id)) return n;
  return config.node(id);
}

std::vector<KeyRange> subtract_ranges(const std::vector<KeyRange>& ranges, const std::vector<KeyRange>& minus) {
  std::vector<KeyRange> out = ranges;
  for (auto& [mb, me] : minus) {
    std::vector<KeyRange> next;
    for (auto& [b, e] : out) {
      if (me <= b || e <= mb) {  // disjoint
        next.emplace_back(b, e);
        continue;
      }
      if (b < mb) next.emplace_back(b, mb);
      if (me < e) next.emplace_back(me, e);
    }
    out = std::move(next);
  }
  return out;
}

}  // namespace tandem::partition
