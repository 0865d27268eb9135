// BufferPool: large scratch buffers handed from one task to the next with their pages kept, so a
// pipeline that decodes tensor after tensor does not pay the kernel, for every tensor, to map,
// zero and fault in fresh memory and to unmap it again (that was a quarter of `nwc decompress`'s
// CPU time: docs/bench/scale.md).
//
// Read me first:
// - A PageBuffer is anonymous memory mapped in whole pages. Growing it (mremap) keeps the pages
//   it has; trimming it (madvise MADV_DONTNEED) gives back the pages past a length while keeping
//   the address range. Its contents are not initialized beyond what the kernel gives (zeros on a
//   page's first touch): a user writes every byte it reads.
// - Memory stays bounded by what is in use: the owner says, with lower_need(), the most bytes any
//   later take() can ask for, and every idle buffer is trimmed to that. So after the largest
//   tensor of a model is done its pages go back, and the buffers that remain are as large as the
//   tensors still to come.
// - take() picks the smallest idle buffer that is large enough, else grows the largest idle one,
//   else maps a new one; so the pool holds at most as many buffers as were ever in use at once.
// - Thread-safe; a Lease returns its buffer to the pool when it is destroyed.
#pragma once

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <utility>
#include <vector>

#include "nwc/core/error.hpp"

namespace nwc {

/// Anonymous memory in whole pages that can grow in place or by moving (its pages go with it) and
/// give back its tail (see the header comment).
class PageBuffer {
public:
    PageBuffer() = default;
    explicit PageBuffer(std::size_t bytes) { reserve(bytes); }
    PageBuffer(const PageBuffer&) = delete;
    PageBuffer& operator=(const PageBuffer&) = delete;
    PageBuffer(PageBuffer&& other) noexcept : m_data(std::exchange(other.m_data, nullptr)), m_capacity(std::exchange(other.m_capacity, 0)) {}
    PageBuffer& operator=(PageBuffer&& other) noexcept {
        if (this != &other) {
            release();
            m_data = std::exchange(other.m_data, nullptr);
            m_capacity = std::exchange(other.m_capacity, 0);
        }
        return *this;
    }
    ~PageBuffer() { release(); }

    std::byte* data() const noexcept { return m_data; }
    /// Bytes usable from data(): a whole number of pages.
    std::size_t capacity() const noexcept { return m_capacity; }

    /// Makes capacity() at least `bytes`; the contents of the old capacity move with it.
    void reserve(std::size_t bytes) {
        if (bytes <= m_capacity) return;
        const std::size_t page = page_size();
        if (bytes > SIZE_MAX - page) fail(errc::limit, "a scratch buffer of ", bytes, " bytes");
        const std::size_t size = (bytes + page - 1) / page * page;
        void* address = m_data == nullptr ? ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
                                          : ::mremap(m_data, m_capacity, size, MREMAP_MAYMOVE);
        if (address == MAP_FAILED) fail(errc::limit, "cannot map a scratch buffer of ", size, " bytes: ", std::strerror(errno));
        m_data = static_cast<std::byte*>(address);
        m_capacity = size;
    }

    /// Hands the pages past the first `bytes` back to the kernel (they read as zeros if touched
    /// again); capacity() is unchanged.
    void trim(std::size_t bytes) noexcept {
        const std::size_t page = page_size();
        const std::size_t keep = bytes >= m_capacity ? m_capacity : (bytes + page - 1) / page * page;
        if (keep < m_capacity) ::madvise(m_data + keep, m_capacity - keep, MADV_DONTNEED);  // failure only means the pages stay
    }

private:
    static std::size_t page_size() noexcept { return std::size_t(::sysconf(_SC_PAGESIZE)); }
    void release() noexcept {
        if (m_data != nullptr) ::munmap(m_data, m_capacity);
        m_data = nullptr;
        m_capacity = 0;
    }

    std::byte* m_data = nullptr;
    std::size_t m_capacity = 0;
};

/// Idle PageBuffers kept for the next task (see the header comment).
class BufferPool {
public:
    /// A buffer on loan: back to its pool when destroyed (or when another lease is moved over it).
    class Lease {
    public:
        Lease() = default;
        Lease(BufferPool& pool, PageBuffer buffer) : m_pool(&pool), m_buffer(std::move(buffer)) {}
        Lease(Lease&& other) noexcept : m_pool(std::exchange(other.m_pool, nullptr)), m_buffer(std::move(other.m_buffer)) {}
        Lease& operator=(Lease&& other) noexcept {
            if (this != &other) {
                give_back();
                m_pool = std::exchange(other.m_pool, nullptr);
                m_buffer = std::move(other.m_buffer);
            }
            return *this;
        }
        Lease(const Lease&) = delete;
        Lease& operator=(const Lease&) = delete;
        ~Lease() { give_back(); }

        std::byte* data() const noexcept { return m_buffer.data(); }
        std::size_t capacity() const noexcept { return m_buffer.capacity(); }

    private:
        void give_back() noexcept {
            if (m_pool != nullptr) m_pool->give(std::move(m_buffer));
            m_pool = nullptr;
        }
        BufferPool* m_pool = nullptr;
        PageBuffer m_buffer;
    };

    BufferPool() = default;
    BufferPool(const BufferPool&) = delete;
    BufferPool& operator=(const BufferPool&) = delete;

    /// A buffer of at least `bytes` (contents unspecified: see the header comment).
    Lease take(std::size_t bytes) {
        PageBuffer buffer;
        {
            std::lock_guard lock(m_mutex);
            if (!m_idle.empty()) {
                // m_idle is sorted by capacity: the first large enough, else the largest.
                auto chosen = std::find_if(m_idle.begin(), m_idle.end(), [&](const PageBuffer& idle) { return idle.capacity() >= bytes; });
                if (chosen == m_idle.end()) chosen = m_idle.end() - 1;
                buffer = std::move(*chosen);
                m_idle.erase(chosen);
            }
        }
        buffer.reserve(std::max<std::size_t>(bytes, 1));
        return Lease(*this, std::move(buffer));
    }

    /// No later take() asks for more than `bytes`: idle buffers keep at most that many bytes of
    /// pages from now on. Only ever lowers the figure (it starts unbounded).
    void lower_need(std::size_t bytes) noexcept {
        std::lock_guard lock(m_mutex);
        if (bytes >= m_need) return;
        m_need = bytes;
        for (PageBuffer& idle : m_idle) idle.trim(m_need);
    }

    /// Buffers waiting for a take() (for tests).
    std::size_t idle_count() const {
        std::lock_guard lock(m_mutex);
        return m_idle.size();
    }

private:
    void give(PageBuffer buffer) noexcept {
        if (buffer.data() == nullptr) return;
        std::lock_guard lock(m_mutex);
        buffer.trim(m_need);
        const auto place = std::find_if(m_idle.begin(), m_idle.end(), [&](const PageBuffer& idle) { return idle.capacity() > buffer.capacity(); });
        try {
            m_idle.insert(place, std::move(buffer));
        } catch (...) {  // no room to keep it: it is unmapped instead
        }
    }

    mutable std::mutex m_mutex;
    std::vector<PageBuffer> m_idle;  // by capacity, smallest first
    std::size_t m_need = SIZE_MAX;
};

}  // namespace nwc
