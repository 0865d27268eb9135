// Opening a Llama model file whatever its format: llama2.c (.bin) or Hugging Face safetensors.
#pragma once

#include <filesystem>
#include <string>

#include "nwc/core/error.hpp"
#include "nwc/llm/hf_llama.hpp"
#include "nwc/llm/llama2c_file.hpp"
#include "nwc/llm/llama_weights.hpp"

namespace nwc::llm {

/// The formats read_llama_weights() recognizes.
enum class LlamaFileFormat { llama2c, huggingface };

/// Guesses the format from the path: a directory or a *.safetensors file is Hugging Face's layout
/// (config.json beside it), anything else a llama2.c file.
inline LlamaFileFormat detect_llama_format(const std::filesystem::path& path) {
    if (std::filesystem::is_directory(path) || path.extension() == ".safetensors") return LlamaFileFormat::huggingface;
    return LlamaFileFormat::llama2c;
}

inline const char* format_name(LlamaFileFormat format) { return format == LlamaFileFormat::llama2c ? "llama2.c" : "safetensors (HF)"; }

/// Reads the weights of a model in either format (see detect_llama_format).
inline LlamaWeights read_llama_weights(const std::filesystem::path& path) {
    if (detect_llama_format(path) == LlamaFileFormat::huggingface) return read_hf_llama(path);
    return read_llama2c(path).weights;
}

}  // namespace nwc::llm
