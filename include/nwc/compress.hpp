// <nwc/compress.hpp>: compressing models and tensors: the composed Codec with its methods, rate
// control and sensitivity-driven allocation, the quantizers (RTN, GPTQ/LDLQ, ECSQ, trellis), the
// container writer and model files. Decoding comes with it (<nwc/decode.hpp>). Calibration and
// sequential coding of Llama models are in <nwc/llm.hpp>; training codecs in <nwc/train.hpp>.
#pragma once

#include "nwc/decode.hpp"

#include "nwc/codec/codec_file.hpp"
#include "nwc/io/container_writer.hpp"
#include "nwc/io/model_reader.hpp"
#include "nwc/io/safetensors_writer.hpp"
#include "nwc/pipeline/allocation.hpp"
#include "nwc/pipeline/pipeline.hpp"
#include "nwc/pipeline/rate_control.hpp"
#include "nwc/quant/entropy_coded_scalar.hpp"
#include "nwc/quant/ldlq_compensator.hpp"
#include "nwc/quant/round_to_nearest.hpp"
#include "nwc/quant/scalar_quantizers.hpp"
#include "nwc/quant/trellis_quantizer.hpp"
