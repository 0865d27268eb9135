// Many threads decoding the same and different .nwc files at once (shared readers whose CRCs are
// verified lazily by whichever thread comes first, reader copies, readers of their own, nested
// thread pools) must give exactly what one thread gives. Built and run in the ThreadSanitizer
// tree too (scripts/test.sh: label tsan), where a data race fails the test.
// nwc-ctest-labels: tsan
#include <catch2/catch.hpp>

#include <unistd.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <thread>
#include <vector>

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

}  // namespace nwc_test_concurrency
