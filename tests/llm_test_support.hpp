// Shared helpers of the llm tests: data paths, a random Llama model, build-type detection.
#pragma once

#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <string>
#include <vector>

#include "nwc/core/file_io.hpp"
#include "nwc/core/random.hpp"
#include "nwc/llm/llama_weights.hpp"
#include "requirements.hpp"

namespace nwc::llm::testing {

using nwc::testing::data_path;

inline std::string read_text(const std::string& name) {
    const std::vector<std::uint8_t> bytes = read_file(data_path(name));
    return std::string(bytes.begin(), bytes.end());
}

/// True in optimized builds without sanitizers, where the full-size checks fit the time budget.
#if defined(__SANITIZE_ADDRESS__) || !defined(NDEBUG)
inline constexpr bool full_size_checks = false;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
inline constexpr bool full_size_checks = false;
#else
inline constexpr bool full_size_checks = true;
#endif
#else
inline constexpr bool full_size_checks = true;
#endif

/// A small grouped-query config: 2 layers of width 32, 4 heads over 2 KV heads, 300 tokens.
inline LlamaConfig small_llama_config() {
    LlamaConfig config;
    config.dim = 32;
    config.hidden_dim = 56;
    config.n_layers = 2;
    config.n_heads = 4;
    config.n_kv_heads = 2;
    config.vocab_size = 300;
    config.seq_len = 48;
    return config;
}

/// A small model with random weights (norm scales near 1, matrices ~ N(0, 1/in)).
inline LlamaWeights random_llama_weights(const LlamaConfig& config, std::uint64_t seed) {
    LlamaWeights weights = LlamaWeights::zeros(config);
    Random random(seed);
    weights.for_each_tensor([&](const std::string&, Tensor<float>& tensor, const Shape& shape) {
        const bool norm = shape.rank() == 1;
        const float scale = norm ? 0.1f : 1.0f / std::sqrt(float(shape.cols()));
        for (auto& value : tensor.values()) value = (norm ? 1.0f : 0.0f) + scale * random.normal();
    });
    return weights;
}

/// A temporary directory removed at the end of the test.
class TemporaryDirectory {
public:
    explicit TemporaryDirectory(const std::string& tag) {
        m_path = std::filesystem::temp_directory_path() / ("nwc_llm_" + tag + "_" + std::to_string(::getpid()));
        std::filesystem::remove_all(m_path);
        std::filesystem::create_directories(m_path);
    }
    ~TemporaryDirectory() {
        std::error_code ignored;
        std::filesystem::remove_all(m_path, ignored);
    }
    const std::filesystem::path& path() const noexcept { return m_path; }

private:
    std::filesystem::path m_path;
};

}  // namespace nwc::llm::testing
