// Reading safetensors files (Hugging Face): memory-mapped, validated in full before any tensor is used.
//
// Layout: u64 little-endian header length N, N bytes of UTF-8 JSON starting with '{', then the data
// buffer. The JSON maps tensor names to {"dtype", "shape", "data_offsets": [begin, end]} (offsets
// relative to the buffer) plus an optional "__metadata__" object of string -> string.
//
// Read me first, the file is hostile (people decompress files from the internet):
//  - N is checked against a 100 MB limit (the reference implementation's) and against the file
//    size before the JSON is touched; the JSON is parsed in place, never copied.
//  - nlohmann's parser is iterative, but a callback still rejects, during the parse, nesting deeper
//    than the format needs (root -> tensor -> shape), arrays longer than any shape, and duplicate
//    keys, which JSON parsers otherwise resolve silently (last one wins), letting two tools see two
//    different files. Parsing a header of N bytes thus takes a bounded multiple of N in memory.
//  - Every number is checked: dimensions are unsigned integers (never floats), the element count
//    times the element size is computed with overflow checks, `end - begin` must equal it, and
//    the ranges, sorted, must tile the buffer exactly: no overlap, no hole, no trailing byte. This is
//    the reference implementation's rule, so real files pass and aliasing tricks do not.
//  - A NUL byte anywhere in the header is rejected: nlohmann's lexer would stop there silently.
//  - Tensor bytes are only located here; they are read (and converted) lazily per tensor.
// See docs/format/safetensors.md for what is accepted and rejected.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <tuple>
#include <vector>

#include <nlohmann/json.hpp>

#include "nwc/core/error.hpp"
#include "nwc/core/file_io.hpp"
#include "nwc/core/tensor.hpp"
#include "nwc/io/tensor_bytes.hpp"

namespace nwc {

/// The largest safetensors header (JSON) accepted, in bytes: the reference implementation's limit.
inline constexpr std::uint64_t safetensors_max_header_bytes = 100'000'000;
/// Bytes of the u64 header length N that starts the file; the JSON header follows at this offset.
inline constexpr std::size_t safetensors_length_bytes = sizeof(std::uint64_t);

/// One tensor of a safetensors file, as its header describes it.
struct SafetensorsTensorInfo {
    std::string name;
    dtype type = dtype::f32;
    Shape shape;
    std::uint64_t data_begin = 0;  ///< first byte, relative to the data buffer
    std::uint64_t data_end = 0;    ///< one past the last byte, relative to the data buffer

    std::uint64_t byte_size() const noexcept { return data_end - data_begin; }
};

namespace detail {

struct SafetensorsHeader {
    std::uint64_t header_size = 0;
    std::vector<SafetensorsTensorInfo> tensors;  // sorted by name
    std::map<std::string, std::string> metadata;
};

// Rejects, while parsing, what the DOM would hide or what would only cost memory: nesting deeper
// than the format needs (root -> entry -> shape), duplicate keys (JSON parsers keep the last one
// silently, so two tools would see two files), entries that are not objects, arrays longer than
// any shape, entries with dozens of fields. What remains costs a bounded multiple of the header.
class SafetensorsJsonGuard {
public:
    static constexpr std::size_t max_array_length = 64;
    static constexpr std::size_t max_entry_fields = 64;

