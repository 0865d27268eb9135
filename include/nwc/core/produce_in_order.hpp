// produce_in_order: items made on worker threads, handed on in order, with a bounded number waiting.
//
// The streaming pipelines use it: `nwc decompress` decodes tensors on workers while the calling
// thread writes them in file order; `nwc compress` reads and codes tensors on workers while the
// calling thread appends them to the container in model order. The window bounds what exists at
// once (the results waiting to be consumed), so memory stays at O(threads + window) items however
// many there are; the order of consume() calls, and so the bytes written, never depends on the
// thread count.
#pragma once

#include <algorithm>
#include <condition_variable>
#include <cstdint>
#include <cstddef>
#include <exception>
#include <mutex>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

namespace nwc {

/// How many produced results may wait for consume() at once: at most `items`, and no new item is
/// started while the waiting ones weigh `bytes` or more (weigh(result) says what one weighs).
template <class Weigh>
struct WaitingLimit {
    std::size_t items = SIZE_MAX;
    std::size_t bytes = SIZE_MAX;
    Weigh weigh;
};

/// Runs produce(k) for k = 0 .. count-1 on `threads` workers and consume(k, result) on the calling
/// thread in order of k, with at most `limit` results waiting (made ahead of the consumer:
/// bounding their bytes bounds memory while letting workers run far ahead of one slow item).
/// Items are started in order, so the item the consumer waits for has always been started: a
/// full limit never deadlocks. The first error (of either side) stops everything and is rethrown.
template <class Result, class Produce, class Consume, class Weigh>
void produce_in_order(std::size_t count, int threads, const WaitingLimit<Weigh>& limit, Produce&& produce, Consume&& consume) {
    const std::size_t window = std::max<std::size_t>(1, std::min(limit.items, count));
    std::mutex mutex;
    std::condition_variable changed;
    std::vector<std::optional<Result>> slots(window);  // item k waits in slot k % window
    std::size_t next = 0, handed = 0, waiting_bytes = 0;
    bool stop = false;
    std::exception_ptr error;
    const auto record = [&](std::exception_ptr problem) {
        std::lock_guard lock(mutex);
        if (!error) error = std::move(problem);
        stop = true;
    };
    const auto work = [&] {
        for (;;) {
            std::size_t k = 0;
            {
                std::unique_lock lock(mutex);
                changed.wait(lock, [&] { return stop || next >= count || (next < handed + window && waiting_bytes < limit.bytes); });
                if (stop || next >= count) return;
                k = next++;
            }
            try {
                Result result = produce(k);
                const std::size_t weight = limit.weigh(result);
                std::lock_guard lock(mutex);
                slots[k % window].emplace(std::move(result));
                waiting_bytes += weight;
            } catch (...) {
                record(std::current_exception());
            }
            changed.notify_all();
        }
    };
    {
        std::vector<std::jthread> workers;
        for (int t = 0; t < threads; ++t) workers.emplace_back(work);
        try {
            for (std::size_t k = 0; k < count; ++k) {
                std::optional<Result> result;
                {
                    std::unique_lock lock(mutex);
                    changed.wait(lock, [&] { return stop || slots[k % window].has_value(); });
                    if (stop) break;
                    result.swap(slots[k % window]);
                    waiting_bytes -= limit.weigh(*result);
                    ++handed;
                }
                changed.notify_all();
                consume(k, *result);
            }
        } catch (...) {
            record(std::current_exception());
        }
        {
            std::lock_guard lock(mutex);
            stop = true;
        }
        changed.notify_all();
    }  // joins the workers
    if (error) std::rethrow_exception(error);
}

/// The same with a limit of `window` waiting results: a worker starts item k only once item
/// k - window has been handed to consume.
template <class Result, class Produce, class Consume>
void produce_in_order(std::size_t count, int threads, std::size_t window, Produce&& produce, Consume&& consume) {
    const auto weightless = [](const Result&) { return std::size_t(0); };
    produce_in_order<Result>(count, threads, WaitingLimit<decltype(weightless)>{window, SIZE_MAX, weightless}, std::forward<Produce>(produce),
                             std::forward<Consume>(consume));
}

}  // namespace nwc
