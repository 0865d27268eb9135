// <nwc/llm.hpp>: Llama models: weights, tokenizer, forward pass, perplexity, calibration Hessians,
// sensitivities, block fine-tuning and the sequential (calibrated) compression driver.
#pragma once

#include "nwc/compress.hpp"

#include "nwc/llm/block_finetune.hpp"
#include "nwc/llm/calibration.hpp"
#include "nwc/llm/llama_model.hpp"
#include "nwc/llm/llama_weights.hpp"
#include "nwc/llm/perplexity.hpp"
#include "nwc/llm/sensitivity.hpp"
#include "nwc/llm/sequential_compression.hpp"
#include "nwc/llm/tokenizer.hpp"
#include "nwc/pipeline/sequential_pipeline.hpp"
