#include <tandem/core/flags.h>

#include <charconv>
#include <cstdlib>

namespace tandem {

Result<Flags> Flags::parse(int argc, char** argv, int first, const std::set<std::string>& known,
                           const std::set<std::string>& switches) {
  Flags f;
  for (int i = first; i < argc; ++i) {
    std::string a = argv[i];
    if (a.rfind("--", 0) != 0) {
      f.positional_.push_back(a);
      continue;
    }
    std::string_view body = std::string_view(a).substr(2);
    auto eq = body.find('=');
    bool inline_value = eq != std::string_view::npos;
    std::string name(body.substr(0, eq));
    std::string value(inline_value ? body.substr(eq + 1) : std::string_view());
    if (switches.count(name)) {
      if (inline_value) return Status::invalid_argument("flag --" + name + " takes no value");
      f.values_.insert_or_assign(name, std::string(1, '1'));  // (a literal here trips GCC 12's -Wrestrict)
    } else if (known.count(name)) {
      if (!inline_value) {
        if (i + 1 >= argc) return Status::invalid_argument("flag --" + name + " needs a value");
        value = argv[++i];
      }
      f.values_[name] = value;
    } else {
      return Status::invalid_argument("unknown flag --" + name);
    }
  }
  return f;
}

std::string Flags::str(const std::string& name, const std::string& def) const {
  auto it = values_.find(name);
  return it == values_.end() ? def : it->second;
}

namespace {
template <class T>
Result<T> parse_int(const std::map<std::string, std::string>& values, const std::string& name, T def,
                    const char* expects) {
  auto it = values.find(name);
  if (it == values.end()) return def;
  T v{};
  auto& s = it->second;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size())
    return Status::invalid_argument("--" + name + " expects " + expects + ", got '" + s + "'");
  return v;
}
}  // namespace

Result<uint64_t> Flags::u64(const std::string& name, uint64_t def) const {
  return parse_int<uint64_t>(values_, name, def, "a non-negative integer");
}

Result<int64_t> Flags::i64(const std::string& name, int64_t def) const {
  return parse_int<int64_t>(values_, name, def, "an integer");
}

Result<double> Flags::f64(const std::string& name, double def) const {
  auto it = values_.find(name);
  if (it == values_.end()) return def;
  char* end = nullptr;
  double v = std::strtod(it->second.c_str(), &end);
  if (it->second.empty() || *end != '\0')
    return Status::invalid_argument("--" + name + " expects a number, got '" + it->second + "'");
  return v;
}

}  // namespace tandem
