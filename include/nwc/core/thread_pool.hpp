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

/// The items of a parallel_for_beside as its lead sees them: it may run some itself.
class BesideItems {
public:
    /// The next item no thread has claimed yet (count or more once all are).
    std::int64_t next() const noexcept { return m_next->load(std::memory_order_relaxed); }
    /// Claims the next item if its index is below `limit` and runs it on this thread; false if
    /// there was none below the limit.
    bool run_below(std::int64_t limit) { return m_run_below(m_context, limit); }

private:
    template <class Lead, class Body>
    friend void parallel_for_beside(std::int64_t, int, Lead&&, Body&&);
    template <class RunBelow>
    BesideItems(const std::atomic<std::int64_t>& next, RunBelow& run_below)
        : m_next(&next), m_run_below([](void* context, std::int64_t limit) { return (*static_cast<RunBelow*>(context))(limit); }), m_context(&run_below) {}
    const std::atomic<std::int64_t>* m_next;
    bool (*m_run_below)(void*, std::int64_t);  // not std::function: this header is everywhere
    void* m_context;
};

/// parallel_for whose calling thread first runs lead(BesideItems&) while the other threads
/// already work on the items; then it joins them. For work the calling thread must do itself
/// (memory allocated there comes from the main malloc arena, which keeps its pages between calls;
/// worker threads' arenas give them back) and that items may wait for; the lead may run items
/// too (BesideItems::run_below), so that with one thread its work and the items interleave. If
/// lead throws, no further item is handed out and its exception is rethrown (bodies waiting on
/// lead must be released by lead itself).
template <class Lead, class Body>
void parallel_for_beside(std::int64_t count, int threads, Lead&& lead, Body&& body) {
    threads = int(std::min<std::int64_t>(resolve_thread_count(threads), std::max<std::int64_t>(count, 1)));
    std::atomic<std::int64_t> next{0};
    std::exception_ptr first_error;
    std::mutex error_mutex;
    const auto record = [&] {
        std::lock_guard lock(error_mutex);
        if (!first_error) first_error = std::current_exception();
        next.store(count, std::memory_order_relaxed);  // stop handing out work
    };
    const auto run = [&](std::int64_t i) {
        if (threads <= 1) {  // one thread: an error leaves at once
            body(i);
            return;
        }
        try {
            body(i);
        } catch (...) {
            record();
        }
    };
    auto run_below = [&](std::int64_t limit) {
        limit = std::min(limit, count);
        std::int64_t i = next.load(std::memory_order_relaxed);
        while (i < limit && !next.compare_exchange_weak(i, i + 1, std::memory_order_relaxed)) {
        }
        if (i >= limit) return false;
        run(i);
        return true;
    };
    auto worker = [&] {
        for (;;) {
            const std::int64_t i = next.fetch_add(1, std::memory_order_relaxed);
            if (i >= count) return;
            run(i);
        }
    };
    BesideItems items(next, run_below);
    if (threads <= 1) {
        lead(items);
        worker();
        return;
    }
    std::vector<std::jthread> pool;
    pool.reserve(std::size_t(threads - 1));
    for (int t = 1; t < threads; ++t) pool.emplace_back(worker);
    try {
        lead(items);
    } catch (...) {
        record();
    }
    worker();
    pool.clear();  // joins
    if (first_error) std::rethrow_exception(first_error);
}

template <class Body>
void parallel_for(std::int64_t count, int threads, Body&& body) {
    parallel_for_beside(count, threads, [](BesideItems&) {}, body);
}

}  // namespace nwc
