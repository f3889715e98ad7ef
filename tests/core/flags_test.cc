#include <tandem/core/flags.h>

#include <doctest/doctest.h>
#include <vector>

using namespace tandem;

namespace {
Result<Flags> parse(std::vector<std::string> args) {
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  return Flags::parse(static_cast<int>(argv.size()), argv.data(), 0, {"orders", "rate"}, {"fresh"});
}
}  // namespace

TEST_CASE("flags take values in both spellings and keep positionals") {
  auto f = parse({"--orders", "10", "--rate=0.5", "--fresh", "extra"});
  REQUIRE(f.is_ok());
  CHECK(*f->u64("orders", 0) == 10);
  CHECK(*f->f64("rate", 0) == doctest::Approx(0.5));
  CHECK(f->has("fresh"));
  CHECK(f->positional().size() == 1);
}

TEST_CASE("an unknown flag, a missing value and a malformed number are clear errors") {
  auto unknown = parse({"--ordres", "10"});
  CHECK(unknown.status().message() == "unknown flag --ordres");
  auto missing = parse({"--orders"});
  CHECK(missing.status().message() == "flag --orders needs a value");
  auto f = parse({"--orders", "ten"});
  REQUIRE(f.is_ok());
  CHECK(f->u64("orders", 0).status().code() == Code::kInvalidArgument);
}
