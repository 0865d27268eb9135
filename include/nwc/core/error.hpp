// nwc::error: the one exception type for bad input.
//
// Every failure caused by data from outside (a corrupt stream, a truncated file, a wrong shape, an
// unsupported dtype, an I/O failure) throws nwc::error. It carries an id that programs can switch
// on and a message that says what was wrong and where ("safetensors header: tensor 'w' ends at
// byte 812 but the file has 700"). Tests check both. Numerical failures that a caller can recover
// from (a Hessian that is not positive definite) are returned as a status instead, and broken
// preconditions are NWC_ASSERTs.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>

namespace nwc {

/// What kind of failure an nwc::error reports.
enum class errc {
    io,                ///< the operating system refused a read, write, open or rename
    truncated,         ///< the input ends before the data it announces
    corrupt,           ///< the input contradicts itself (bad magic, checksum mismatch, bad code)
    unsupported,       ///< well-formed, but a version, dtype or feature this build does not handle
    limit,             ///< a size in the input exceeds what the library accepts (before allocating)
    invalid_argument,  ///< a caller-supplied value is out of range (bad option, wrong shape)
    numerical,         ///< a computation produced non-finite values that cannot be recovered
    cuda,              ///< a CUDA runtime or library call failed
};

/// Stable short name of an error id, used as the message prefix.
constexpr std::string_view to_string(errc id) noexcept {
    switch (id) {
        case errc::io: return "io";
        case errc::truncated: return "truncated";
        case errc::corrupt: return "corrupt";
        case errc::unsupported: return "unsupported";
        case errc::limit: return "limit";
        case errc::invalid_argument: return "invalid_argument";
        case errc::numerical: return "numerical";
        case errc::cuda: return "cuda";
    }
    return "unknown";
}

/// The exception thrown for bad input; what() reads "nwc <id>: <message>".
class error : public std::runtime_error {
public:
    error(errc id, const std::string& message)
        : std::runtime_error("nwc " + std::string(to_string(id)) + ": " + message), m_id(id), m_message(message) {}

    /// The kind of failure.
    errc id() const noexcept { return m_id; }
    /// The message without the id prefix.
    const std::string& message() const noexcept { return m_message; }

private:
    errc m_id;
    std::string m_message;
};

namespace detail {
template <class... Parts>
std::string concat(const Parts&... parts) {
    std::ostringstream out;
    (out << ... << parts);
    return out.str();
}
}  // namespace detail

/// Throws nwc::error(id, message built by streaming every part in order).
template <class... Parts>
[[noreturn]] void fail(errc id, const Parts&... parts) {
    throw error(id, detail::concat(parts...));
}

/// Throws nwc::error(id, ...) unless the condition holds; for checks on untrusted input.
template <class... Parts>
void require(bool condition, errc id, const Parts&... parts) {
    if (!condition) fail(id, parts...);
}

}  // namespace nwc
