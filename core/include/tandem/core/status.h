// Status and Result<T>: the error vocabulary of every Tandem layer. Expected failures travel
// as values; exceptions are caught at module edges and converted here.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace tandem {

enum class Code : uint8_t {
  kOk,
  kNotFound,
  kInvalidArgument,  // the caller sent something malformed; retrying the same input fails again
  kConflict,         // lost a race: rerun the whole handler
  kOverloaded,       // back off before retrying
  kUnavailable,      // partition moved or peer down: re-resolve, then retry
  kUnknownOutcome,   // may have committed: only an idempotent retry is safe
  kCorruption,       // stored bytes do not decode
  kInternal,         // a bug or an I/O failure; logged where it arose
};

std::string_view code_name(Code c);

class [[nodiscard]] Status {
 public:
  Status() = default;
  static Status ok() { return {}; }
  static Status not_found(std::string msg) { return {Code::kNotFound, std::move(msg)}; }
  static Status invalid_argument(std::string msg) { return {Code::kInvalidArgument, std::move(msg)}; }
  static Status conflict(std::string msg) { return {Code::kConflict, std::move(msg)}; }
  static Status overloaded(std::string msg) { return {Code::kOverloaded, std::move(msg)}; }
  static Status unavailable(std::string msg) { return {Code::kUnavailable, std::move(msg)}; }
  static Status unknown_outcome(std::string msg) { return {Code::kUnknownOutcome, std::move(msg)}; }
  static Status corruption(std::string msg) { return {Code::kCorruption, std::move(msg)}; }
  static Status internal(std::string msg) { return {Code::kInternal, std::move(msg)}; }
  // For codes that crossed a wire; an unknown code becomes kInternal.
  static Status from_code(Code c, std::string msg) {
    if (c > Code::kInternal) c = Code::kInternal;
    return {c, std::move(msg)};
  }

  bool is_ok() const { return code_ == Code::kOk; }
  explicit operator bool() const { return is_ok(); }
  Code code() const { return code_; }
  const std::string& message() const { return message_; }
  // "kInvalidArgument: key too long (300 > 255 bytes)"
  std::string to_string() const;
  // Explicitly drops a failure; `why` documents the decision at the call site.
  void ignore_error(std::string_view /*why*/) const {}

 private:
  Status(Code c, std::string m) : code_(c), message_(std::move(m)) {}
  Code code_ = Code::kOk;
  std::string message_;
};

// A T or a non-OK Status.
template <class T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}  // NOLINT: implicit by design
  Result(Status s) : v_(std::move(s)) {}     // NOLINT
  bool is_ok() const { return v_.index() == 0; }
  explicit operator bool() const { return is_ok(); }
  T& value() & { return std::get<0>(v_); }
  const T& value() const& { return std::get<0>(v_); }
  T&& value() && { return std::get<0>(std::move(v_)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() { return value(); }
  const T& operator*() const { return value(); }
  Status status() const { return is_ok() ? Status::ok() : std::get<1>(v_); }

 private:
  std::variant<T, Status> v_;
};

}  // namespace tandem

// Returns the Status of `expr` from the enclosing function if it is not OK.
#define TANDEM_TRY(expr)                        \
  do {                                          \
    ::tandem::Status tandem_try_s_ = (expr);    \
    if (!tandem_try_s_.is_ok()) return tandem_try_s_; \
  } while (0)
