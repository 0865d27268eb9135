// Parallel loops with results that do not depend on the thread count.
//
// `parallel_for(count, threads, body)` runs body(i) for i in [0, count). Work items are claimed
// dynamically (an atomic counter) for load balance, but each item's result must depend only on i:
// callers write to per-item outputs and reduce in index order afterwards, which keeps files
// byte-identical for any --threads. The first exception thrown by a body is rethrown on the calling
// thread after all workers stop.
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

template <class Body>
void parallel_for(std::int64_t count, int threads, Body&& body) {
    threads = int(std::min<std::int64_t>(resolve_thread_count(threads), std::max<std::int64_t>(count, 1)));
    if (threads <= 1) {
        for (std::int64_t i = 0; i < count; ++i) body(i);
        return;
    }
    std::atomic<std::int64_t> next{0};
    std::exception_ptr first_error;
    std::mutex error_mutex;
    auto worker = [&] {
        for (;;) {
            const std::int64_t i = next.fetch_add(1, std::memory_order_relaxed);
            if (i >= count) return;
            try {
                body(i);
            } catch (...) {
                std::lock_guard lock(error_mutex);
                if (!first_error) first_error = std::current_exception();
                next.store(count, std::memory_order_relaxed);  // stop handing out work
            }
        }
    };
    std::vector<std::jthread> pool;
    pool.reserve(std::size_t(threads - 1));
    for (int t = 1; t < threads; ++t) pool.emplace_back(worker);
    worker();
    pool.clear();  // joins
    if (first_error) std::rethrow_exception(first_error);
}

}  // namespace nwc
