// Parallel loops with results that do not depend on the thread count.
//
// `parallel_for(count, threads, body)` runs body(i) for i in [0, count). Work items are claimed
// dynamically (an atomic counter) for load balance, but each item's result must depend only on i:
// callers write to per-item outputs and reduce in index order afterwards, which keeps files
// byte-identical for any --threads. The first exception thrown by a body is rethrown on the calling
// thread after all workers stop. parallel_for_beside also runs a lead task on the calling thread.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace nwc {

/// Threads to use when the caller asks for 0 ("all"): the hardware's count, at least 1.
inline int resolve_thread_count(int requested) {
    if (requested > 0) return requested;
    return std::max(1, int(std::thread::hardware_concurrency()));
}

/// parallel_for that first runs lead() on the calling thread while the other threads already work
/// on the items; then the calling thread joins them. For work the calling thread must do itself
/// (memory allocated there comes from the main malloc arena, which keeps its pages between calls;
/// worker threads' arenas give them back) and that items may wait for. lead() runs once, with one
/// thread before the first item. If lead throws, no further item is handed out and its exception is
/// rethrown (bodies waiting on lead must be released by lead itself).
template <class Lead, class Body>
void parallel_for_beside(std::int64_t count, int threads, Lead&& lead, Body&& body) {
    threads = int(std::min<std::int64_t>(resolve_thread_count(threads), std::max<std::int64_t>(count, 1)));
    if (threads <= 1) {
        lead();
        for (std::int64_t i = 0; i < count; ++i) body(i);
        return;
    }
    std::atomic<std::int64_t> next{0};
    std::exception_ptr first_error;
    std::mutex error_mutex;
    const auto record = [&] {
        std::lock_guard lock(error_mutex);
        if (!first_error) first_error = std::current_exception();
        next.store(count, std::memory_order_relaxed);  // stop handing out work
    };
    auto worker = [&] {
        for (;;) {
            const std::int64_t i = next.fetch_add(1, std::memory_order_relaxed);
            if (i >= count) return;
            try {
                body(i);
            } catch (...) {
                record();
            }
        }
    };
    std::vector<std::jthread> pool;
    pool.reserve(std::size_t(threads - 1));
    for (int t = 1; t < threads; ++t) pool.emplace_back(worker);
    try {
        lead();
    } catch (...) {
        record();
    }
    worker();
    pool.clear();  // joins
    if (first_error) std::rethrow_exception(first_error);
}

template <class Body>
void parallel_for(std::int64_t count, int threads, Body&& body) {
    parallel_for_beside(count, threads, [] {}, body);
}

}  // namespace nwc
