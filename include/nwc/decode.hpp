// <nwc/decode.hpp>: what reading and decoding a .nwc file needs: the container reader, the rANS
// and context-rANS decoders, the lossless float codec, the neural decoder half, de-normalization,
// the built-in methods' decoding halves (BuiltinDecodings) and nwc::decompress_tensor /
// nwc::decompress_model (pipeline/model_decoding.hpp). No encoder is included: nwc::Codec (whose
// decompress* are the same functions) comes with <nwc/compress.hpp>. Write back with
// write_model_file (io/model_file.hpp). <nwc/nwc.hpp> includes everything.
#pragma once

#include "nwc/version.hpp"

#include "nwc/core/backend.hpp"
#include "nwc/core/error.hpp"
#include "nwc/core/tensor.hpp"
#include "nwc/codec/codec.hpp"
#include "nwc/codec/codec_reference.hpp"
#include "nwc/entropy/context_rans.hpp"
#include "nwc/entropy/lossless_float.hpp"
#include "nwc/entropy/range_coder.hpp"
#include "nwc/io/container_reader.hpp"
#include "nwc/io/model_file.hpp"
#include "nwc/pipeline/builtin_decodings.hpp"
#include "nwc/pipeline/model_decoding.hpp"
#include "nwc/quant/dechunk_kernels.hpp"
