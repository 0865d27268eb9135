// Writing safetensors files: deterministic bytes, written atomically.
//
// The same tensors and metadata always give the same file, whatever order they were added in:
// header keys are sorted (nlohmann::json orders object keys), tensor data is laid out by element
// size, largest first, then by name (as the reference implementation does, so every tensor starts
// at a multiple of its element size once the buffer starts 8-aligned), and the JSON is padded with
// spaces (0x20, which the format allows) to a multiple of 8 bytes so the buffer does start
// 8-aligned. The file is written through AtomicFileWriter: a failed write leaves an existing file
// untouched.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <map>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "nwc/core/byte_io.hpp"
#include "nwc/core/error.hpp"
#include "nwc/core/file_io.hpp"
#include "nwc/core/tensor.hpp"
#include "nwc/io/safetensors_reader.hpp"  // the format constants
#include "nwc/io/tensor_bytes.hpp"

namespace nwc {

namespace detail {
/// What a safetensors header records of one tensor (its bytes follow from dtype and shape).
struct SafetensorsEntry {
    std::string name;
    dtype type = dtype::f32;
    Shape shape;
    std::uint64_t bytes() const { return checked_tensor_bytes(type, shape.dims(), "safetensors tensor '" + name + "'"); }
};

/// The order the tensors' data is laid out in (see the header comment): element size, largest
/// first, then name. Shared by SafetensorsWriter and writers that stream the data (they must
/// write the header before any tensor exists).
inline std::vector<std::size_t> safetensors_layout_order(std::span<const SafetensorsEntry> entries) {
    std::vector<std::size_t> order(entries.size());
    for (std::size_t k = 0; k < order.size(); ++k) order[k] = k;
    std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
        const std::size_t size_a = dtype_size(entries[a].type), size_b = dtype_size(entries[b].type);
        return size_a != size_b ? size_a > size_b : entries[a].name < entries[b].name;
    });
    return order;
}

/// The 8-byte length, then the JSON padded with spaces to a multiple of 8: everything of the file
/// before the data. errc::invalid_argument for a duplicate or reserved name or invalid UTF-8.
inline std::vector<std::uint8_t> safetensors_header_bytes(std::span<const SafetensorsEntry> entries, const std::map<std::string, std::string>& metadata) {
    nlohmann::json root = nlohmann::json::object();
    std::uint64_t offset = 0;
    for (const std::size_t k : safetensors_layout_order(entries)) {
        const SafetensorsEntry& entry = entries[k];
        require(entry.name != "__metadata__", errc::invalid_argument, "safetensors writer: '__metadata__' is reserved and cannot name a tensor");
        require(!root.contains(entry.name), errc::invalid_argument, "safetensors writer: tensor '", entry.name, "' added twice");
        nlohmann::json dims = nlohmann::json::array();
        for (std::int64_t dim : entry.shape.dims()) dims.push_back(std::uint64_t(dim));
        const std::uint64_t end = offset + entry.bytes();
        root[entry.name] = {{"dtype", std::string(dtype_name(entry.type))}, {"shape", dims}, {"data_offsets", {offset, end}}};
        offset = end;
    }
    if (!metadata.empty()) root["__metadata__"] = metadata;
    std::string text;
    try {
        text = root.dump();
    } catch (const nlohmann::json::exception& problem) {
        fail(errc::invalid_argument, "safetensors writer: a tensor name or metadata string is not valid UTF-8 (", problem.what(), ")");
    }
    // The buffer starts at length field + JSON: aligned when the JSON length is (see the header comment).
    constexpr std::size_t alignment = safetensors_length_bytes;
    text.append((alignment - text.size() % alignment) % alignment, ' ');
    std::vector<std::uint8_t> bytes(safetensors_length_bytes + text.size());
    const std::uint64_t length = text.size();
    std::memcpy(bytes.data(), &length, safetensors_length_bytes);  // little-endian host (byte_io.hpp asserts it)
    std::memcpy(bytes.data() + safetensors_length_bytes, text.data(), text.size());
    return bytes;
}
}  // namespace detail

