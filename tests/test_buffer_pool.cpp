// BufferPool and PageBuffer (core/buffer_pool.hpp): buffers come back with their pages, grow
// keeping their contents, give back the pages past what is still needed. Threads taking and
// giving at once: test_concurrency.cpp.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "nwc/core/buffer_pool.hpp"

namespace nwc_test_buffer_pool {

using namespace nwc;

namespace {

const std::size_t page = std::size_t(::sysconf(_SC_PAGESIZE));

bool all_bytes_are(const std::byte* data, std::size_t size, std::byte value) {
    return std::all_of(data, data + size, [&](std::byte byte) { return byte == value; });
}

}  // namespace

TEST_CASE("page_buffer: whole pages, growth keeps the contents, trim gives back the tail", "[buffer_pool]") {
    PageBuffer buffer(page + 1);
    REQUIRE(buffer.data() != nullptr);
    CHECK(buffer.capacity() == 2 * page);
    CHECK(reinterpret_cast<std::uintptr_t>(buffer.data()) % page == 0);
    CHECK(all_bytes_are(buffer.data(), buffer.capacity(), std::byte{0}));  // fresh pages read as zeros
    std::memset(buffer.data(), 0xAB, buffer.capacity());

    buffer.reserve(page);  // already large enough: nothing changes
    CHECK(buffer.capacity() == 2 * page);
    buffer.reserve(5 * page);
    CHECK(buffer.capacity() == 5 * page);
    CHECK(all_bytes_are(buffer.data(), 2 * page, std::byte{0xAB}));
    std::memset(buffer.data(), 0xCD, buffer.capacity());

    // Pages past the first `bytes` (rounded up to a page) read as zeros afterwards: they were given back.
    buffer.trim(page + 10);
    CHECK(buffer.capacity() == 5 * page);
    CHECK(all_bytes_are(buffer.data(), 2 * page, std::byte{0xCD}));
    CHECK(all_bytes_are(buffer.data() + 2 * page, 3 * page, std::byte{0}));
    buffer.trim(10 * page);  // past the end: nothing
    CHECK(all_bytes_are(buffer.data(), 2 * page, std::byte{0xCD}));

    PageBuffer moved(std::move(buffer));
    CHECK(buffer.data() == nullptr);
    CHECK(buffer.capacity() == 0);
    CHECK(moved.capacity() == 5 * page);
    CHECK(PageBuffer().data() == nullptr);
}

TEST_CASE("buffer_pool: a buffer comes back with its pages, the smallest that fits first", "[buffer_pool]") {
    BufferPool pool;
    const std::byte* small_address = nullptr;
    const std::byte* large_address = nullptr;
    {
        BufferPool::Lease small = pool.take(2 * page);
        BufferPool::Lease large = pool.take(8 * page);
        CHECK(small.capacity() == 2 * page);
        CHECK(large.capacity() == 8 * page);
        std::memset(small.data(), 0x11, small.capacity());
        std::memset(large.data(), 0x22, large.capacity());
        small_address = small.data();
        large_address = large.data();
        CHECK(pool.idle_count() == 0);
    }  // both given back
    CHECK(pool.idle_count() == 2);
    {
        BufferPool::Lease lease = pool.take(page);  // the smallest that fits, contents as left
        CHECK(lease.data() == small_address);
        CHECK(all_bytes_are(lease.data(), lease.capacity(), std::byte{0x11}));
        BufferPool::Lease next = pool.take(3 * page);
        CHECK(next.data() == large_address);
        CHECK(all_bytes_are(next.data(), next.capacity(), std::byte{0x22}));
        CHECK(pool.idle_count() == 0);
        BufferPool::Lease third = pool.take(page);  // none idle: a new one
        CHECK(third.data() != small_address);
        CHECK(third.data() != large_address);
        // A lease moved over another gives the other back.
        lease = std::move(third);
        CHECK(pool.idle_count() == 1);
    }
    CHECK(pool.idle_count() == 3);
    {
        // None large enough: the largest idle one grows, its contents kept.
        BufferPool::Lease grown = pool.take(12 * page);
        CHECK(grown.capacity() == 12 * page);
        CHECK(all_bytes_are(grown.data(), 8 * page, std::byte{0x22}));
        CHECK(pool.idle_count() == 2);
    }
}

TEST_CASE("buffer_pool: idle buffers keep only the pages a later take can need", "[buffer_pool]") {
    BufferPool pool;
    {
        BufferPool::Lease first = pool.take(6 * page);
        std::memset(first.data(), 0x33, first.capacity());
        pool.lower_need(4 * page);  // trims nothing on loan
        CHECK(all_bytes_are(first.data(), first.capacity(), std::byte{0x33}));
    }  // given back: trimmed to the need
    BufferPool::Lease again = pool.take(2 * page);
    CHECK(again.capacity() == 6 * page);
    CHECK(all_bytes_are(again.data(), 4 * page, std::byte{0x33}));
    CHECK(all_bytes_are(again.data() + 4 * page, 2 * page, std::byte{0}));
    std::memset(again.data(), 0x44, again.capacity());
    again = BufferPool::Lease();  // back to the pool
    pool.lower_need(page + 1);  // idle buffers are trimmed at once
    pool.lower_need(5 * page);  // the need only ever falls
    const BufferPool::Lease last = pool.take(page);
    CHECK(all_bytes_are(last.data(), 2 * page, std::byte{0x44}));
    CHECK(all_bytes_are(last.data() + 2 * page, 4 * page, std::byte{0}));
}

}  // namespace nwc_test_buffer_pool
