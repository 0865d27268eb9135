// nwc::TrainingCorpus: normalized chunks of real weight matrices for training and evaluating codecs.
//
// Every 2-D tensor of the given safetensors files is normalized and chunked exactly as the
// compressor does it (nwc::Chunker, per-column fp16 scales, chunks of `chunk_size` down a column).
// Tensors the hold-out rule names (HoldoutRule: any predicate on the name; the CLI's --holdout
// builds one from a regular expression, so the library itself needs no <regex>) are kept apart,
// whole, for rate-distortion evaluation and never contribute a training chunk. Files are
// identified in the provenance by name, size and SHA-256. The evaluation model (stories260K) is refused outright, so that its perplexity
// keeps measuring how a codec generalizes to weights it never saw.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "nwc/codec/sha256.hpp"
#include "nwc/core/error.hpp"
#include "nwc/core/thread_pool.hpp"
#include "nwc/io/safetensors_reader.hpp"
#include "nwc/quant/chunker.hpp"

namespace nwc {

/// The hold-out set `nwc train` uses when none is given (an ECMAScript regular expression, searched
/// anywhere in a tensor name): GPT-Neo-125M layer 11's q/k/v/out projections and four MT3 decoder
/// layer-7 matrices of three shapes.
inline constexpr const char* default_holdout_regex =
    R"(^transformer\.h\.11\.attn\.attention\.(q|k|v|out)_proj\.weight$|^decoder\.layers_7\.(self_attention\.(query|out)|mlp\.(wi_0|wo))\.weight$)";

/// Which matrices a corpus keeps apart: those whose name `matches` (empty: none). `description`
/// says what the rule is (the regular expression it was built from, say) in the codec's provenance.
struct HoldoutRule {
    std::string description;
    std::function<bool(std::string_view name)> matches;

    bool holds_out(std::string_view name) const { return matches && matches(name); }
};

/// One data file of a corpus.
struct CorpusFile {
    std::string path;
    std::uint64_t size = 0;
    std::string sha256;
    int training_matrices = 0;
    int held_out_matrices = 0;
};

/// A held-out matrix, normalized and chunked (chunks [chunk][chunk_size], Chunker layout).
struct HeldOutMatrix {
    std::string name;
    std::int64_t rows = 0, cols = 0;
    std::vector<float> chunks;
    std::int64_t chunk_count() const noexcept { return std::int64_t(chunks.size()) / std::max<std::int64_t>(1, chunk_size); }
    int chunk_size = 16;
};

/// Training chunks plus held-out matrices.
class TrainingCorpus {
public:
    /// Loads every 2-D tensor (both sides >= 1) of `files`; the names `holdout` holds out are kept
    /// apart. Throws nwc::error on unreadable files, on a stories260K file, and when no training
    /// chunk remains. With `keep_training_chunks` false only the held-out matrices are kept (for
    /// evaluation tools).
    static TrainingCorpus load(const std::vector<std::string>& files, const HoldoutRule& holdout = {}, int chunk_size = 16,
                               bool keep_training_chunks = true) {
        TrainingCorpus corpus;
        corpus.m_chunk_size = chunk_size;
        corpus.m_holdout_description = holdout.description;
        const Chunker chunker(ChunkerOptions{.chunk_size = chunk_size});
        require(!files.empty(), errc::invalid_argument, "codec training: no data files given");
        for (const std::string& path : files) {
            const std::string base = std::filesystem::path(path).filename().string();
            require(base.find("stories260K") == std::string::npos, errc::invalid_argument, "codec training: '", path,
                    "' is the evaluation model (stories260K); codecs must never be trained on it");
            const SafetensorsFile file = SafetensorsFile::open(path);
            CorpusFile entry{path, file.file_size(), detail::sha256_hex(file.bytes())};
            for (const SafetensorsTensorInfo& info : file.tensors()) {
                if (info.shape.rank() != 2 || info.shape.numel() == 0) continue;
                const Tensor<float> weights = file.read_float32(info.name);
                ChunkedWeights chunked = chunker.split(weights.view());
                if (holdout.holds_out(info.name)) {
                    corpus.m_held_out.push_back({info.name, info.shape[0], info.shape[1], std::move(chunked.chunks), chunk_size});
                    ++entry.held_out_matrices;
                } else if (keep_training_chunks) {
                    corpus.m_chunks.insert(corpus.m_chunks.end(), chunked.chunks.begin(), chunked.chunks.end());
                    ++entry.training_matrices;
                } else {
                    ++entry.training_matrices;
                }
            }
            corpus.m_files.push_back(std::move(entry));
        }
        if (!keep_training_chunks) return corpus;
        require(!corpus.m_chunks.empty(), errc::invalid_argument, "codec training: the files hold no 2-D tensor outside the hold-out set");
        double squares = 0.0;
        for (float value : corpus.m_chunks) squares += double(value) * double(value);
        corpus.m_variance = squares / double(corpus.m_chunks.size());
        return corpus;
    }

    /// A corpus from chunks already in memory (tests): `chunks` [n][chunk_size].
    static TrainingCorpus from_chunks(std::vector<float> chunks, int chunk_size, std::vector<HeldOutMatrix> held_out = {}) {
        TrainingCorpus corpus;
        require(!chunks.empty() && chunks.size() % std::size_t(chunk_size) == 0, errc::invalid_argument,
                "TrainingCorpus: ", chunks.size(), " values are not a whole number of ", chunk_size, "-value chunks");
        corpus.m_chunk_size = chunk_size;
        corpus.m_chunks = std::move(chunks);
        corpus.m_held_out = std::move(held_out);
        double squares = 0.0;
        for (float value : corpus.m_chunks) squares += double(value) * double(value);
        corpus.m_variance = squares / double(corpus.m_chunks.size());
        return corpus;
    }

    int chunk_size() const noexcept { return m_chunk_size; }
    std::int64_t chunk_count() const noexcept { return std::int64_t(m_chunks.size()) / m_chunk_size; }
    /// Training chunk `index`: chunk_size values.
    const float* chunk(std::int64_t index) const noexcept { return m_chunks.data() + index * m_chunk_size; }
    /// Mean square of the training values (sigma^2 of the loss; about 1 after normalization).
    double variance() const noexcept { return m_variance; }
    const std::vector<HeldOutMatrix>& held_out() const noexcept { return m_held_out; }
    const std::vector<CorpusFile>& files() const noexcept { return m_files; }
    /// The hold-out rule's description (HoldoutRule::description).
    const std::string& holdout_description() const noexcept { return m_holdout_description; }

private:
    int m_chunk_size = 16;
    std::vector<float> m_chunks;
    std::vector<HeldOutMatrix> m_held_out;
    std::vector<CorpusFile> m_files;
    std::string m_holdout_description;
    double m_variance = 1.0;
};

}  // namespace nwc