/// Collects tensors and metadata, then writes one safetensors file.
class SafetensorsWriter {
public:
    /// Adds a tensor from its stored bytes (little-endian elements of `type`, row-major).
    /// errc::invalid_argument for a duplicate or reserved name or a byte count that does not match.
    void add_raw(std::string name, dtype type, Shape shape, std::vector<std::uint8_t> bytes) {
        require(name != "__metadata__", errc::invalid_argument, "safetensors writer: '__metadata__' is reserved and cannot name a tensor");
        require(!m_tensors.contains(name), errc::invalid_argument, "safetensors writer: tensor '", name, "' added twice");
        const std::uint64_t expected = checked_tensor_bytes(type, shape.dims(), "safetensors writer: tensor '" + name + "'");
        require(bytes.size() == expected, errc::invalid_argument, "safetensors writer: tensor '", name, "' has ", bytes.size(), " bytes, its shape and dtype need ",
                expected);
        std::string key = name;
        m_tensors.emplace(std::move(key), Pending{std::move(name), type, shape, std::move(bytes)});
    }
    /// Same, copying the bytes.
    void add_raw(std::string name, dtype type, Shape shape, std::span<const std::uint8_t> bytes) {
        add_raw(std::move(name), type, shape, std::vector<std::uint8_t>(bytes.begin(), bytes.end()));
    }
    /// Adds float32 values stored as `stored_as` (F32, F16 or BF16; rounding to nearest even).
    void add_float32(std::string name, TensorView<const float> values, dtype stored_as) {
        add_raw(std::move(name), stored_as, values.shape(), encode_float32(values, stored_as));
    }
    /// Sets one "__metadata__" entry (string -> string, as the format requires).
    void set_metadata(std::string key, std::string value) { m_metadata[std::move(key)] = std::move(value); }

    std::size_t tensor_count() const noexcept { return m_tensors.size(); }

    /// The whole file in memory.
    std::vector<std::uint8_t> serialize() const {
        const std::vector<std::uint8_t> header = header_bytes();
        std::vector<std::uint8_t> file;
        file.reserve(header.size() + data_size());
        emit(header, [&](std::span<const std::uint8_t> bytes) { file.insert(file.end(), bytes.begin(), bytes.end()); });
        return file;
    }
    /// Writes the file atomically (`max_bytes` simulates a full disk: errc::io past it).
    void write(const std::filesystem::path& path, std::uint64_t max_bytes = UINT64_MAX) const {
        const std::vector<std::uint8_t> header = header_bytes();
        AtomicFileWriter file(path, max_bytes);
        emit(header, [&](std::span<const std::uint8_t> bytes) { file.write(bytes); });
        file.commit();
    }
    /// Bytes that serialize() returns and write() writes.
    std::uint64_t serialized_size() const { return header_bytes().size() + data_size(); }

private:
    struct Pending {
        std::string name;
        dtype type;
        Shape shape;
        std::vector<std::uint8_t> bytes;
    };

    std::vector<detail::SafetensorsEntry> entries() const {
        std::vector<detail::SafetensorsEntry> result;
        for (const auto& [name, pending] : m_tensors) result.push_back({pending.name, pending.type, pending.shape});
        return result;
    }
    std::vector<const Pending*> layout_order() const {
        std::vector<const Pending*> by_name;
        for (const auto& [name, pending] : m_tensors) by_name.push_back(&pending);
        std::vector<const Pending*> order;
        for (const std::size_t k : detail::safetensors_layout_order(entries())) order.push_back(by_name[k]);
        return order;
    }
    std::uint64_t data_size() const {
        std::uint64_t total = 0;
        for (const auto& [name, pending] : m_tensors) total += pending.bytes.size();
        return total;
    }
    std::vector<std::uint8_t> header_bytes() const { return detail::safetensors_header_bytes(entries(), m_metadata); }
    template <class Sink>
    void emit(const std::vector<std::uint8_t>& header, Sink&& sink) const {
        sink(std::span<const std::uint8_t>(header));
        for (const Pending* pending : layout_order()) sink(std::span<const std::uint8_t>(pending->bytes));
    }

    std::map<std::string, Pending, std::less<>> m_tensors;  // by name: the header's key order
    std::map<std::string, std::string> m_metadata;
};

}  // namespace nwc
