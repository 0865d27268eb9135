// DeviceBuffer<T>: an owning, move-only array in GPU global memory.
//
// The GPU twin of std::vector for trivially copyable element types: it allocates on
// construction, frees on destruction, and copies to and from host spans whose sizes must match
// (a mismatch is a caller's bug, reported as errc::invalid_argument rather than a silent partial
// copy). Copies without a stream are synchronous; the *_async forms take a stream and leave the
// host memory in use until that stream is synchronized.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <span>
#include <type_traits>
#include <utility>
#include <vector>

#include "nwc/core/error.hpp"
#include "nwc/cuda/cuda_check.cuh"

namespace nwc::cuda {

/// Owning array of `size()` elements of T in device memory.
template <class T>
class DeviceBuffer {
    static_assert(std::is_trivially_copyable_v<T>, "DeviceBuffer<T> copies bytes: T must be trivially copyable");

public:
    DeviceBuffer() = default;

    /// Allocates `count` uninitialized elements (no allocation for 0).
    explicit DeviceBuffer(std::size_t count) : m_size(count) {
        if (count != 0) NWC_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&m_data), bytes()));
    }

    /// Allocates and fills with a copy of `host`.
    explicit DeviceBuffer(std::span<const T> host) : DeviceBuffer(host.size()) { upload(host); }

    DeviceBuffer(const DeviceBuffer&) = delete;
    DeviceBuffer& operator=(const DeviceBuffer&) = delete;
    DeviceBuffer(DeviceBuffer&& other) noexcept
        : m_data(std::exchange(other.m_data, nullptr)), m_size(std::exchange(other.m_size, 0)) {}
    DeviceBuffer& operator=(DeviceBuffer&& other) noexcept {
        if (this != &other) {
            release();
            m_data = std::exchange(other.m_data, nullptr);
            m_size = std::exchange(other.m_size, 0);
        }
        return *this;
    }
    ~DeviceBuffer() { release(); }

    T* data() noexcept { return m_data; }
    const T* data() const noexcept { return m_data; }
    std::size_t size() const noexcept { return m_size; }
    std::size_t bytes() const noexcept { return m_size * sizeof(T); }
    bool empty() const noexcept { return m_size == 0; }

    /// Copies `host` (exactly size() elements) to the device; returns when the copy is done.
    void upload(std::span<const T> host) {
        require_same_size(host.size(), "upload");
        if (m_size != 0) NWC_CUDA_CHECK(cudaMemcpy(m_data, host.data(), bytes(), cudaMemcpyHostToDevice));
    }

    /// Copies the device contents into `host` (exactly size() elements); returns when done.
    void download(std::span<T> host) const {
        require_same_size(host.size(), "download");
        if (m_size != 0) NWC_CUDA_CHECK(cudaMemcpy(host.data(), m_data, bytes(), cudaMemcpyDeviceToHost));
    }

    /// The device contents as a new host vector.
    std::vector<T> to_host() const {
        std::vector<T> host(m_size);
        download(host);
        return host;
    }

    /// Queues a host -> device copy on `stream`; `host` must stay alive until the stream is synchronized.
    void upload_async(std::span<const T> host, cudaStream_t stream) {
        require_same_size(host.size(), "upload_async");
        if (m_size != 0) NWC_CUDA_CHECK(cudaMemcpyAsync(m_data, host.data(), bytes(), cudaMemcpyHostToDevice, stream));
    }

    /// Queues a device -> host copy on `stream`; `host` is valid after the stream is synchronized.
    void download_async(std::span<T> host, cudaStream_t stream) const {
        require_same_size(host.size(), "download_async");
        if (m_size != 0) NWC_CUDA_CHECK(cudaMemcpyAsync(host.data(), m_data, bytes(), cudaMemcpyDeviceToHost, stream));
    }

    /// Sets every byte to `byte` (cudaMemset semantics), synchronously.
    void fill_bytes(unsigned char byte) {
        if (m_size != 0) NWC_CUDA_CHECK(cudaMemset(m_data, byte, bytes()));
    }

private:
    void require_same_size(std::size_t host_count, const char* operation) const {
        require(host_count == m_size, errc::invalid_argument, "DeviceBuffer::", operation, ": host span has ", host_count,
                " elements, the device buffer ", m_size);
    }

    void release() noexcept {
        // A destructor cannot report a failure; cudaFree only fails after an earlier error that
        // was already reported (a sticky kernel fault), so its status is dropped here.
        if (m_data != nullptr) (void)cudaFree(m_data);
        m_data = nullptr;
        m_size = 0;
    }

    T* m_data = nullptr;
    std::size_t m_size = 0;
};

}  // namespace nwc::cuda