    explicit SafetensorsJsonGuard(std::string_view context) : m_context(context) {}
    bool operator()(int depth, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
        using event_t = nlohmann::json::parse_event_t;
        const bool opens = event == event_t::object_start || event == event_t::array_start;
        if (opens && (depth >= 3 || (depth == 2 && event == event_t::object_start)))
            fail(errc::corrupt, m_context, ": header JSON nests deeper than a safetensors header can (inside '", printable(m_outer_key), "')");
        if (event == event_t::array_start && depth == 1)
            fail(errc::corrupt, m_context, ": tensor '", printable(m_outer_key), "': expected an object, found an array");
        if (event == event_t::object_start && depth == 1) m_inner_keys.clear();
        if (event == event_t::array_start && depth == 2) m_array_length = 0;
        if (event == event_t::value && depth == 3 && ++m_array_length > max_array_length)
            fail(errc::corrupt, m_context, ": tensor '", printable(m_outer_key), "': array of more than ", max_array_length, " elements");
        if (event == event_t::key && depth <= 2) {
            const std::string& key = parsed.get_ref<const std::string&>();
            if (depth == 1) m_outer_key = key;
            if (depth == 2 && m_outer_key != "__metadata__" && m_inner_keys.size() >= max_entry_fields)
                fail(errc::corrupt, m_context, ": tensor '", printable(m_outer_key), "' has more than ", max_entry_fields, " fields");
            auto& keys = depth == 1 ? m_outer_keys : m_inner_keys;
            if (!keys.insert(key).second) fail(errc::corrupt, m_context, ": header JSON has the key '", printable(key), "' twice");
        }
        return true;
    }

private:
    std::string m_context;
    std::string m_outer_key;
    std::set<std::string> m_outer_keys;
    std::set<std::string> m_inner_keys;
    std::size_t m_array_length = 0;
};

inline std::string json_excerpt(const nlohmann::json& value) { return printable(value.dump(), 80); }

inline std::uint64_t json_unsigned(const nlohmann::json& value, std::string_view context, std::string_view what) {
    if (value.is_number_integer() && !value.is_number_unsigned())
        fail(errc::corrupt, context, ": ", what, " is negative (", json_excerpt(value), ")");
    if (!value.is_number_unsigned()) fail(errc::corrupt, context, ": ", what, " must be an unsigned integer, not ", json_excerpt(value));
    return value.get<std::uint64_t>();
}

inline SafetensorsTensorInfo parse_safetensors_entry(const std::string& name, const nlohmann::json& value, std::uint64_t buffer_size,
                                                     std::uint64_t data_start, const std::string& file_context) {
    const std::string context = file_context + ": tensor '" + printable(name) + "'";
    if (!value.is_object()) fail(errc::corrupt, context, ": expected an object, found ", value.type_name());
    const auto field = [&](const char* key) -> const nlohmann::json& {
        auto found = value.find(key);
        if (found == value.end()) fail(errc::corrupt, context, ": missing \"", key, "\"");
        return *found;
    };
    SafetensorsTensorInfo info;
    info.name = name;
    const nlohmann::json& type = field("dtype");
    if (!type.is_string()) fail(errc::corrupt, context, ": \"dtype\" must be a string, not ", json_excerpt(type));
    const std::string& type_name = type.get_ref<const std::string&>();
    if (type_name != "F32" && type_name != "F16" && type_name != "BF16" && type_name != "I32" && type_name != "U8")
        fail(errc::unsupported, context, ": dtype '", printable(type_name), "' is not supported (F32, F16, BF16, I32, U8 are)");
    info.type = dtype_from_name(type_name);

    const nlohmann::json& shape = field("shape");
    if (!shape.is_array()) fail(errc::corrupt, context, ": \"shape\" must be an array, not ", json_excerpt(shape));
    if (shape.size() > std::size_t(Shape::max_rank)) fail(errc::unsupported, context, ": rank ", shape.size(), " exceeds ", Shape::max_rank);
    std::vector<std::int64_t> dims;
    for (const auto& dim : shape) {
        const std::uint64_t extent = json_unsigned(dim, context, "a dimension");
        if (extent > std::uint64_t(std::numeric_limits<std::int64_t>::max())) fail(errc::limit, context, ": dimension ", extent, " is too large");
        dims.push_back(std::int64_t(extent));
    }
    // Bounded by the buffer: a shape that cannot fit there is corrupt whatever its offsets say.
    const std::uint64_t expected_bytes = checked_tensor_bytes(info.type, dims, context);

    const nlohmann::json& offsets = field("data_offsets");
    if (!offsets.is_array() || offsets.size() != 2) fail(errc::corrupt, context, ": \"data_offsets\" must be [begin, end], not ", json_excerpt(offsets));
    info.data_begin = json_unsigned(offsets[0], context, "data_offsets[0]");
    info.data_end = json_unsigned(offsets[1], context, "data_offsets[1]");
    if (info.data_begin > info.data_end) fail(errc::corrupt, context, ": data_offsets [", info.data_begin, ", ", info.data_end, "] run backwards");
    if (info.data_end > buffer_size)
        fail(errc::truncated, context, ": data ends at buffer byte ", info.data_end, " (file offset ", data_start + info.data_end, ") but the buffer has only ",
             buffer_size, " bytes");
    if (info.byte_size() != expected_bytes)
        fail(errc::corrupt, context, ": data_offsets [", info.data_begin, ", ", info.data_end, "] hold ", info.byte_size(), " bytes but shape ", json_excerpt(shape), " of ",
             type_name, " needs ", expected_bytes);
    info.shape = Shape(std::span<const std::int64_t>(dims));
    return info;
}

// The ranges, sorted, must tile [0, buffer_size) exactly (empty tensors may sit anywhere on a boundary).
inline void check_safetensors_tiling(const std::vector<SafetensorsTensorInfo>& tensors, std::uint64_t buffer_size, std::uint64_t data_start,
                                     const std::string& context) {
    std::vector<const SafetensorsTensorInfo*> order;
    for (const auto& info : tensors) order.push_back(&info);
    std::sort(order.begin(), order.end(), [](auto* a, auto* b) { return std::tie(a->data_begin, a->data_end, a->name) < std::tie(b->data_begin, b->data_end, b->name); });
    std::uint64_t covered = 0;
    const SafetensorsTensorInfo* previous = nullptr;
    for (const auto* info : order) {
        if (info->data_begin < covered)
            fail(errc::corrupt, context, ": tensor '", printable(info->name), "' [", info->data_begin, ", ", info->data_end, ") overlaps tensor '", printable(previous->name), "' [",
                 previous->data_begin, ", ", previous->data_end, ")");
        if (info->data_begin > covered)
            fail(errc::corrupt, context, ": buffer bytes [", covered, ", ", info->data_begin, ") (file offset ", data_start + covered,
                 ") belong to no tensor (gap before '", printable(info->name), "')");
        covered = info->data_end;
        previous = info;
    }
    if (covered != buffer_size)
        fail(errc::corrupt, context, ": ", buffer_size - covered, " trailing bytes after the last tensor, at file offset ", data_start + covered);
}

inline SafetensorsHeader parse_safetensors(std::span<const std::uint8_t> file, const std::string& context) {
    SafetensorsHeader header;
    constexpr std::size_t json_at = safetensors_length_bytes;
    if (file.size() < json_at) fail(errc::truncated, context, ": ", file.size(), " bytes, too short for the ", json_at, "-byte header length");
    std::memcpy(&header.header_size, file.data(), json_at);
    const std::uint64_t n = header.header_size;
    if (n > safetensors_max_header_bytes) fail(errc::limit, context, ": header length ", n, " exceeds the limit of ", safetensors_max_header_bytes, " bytes");
    if (n > file.size() - json_at) fail(errc::truncated, context, ": header length ", n, " but only ", file.size() - json_at, " bytes follow the length field");
    if (n == 0 || file[json_at] != '{') fail(errc::corrupt, context, ": header does not start with '{' at file offset ", json_at);
    const std::uint64_t data_start = json_at + n;
    const std::uint64_t buffer_size = file.size() - data_start;

    const char* text = reinterpret_cast<const char*>(file.data() + json_at);
    // nlohmann's lexer takes a NUL byte for the end of input and would ignore whatever follows; JSON
    // never contains a raw NUL, so one anywhere in the header is corruption, not padding.
    if (const void* nul = std::memchr(text, 0, std::size_t(n)); nul != nullptr)
        fail(errc::corrupt, context, ": header is not valid JSON near file offset ", json_at + std::size_t(static_cast<const char*>(nul) - text), " (NUL byte)");
    nlohmann::json root;
    try {
        root = nlohmann::json::parse(text, text + n, SafetensorsJsonGuard(context));
    } catch (const nlohmann::json::parse_error& problem) {
        // The byte the parser stopped at, 1-based within the header; the header starts at file offset 8.
        fail(errc::corrupt, context, ": header is not valid JSON near file offset ", 8 + (problem.byte > 0 ? problem.byte - 1 : 0), " (", problem.what(), ")");
    } catch (const nlohmann::json::exception& problem) {
        fail(errc::corrupt, context, ": header JSON rejected (", problem.what(), ")");
    }
    if (!root.is_object()) fail(errc::corrupt, context, ": header JSON is not an object");

    for (const auto& [name, value] : root.items()) {
        if (name == "__metadata__") {
            if (!value.is_object()) fail(errc::corrupt, context, ": \"__metadata__\" must be an object of strings");
            for (const auto& [key, text_value] : value.items()) {
                if (!text_value.is_string()) fail(errc::corrupt, context, ": \"__metadata__\" value of '", printable(key), "' is not a string: ", json_excerpt(text_value));
                header.metadata.emplace(key, text_value.get<std::string>());
            }
            continue;
        }
        header.tensors.push_back(parse_safetensors_entry(name, value, buffer_size, data_start, context));
    }
    check_safetensors_tiling(header.tensors, buffer_size, data_start, context);
    // nlohmann::json keeps object keys sorted, so tensors() is already in name order.
    return header;
}

}  // namespace detail

/// A safetensors file, memory-mapped and validated; tensors are read lazily, one at a time.
///
/// Copies share the same read-only mapping. Thread-safe for concurrent reads.
class SafetensorsFile {
public:
    /// Maps and validates `path`; every problem is an nwc::error naming the file and the byte offset.
    static SafetensorsFile open(const std::filesystem::path& path) {
        auto mapping = std::make_shared<MappedFile>(path);
        const std::span<const std::uint8_t> bytes = mapping->bytes();
        return SafetensorsFile(std::move(mapping), bytes, "safetensors '" + path.string() + "'");
    }
    /// Validates a file held in memory (`context` names it in messages).
    static SafetensorsFile from_bytes(std::vector<std::uint8_t> bytes, const std::string& context = "safetensors (memory)") {
        auto owned = std::make_shared<const std::vector<std::uint8_t>>(std::move(bytes));
        const std::span<const std::uint8_t> view(*owned);
        return SafetensorsFile(std::move(owned), view, context);
    }

