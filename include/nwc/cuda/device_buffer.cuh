// DeviceBuffer<T>: an owning, move-only array in GPU global memory.
//
// The GPU twin of std::vector for trivially copyable element types: it allocates on
// construction, frees on destruction, and copies to and from host spans whose sizes must match
// (a mismatch is a caller's bug, reported as errc::invalid_argument rather than a silent partial
// copy). Copies without a stream are synchronous; the *_async forms take a stream and leave the
// host memory in use until that stream is synchronized.
//
// A decoder's temporaries (per-tensor tables, the payload's copy, symbols) can come from a
// DeviceMemoryPool instead, in the order of one stream (TemporaryMemory): cudaFree waits for the
// whole device, so decoders on several streams would take turns; cudaFreeAsync does not, and the
// pool keeps the memory for the next tensor. Such a buffer's upload at construction is queued on
// that stream (the host bytes are staged before the call returns), and its memory goes back to
// the pool in stream order when it is destroyed.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <span>
#include <type_traits>
#include <utility>
#include <vector>

#include "nwc/core/error.hpp"
#include "nwc/cuda/cuda_check.cuh"

namespace nwc::cuda {

/// A stream-ordered memory pool on the current device that keeps what is freed for reuse
/// (release threshold: unlimited). Allocations still outstanding when it is destroyed keep it
/// alive until they are freed (cudaMemPoolDestroy's rule).
class DeviceMemoryPool {
public:
    DeviceMemoryPool() {
        int device = 0;
        NWC_CUDA_CHECK(cudaGetDevice(&device));
        cudaMemPoolProps properties{};
        properties.allocType = cudaMemAllocationTypePinned;
        properties.location.type = cudaMemLocationTypeDevice;
        properties.location.id = device;
        NWC_CUDA_CHECK(cudaMemPoolCreate(&m_pool, &properties));
        std::uint64_t keep_everything = UINT64_MAX;
        NWC_CUDA_CHECK(cudaMemPoolSetAttribute(m_pool, cudaMemPoolAttrReleaseThreshold, &keep_everything));
    }
    DeviceMemoryPool(const DeviceMemoryPool&) = delete;
    DeviceMemoryPool& operator=(const DeviceMemoryPool&) = delete;
    ~DeviceMemoryPool() { (void)cudaMemPoolDestroy(m_pool); }
    cudaMemPool_t get() const noexcept { return m_pool; }

private:
    cudaMemPool_t m_pool = nullptr;
};

/// Where a temporary buffer's memory comes from: `pool`, in the order of `stream`; a null pool
/// means cudaMalloc / cudaFree and synchronous uploads. Converts from a plain stream.
struct TemporaryMemory {
    cudaStream_t stream = nullptr;
    cudaMemPool_t pool = nullptr;
    TemporaryMemory(cudaStream_t on = nullptr, cudaMemPool_t from = nullptr) noexcept : stream(on), pool(from) {}
};

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

    /// Allocates `count` uninitialized elements from `memory` (see the header comment).
    DeviceBuffer(std::size_t count, TemporaryMemory memory) : m_size(count) {
        if (memory.pool == nullptr) {
            if (count != 0) NWC_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&m_data), bytes()));
            return;
        }
        m_pooled = true;
        m_stream = memory.stream;
        if (count != 0) NWC_CUDA_CHECK(cudaMallocFromPoolAsync(reinterpret_cast<void**>(&m_data), bytes(), memory.pool, m_stream));
    }

    /// Allocates from `memory` and queues a copy of `host` on its stream (synchronous without a pool).
    DeviceBuffer(std::span<const T> host, TemporaryMemory memory) : DeviceBuffer(host.size(), memory) {
        if (m_pooled)
            upload_async(host, m_stream);
        else
            upload(host);
    }

    DeviceBuffer(const DeviceBuffer&) = delete;
    DeviceBuffer& operator=(const DeviceBuffer&) = delete;
    DeviceBuffer(DeviceBuffer&& other) noexcept
        : m_data(std::exchange(other.m_data, nullptr)), m_size(std::exchange(other.m_size, 0)), m_pooled(other.m_pooled), m_stream(other.m_stream) {}
    DeviceBuffer& operator=(DeviceBuffer&& other) noexcept {
        if (this != &other) {
            release();
            m_data = std::exchange(other.m_data, nullptr);
            m_size = std::exchange(other.m_size, 0);
            m_pooled = other.m_pooled;
            m_stream = other.m_stream;
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
        if (m_data != nullptr) (void)(m_pooled ? cudaFreeAsync(m_data, m_stream) : cudaFree(m_data));
        m_data = nullptr;
        m_size = 0;
    }

    T* m_data = nullptr;
    std::size_t m_size = 0;
    bool m_pooled = false;  ///< from a DeviceMemoryPool: freed with cudaFreeAsync on m_stream
    cudaStream_t m_stream = nullptr;
};

}  // namespace nwc::cuda
