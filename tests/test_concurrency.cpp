// Many threads decoding the same and different .nwc files at once (shared readers whose CRCs are
// verified lazily by whichever thread comes first, reader copies, readers of their own, nested
// thread pools) must give exactly what one thread gives; so must many streamed compressions of one
// shared ModelReader; produce_in_order keeps its order and its limit under any scheduling; a
// whole-model decode allocates on the calling thread while workers wait for it (parallel_for_beside). Built
// and run in the ThreadSanitizer tree too (scripts/test.sh: label tsan), where a data race fails
// the test.
// nwc-ctest-labels: tsan
#include <catch2/catch.hpp>

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <thread>
#include <vector>

#include "nwc/core/buffer_pool.hpp"
#include "nwc/core/produce_in_order.hpp"
#include "nwc/io/model_reader.hpp"
#include "reliability_support.hpp"

namespace nwc_test_concurrency {

using namespace nwc;

namespace {

constexpr int thread_count = 8;

struct Fixture {
    std::filesystem::path folder = std::filesystem::temp_directory_path() / ("nwc_test_concurrency_" + std::to_string(::getpid()));
    std::vector<std::filesystem::path> paths;
    std::vector<std::vector<Tensor<float>>> expected;  // single-threaded decode of each file

    Fixture() {
        std::filesystem::create_directories(folder);
        const std::vector<std::vector<std::uint8_t>> files{
            reliability::small_container("rtn"), reliability::small_container("ecsq"),
            reliability::small_container("nwc"), reliability::mixed_container()};
        for (std::size_t k = 0; k < files.size(); ++k) {
            paths.push_back(folder / ("file" + std::to_string(k) + ".nwc"));
            write_file_atomic(paths.back(), files[k]);
            expected.push_back(reliability::decode_every_tensor(ContainerReader::from_bytes(files[k])));
        }
    }
    ~Fixture() {
        std::error_code ignored;
        std::filesystem::remove_all(folder, ignored);
    }
};

bool same(const Tensor<float>& a, const Tensor<float>& b) {
    return a.shape() == b.shape() && a.values().size() == b.values().size() &&
           std::memcmp(a.data(), b.data(), a.values().size() * sizeof(float)) == 0;
}

/// Runs body(thread) on thread_count threads; returns the number of threads that threw.
template <class Body>
int run_threads(Body&& body) {
    std::atomic<int> failures{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < thread_count; ++t)
        threads.emplace_back([&, t] {
            try {
                body(t);
            } catch (...) {
                failures.fetch_add(1);
            }
        });
    for (auto& thread : threads) thread.join();
    return failures.load();
}

}  // namespace

TEST_CASE("concurrency: shared readers, every tensor of every file from many threads at once", "[concurrency]") {
    const Fixture fixture;
    // Fresh readers: the first access to each region verifies its CRC, from whichever thread.
    std::vector<ContainerReader> readers;
    for (const auto& path : fixture.paths) readers.push_back(ContainerReader::open(path));
    std::vector<std::pair<std::size_t, std::size_t>> work;  // (file, tensor)
    for (std::size_t file = 0; file < readers.size(); ++file)
        for (std::size_t index = 0; index < readers[file].tensor_count(); ++index) work.emplace_back(file, index);
    std::atomic<int> mismatches{0}, decodes{0};
    const int failures = run_threads([&](int t) {
        for (int round = 0; round < 2; ++round)
            for (std::size_t k = 0; k < work.size(); ++k) {
                const auto [file, index] = work[(k + std::size_t(t) * 3) % work.size()];
                const ContainerReader& reader = readers[file];
                const ContainerEntry& entry = reader.entry(index);
                if (entry.method == "raw" && !is_floating_dtype(entry.original_dtype)) {
                    reader.payload(index);
                    continue;
                }
                // Odd threads nest a pool of their own inside (segments in parallel).
                const Tensor<float> decoded = DefaultCodec::decompress(reader, index, 1 + t % 2);
                if (!same(decoded, fixture.expected[file][index])) mismatches.fetch_add(1);
                decodes.fetch_add(1);
            }
    });
    CHECK(failures == 0);
    CHECK(mismatches == 0);
    CHECK(decodes > 0);
    for (const auto& reader : readers) reader.verify();
}

TEST_CASE("concurrency: reader copies and readers of their own, whole models, at once", "[concurrency]") {
    const Fixture fixture;
    const ContainerReader shared = ContainerReader::open(fixture.paths[3]);  // the mixed file
    std::atomic<int> mismatches{0};
    const int failures = run_threads([&](int t) {
        const std::size_t file = std::size_t(t) % fixture.paths.size();
        // Even threads: a copy of one shared reader (copies share the bytes and the CRC record).
        // Odd threads: a reader of their own on one of the files.
        const ContainerReader reader = t % 2 == 0 ? shared : ContainerReader::open(fixture.paths[file]);
        const std::size_t expected_file = t % 2 == 0 ? 3 : file;
        const ModelFile model = DefaultCodec::decompress_model(reader, 1 + t % 3);
        for (const ModelTensor& tensor : model.tensors) {
            if (!tensor.is_floating()) continue;
            if (!same(tensor.values, fixture.expected[expected_file][reader.index_of(tensor.name)])) mismatches.fetch_add(1);
        }
    });
    CHECK(failures == 0);
    CHECK(mismatches == 0);
}

TEST_CASE("concurrency: a corrupt tensor fails in every thread and leaves the others decodable", "[concurrency]") {
    const Fixture fixture;
    std::vector<std::uint8_t> bytes = read_file(fixture.paths[3]);
    const ContainerReader clean = ContainerReader::from_bytes(bytes);
    const std::size_t victim = clean.index_of("layers.0.attention.wq.ecsq");
    bytes[std::size_t(clean.entry(victim).payload_offset) + 5] ^= 0x10;
    const ContainerReader reader = ContainerReader::from_bytes(std::move(bytes));
    std::atomic<int> errors{0}, mismatches{0};
    const int failures = run_threads([&](int) {
        for (std::size_t index = 0; index < reader.tensor_count(); ++index) {
            const ContainerEntry& entry = reader.entry(index);
            if (entry.method == "raw" && !is_floating_dtype(entry.original_dtype)) continue;
            try {
                if (!same(DefaultCodec::decompress(reader, index), fixture.expected[3][index])) mismatches.fetch_add(1);
            } catch (const nwc::error& caught) {
                if (index == victim && caught.id() == errc::corrupt) errors.fetch_add(1);
                else mismatches.fetch_add(1);
            }
        }
    });
    CHECK(failures == 0);
    CHECK(mismatches == 0);
    CHECK(errors == thread_count);
}

TEST_CASE("concurrency: a whole-model decode with two corrupt tensors names the first one on any thread count", "[concurrency]") {
    const Fixture fixture;
    std::vector<std::uint8_t> bytes = read_file(fixture.paths[3]);
    const ContainerReader clean = ContainerReader::from_bytes(bytes);
    REQUIRE(clean.tensor_count() >= 6);
    for (std::size_t victim : {std::size_t(1), std::size_t(4)}) bytes[std::size_t(clean.entry(victim).payload_offset) + 3] ^= 0x40;
    const ContainerReader reader = ContainerReader::from_bytes(std::move(bytes));
    for (int threads : {1, 2, 4})
        for (int repeat = 0; repeat < 8; ++repeat) {
            INFO("threads " << threads);
            try {
                (void)DefaultCodec::decompress_model(ContainerReader(reader), threads);
                FAIL("a corrupt container decoded");
            } catch (const nwc::error& caught) {
                CHECK(caught.id() == errc::corrupt);
                CHECK_THAT(caught.what(), Catch::Contains("'" + clean.entry(1).name + "'"));
            }
        }
}

TEST_CASE("concurrency: parallel_for_beside runs its lead on the calling thread while items wait for it", "[concurrency][thread_pool]") {
    for (int threads : {1, 2, 4})
        for (bool lead_runs_items : {false, true}) {
            INFO("threads " << threads << ", the lead runs items: " << lead_runs_items);
            constexpr std::int64_t count = 200;
            std::atomic<std::int64_t> published{0};  // items [0, published) may run: what the lead has prepared
            std::vector<int> prepared(count, 0), hits(count, 0);
            std::thread::id lead_thread;
            std::atomic<int> run_by_lead{0};
            parallel_for_beside(
                count, threads,
                [&](BesideItems& items) {
                    lead_thread = std::this_thread::get_id();
                    for (std::int64_t i = 0; i < count; ++i) {
                        // Items below the prepared ones only: the lead must never wait for itself.
                        if (lead_runs_items && i % 8 == 0)
                            while (items.next() + 4 < i && items.run_below(i)) run_by_lead.fetch_add(1);
                        prepared[std::size_t(i)] = 1;
                        published.store(i + 1, std::memory_order_release);
                        published.notify_all();
                    }
                },
                [&](std::int64_t i) {
                    for (std::int64_t seen = published.load(std::memory_order_acquire); seen <= i; seen = published.load(std::memory_order_acquire))
                        published.wait(seen, std::memory_order_acquire);
                    hits[std::size_t(i)] += prepared[std::size_t(i)];
                });
            CHECK(lead_thread == std::this_thread::get_id());
            CHECK(std::all_of(hits.begin(), hits.end(), [](int h) { return h == 1; }));
            if (lead_runs_items && threads == 1) CHECK(run_by_lead.load() > 0);  // alone, the lead interleaves
            if (!lead_runs_items) CHECK(run_by_lead.load() == 0);
        }
    for (int threads : {1, 2, 4}) {
        // A lead that throws: its error comes back (with one thread, before any item runs).
        std::atomic<int> ran{0};
        CHECK_THROWS_AS(parallel_for_beside(
                            200, threads, [](BesideItems&) { fail(errc::limit, "lead"); }, [&](std::int64_t) { ran.fetch_add(1); }),
                        error);
        if (threads == 1) CHECK(ran.load() == 0);
        // An item that throws on the lead's thread, with one thread: the error leaves at once.
        CHECK_THROWS_AS(parallel_for_beside(
                            10, threads, [](BesideItems& items) { items.run_below(10); }, [](std::int64_t i) { if (i == 0) fail(errc::corrupt, "item 0"); }),
                        error);
    }
}

TEST_CASE("concurrency: produce_in_order hands results on in order, within its limit, and stops at the first error", "[concurrency]") {
    for (const int threads : {1, 3, 8}) {
        INFO(threads << " workers");
        constexpr std::size_t count = 40, weight = 10, limit_bytes = 30;
        std::atomic<std::size_t> consumed{0}, furthest_ahead{0};
        std::vector<std::size_t> order;
        const auto weigh = [](const std::size_t&) { return weight; };
        produce_in_order<std::size_t>(
            count, threads, WaitingLimit<decltype(weigh)>{SIZE_MAX, limit_bytes, weigh},
            [&](std::size_t k) {
                if (k == 0) std::this_thread::sleep_for(std::chrono::milliseconds(20));  // the others run ahead into the limit
                const std::size_t ahead = k - consumed.load();
                for (std::size_t seen = furthest_ahead.load(); ahead > seen && !furthest_ahead.compare_exchange_weak(seen, ahead);) {
                }
                return k * k;
            },
            [&](std::size_t k, std::size_t& result) {
                order.push_back(result == k * k ? k : count);
                consumed.fetch_add(1);
            });
        std::vector<std::size_t> expected(count);
        for (std::size_t k = 0; k < count; ++k) expected[k] = k;
        CHECK(order == expected);
        // An item starts while fewer than 3 results wait (30 bytes of 10 each): at most 2 waiting,
        // the other workers' items in flight and the one being consumed lie between it and `consumed`.
        CHECK(furthest_ahead.load() <= std::size_t(threads) + 3);

        std::vector<std::size_t> before_error;
        const auto failing = [&] {
            produce_in_order<std::size_t>(
                count, threads, 4,
                [&](std::size_t k) {
                    if (k == 5) fail(errc::corrupt, "item 5");
                    return k;
                },
                [&](std::size_t k, std::size_t&) { before_error.push_back(k); });
        };
        CHECK_THROWS_AS(failing(), nwc::error);
        // In order, and never the failed item or one after it (how many came first depends on timing).
        CHECK(before_error.size() <= 5);
        for (std::size_t k = 0; k < before_error.size(); ++k) CHECK(before_error[k] == k);
    }
}

TEST_CASE("concurrency: a CdfTableSet's slot tables, first used from many threads at once, are built once", "[concurrency][cdf_table]") {
    Random random(5);
    std::vector<CdfTable> tables;
    for (int channel = 0; channel < 8; ++channel) {
        std::vector<double> probabilities(std::size_t(5 + channel), 0.0);
        for (double& p : probabilities) p = 0.1 + random.uniform();
        tables.push_back(CdfTable::from_probabilities(-2, probabilities, 1e-4, 14));
    }
    const CdfTableSet set(tables), copy = set;
    std::vector<const detail::RansDecodeTables*> seen(8, nullptr);
    std::vector<std::thread> threads;
    for (std::size_t t = 0; t < seen.size(); ++t)
        threads.emplace_back([&, t] { seen[t] = t % 2 ? &copy.decode_tables() : &set.decode_tables(); });
    for (std::thread& thread : threads) thread.join();
    for (const detail::RansDecodeTables* tables_seen : seen) CHECK(tables_seen == seen[0]);
    CHECK(seen[0]->slot_bins.size() == (std::size_t(8) << 14) + 2);
    CHECK(set.encode_tables().slot_bins.empty());
}

TEST_CASE("concurrency: a BufferPool lent to many threads at once never lends one buffer twice", "[concurrency][buffer_pool]") {
    BufferPool pool;
    constexpr int thread_count = 6, rounds = 200;
    const std::size_t page = std::size_t(::sysconf(_SC_PAGESIZE));
    std::atomic<int> clobbered{0};
    {
        std::vector<std::jthread> threads;
        for (int t = 0; t < thread_count; ++t)
            threads.emplace_back([&, t] {
                for (int round = 0; round < rounds; ++round) {
                    const std::size_t bytes = page * std::size_t(1 + (t + round) % 5);
                    BufferPool::Lease lease = pool.take(bytes);
                    const auto mark = std::byte(t * 31 + round);
                    std::memset(lease.data(), int(mark), bytes);
                    std::this_thread::yield();
                    for (std::size_t i = 0; i < bytes; i += 512)
                        if (lease.data()[i] != mark) clobbered.fetch_add(1);
                    if (round % 50 == 0) pool.lower_need(page * std::size_t(5 - round / 50));
                }
            });
    }
    CHECK(clobbered.load() == 0);
    CHECK(pool.idle_count() <= std::size_t(thread_count));
}

TEST_CASE("concurrency: one model read by many streamed compressions at once, each with its own workers", "[concurrency]") {
    const Fixture fixture;
    const auto path = fixture.folder / "model.safetensors";
    write_model_file(reliability::small_model(), path);
    const ModelFile model = load_model_file(path);
    const ModelReader reader = ModelReader::open(path);  // shared by every thread
    std::vector<std::vector<std::uint8_t>> expected;
    for (const std::string method : {"ecsq", "tcq", "lossless"}) expected.push_back(DefaultCodec(reliability::small_options(method)).compress_model(model).writer.serialize());
    std::atomic<int> mismatches{0};
    const int failures = run_threads([&](int t) {
        const std::size_t k = std::size_t(t) % expected.size();
        MethodOptions options = reliability::small_options(k == 0 ? "ecsq" : k == 1 ? "tcq" : "lossless");
        options.threads = 1 + t % 3;
        ContainerWriter writer;
        (void)DefaultCodec(options).compress_model_into(reader, writer);
        if (writer.serialize() != expected[k]) mismatches.fetch_add(1);
    });
    CHECK(failures == 0);
    CHECK(mismatches == 0);
}

}  // namespace nwc_test_concurrency
