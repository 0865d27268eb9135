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

    std::vector<const Pending*> layout_order() const {
        std::vector<const Pending*> order;
        for (const auto& [name, pending] : m_tensors) order.push_back(&pending);
        std::stable_sort(order.begin(), order.end(), [](const Pending* a, const Pending* b) { return dtype_size(a->type) > dtype_size(b->type); });
        return order;
    }
    std::uint64_t data_size() const {
        std::uint64_t total = 0;
        for (const auto& [name, pending] : m_tensors) total += pending.bytes.size();
        return total;
    }
    // The 8-byte length, then the JSON padded with spaces to a multiple of 8.
    std::vector<std::uint8_t> header_bytes() const {
        nlohmann::json root = nlohmann::json::object();
        std::uint64_t offset = 0;
        for (const Pending* pending : layout_order()) {
            nlohmann::json dims = nlohmann::json::array();
            for (std::int64_t dim : pending->shape.dims()) dims.push_back(std::uint64_t(dim));
            const std::uint64_t end = offset + pending->bytes.size();
            root[pending->name] = {{"dtype", std::string(dtype_name(pending->type))}, {"shape", dims}, {"data_offsets", {offset, end}}};
            offset = end;
        }
        if (!m_metadata.empty()) root["__metadata__"] = m_metadata;
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
    template <class Sink>
    void emit(const std::vector<std::uint8_t>& header, Sink&& sink) const {
        sink(std::span<const std::uint8_t>(header));
        for (const Pending* pending : layout_order()) sink(std::span<const std::uint8_t>(pending->bytes));
    }

    std::map<std::string, Pending, std::less<>> m_tensors;  // by name: the header's key order
    std::map<std::string, std::string> m_metadata;
};

}  // namespace nwc