    /// All tensors, sorted by name.
    const std::vector<SafetensorsTensorInfo>& tensors() const noexcept { return m_header.tensors; }
    std::size_t tensor_count() const noexcept { return m_header.tensors.size(); }
    /// The tensor called `name`, or nullptr.
    const SafetensorsTensorInfo* find(std::string_view name) const noexcept {
        auto found = std::lower_bound(m_header.tensors.begin(), m_header.tensors.end(), name, [](const SafetensorsTensorInfo& info, std::string_view key) { return info.name < key; });
        return found != m_header.tensors.end() && found->name == name ? &*found : nullptr;
    }
    /// The tensor called `name`; errc::invalid_argument if there is none.
    const SafetensorsTensorInfo& info(std::string_view name) const {
        const SafetensorsTensorInfo* found = find(name);
        if (found == nullptr) fail(errc::invalid_argument, m_context, ": no tensor named '", name, "'");
        return *found;
    }
    /// The stored bytes of tensor `name` (little-endian elements of its dtype), without copying.
    std::span<const std::uint8_t> raw_bytes(std::string_view name) const {
        const SafetensorsTensorInfo& entry = info(name);
        return m_bytes.subspan(std::size_t(data_offset() + entry.data_begin), std::size_t(entry.byte_size()));
    }
    /// Tensor `name` converted to float32 (F32, F16, BF16; other dtypes are errc::unsupported).
    Tensor<float> read_float32(std::string_view name) const {
        const SafetensorsTensorInfo& entry = info(name);
        return decode_float32(entry.type, entry.shape, raw_bytes(name), m_context + ": tensor '" + detail::printable(entry.name) + "'");
    }
    /// The "__metadata__" map (empty if the file has none).
    const std::map<std::string, std::string>& metadata() const noexcept { return m_header.metadata; }
    /// N, the length of the JSON header.
    std::uint64_t header_size() const noexcept { return m_header.header_size; }
    /// File offset of the data buffer (8 + N).
    std::uint64_t data_offset() const noexcept { return safetensors_length_bytes + m_header.header_size; }
    std::uint64_t file_size() const noexcept { return m_bytes.size(); }
    /// The whole file.
    std::span<const std::uint8_t> bytes() const noexcept { return m_bytes; }
    /// How messages name this file ("safetensors 'model.safetensors'").
    const std::string& context() const noexcept { return m_context; }

private:
    SafetensorsFile(std::shared_ptr<const void> owner, std::span<const std::uint8_t> bytes, std::string context)
        : m_owner(std::move(owner)), m_bytes(bytes), m_context(std::move(context)), m_header(detail::parse_safetensors(m_bytes, m_context)) {}

    std::shared_ptr<const void> m_owner;  // keeps the mapping (or the vector) alive
    std::span<const std::uint8_t> m_bytes;
    std::string m_context;
    detail::SafetensorsHeader m_header;
};

}  // namespace nwc
