// Errors as values. Library code never exits or aborts on bad input: it returns a Status
// (or a Result<T>, which holds either a value or a non-OK Status). Only programs and tests exit.
#pragma once

#include <cassert>
#include <string>
#include <utility>
#include <variant>

namespace tqkv {

enum class StatusCode : int {
  kOk = 0,
  kInvalidArgument,   // a parameter the caller chose is out of range (bits 5, head size 7, ...)
  kOutOfRange,        // an index or length past what exists (bad sequence id, append past max)
  kResourceExhausted, // a fixed pool is full (no free KV pages)
  kCorruptData,       // input bytes are malformed (truncated or hostile GGUF, ...)
  kUnsupported,       // well-formed but not something we implement (unknown tensor type, ...)
  kIoError,           // the OS said no (open, mmap, read)
  kInternal,          // a bug: an invariant we own was broken
};

const char* status_code_name(StatusCode code);

class [[nodiscard]] Status {
 public:
  Status() = default;  // OK
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status ok() { return {}; }
  bool is_ok() const { return code_ == StatusCode::kOk; }
  explicit operator bool() const { return is_ok(); }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }
  // "invalid argument: bits must be one of 2, 3, 4, 8 (got 5)"
  std::string to_string() const;

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

inline Status invalid_argument(std::string m) { return {StatusCode::kInvalidArgument, std::move(m)}; }
inline Status out_of_range(std::string m) { return {StatusCode::kOutOfRange, std::move(m)}; }
inline Status resource_exhausted(std::string m) { return {StatusCode::kResourceExhausted, std::move(m)}; }
inline Status corrupt_data(std::string m) { return {StatusCode::kCorruptData, std::move(m)}; }
inline Status unsupported(std::string m) { return {StatusCode::kUnsupported, std::move(m)}; }
inline Status io_error(std::string m) { return {StatusCode::kIoError, std::move(m)}; }
inline Status internal_error(std::string m) { return {StatusCode::kInternal, std::move(m)}; }

// Either a T or an error Status. C++20 has no std::expected; this is the small subset we use.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}                              // NOLINT: implicit by design
  Result(Status status) : v_(std::move(status)) { assert(!std::get<Status>(v_).is_ok()); }  // NOLINT

  bool is_ok() const { return std::holds_alternative<T>(v_); }
  explicit operator bool() const { return is_ok(); }
  const Status& status() const {
    static const Status kOk;
    return is_ok() ? kOk : std::get<Status>(v_);
  }
  T& value() & { return std::get<T>(v_); }
  const T& value() const& { return std::get<T>(v_); }
  T&& value() && { return std::get<T>(std::move(v_)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

 private:
  std::variant<T, Status> v_;
};

}  // namespace tqkv

// Propagate a non-OK Status from an expression that yields a Status.
#define TQKV_RETURN_IF_ERROR(expr)                 \
  do {                                             \
    ::tqkv::Status _tqkv_st = (expr);              \
    if (!_tqkv_st.is_ok()) return _tqkv_st;        \
  } while (0)

#define TQKV_CONCAT_INNER(a, b) a##b
#define TQKV_CONCAT(a, b) TQKV_CONCAT_INNER(a, b)
// TQKV_ASSIGN_OR_RETURN(auto x, make_x()); declares x or returns the error.
#define TQKV_ASSIGN_OR_RETURN(decl, expr)                                   \
  auto TQKV_CONCAT(_tqkv_res_, __LINE__) = (expr);                          \
  if (!TQKV_CONCAT(_tqkv_res_, __LINE__).is_ok())                           \
    return TQKV_CONCAT(_tqkv_res_, __LINE__).status();                      \
  decl = std::move(TQKV_CONCAT(_tqkv_res_, __LINE__)).value()
