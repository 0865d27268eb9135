// <nwc/decode.hpp>: what reading and decoding a .nwc file needs: the container reader, the rANS
// and context-rANS decoders, the lossless float codec, the neural decoder half, de-normalization
// and Codec::decompress / decompress_model (which instantiate only the methods' decode paths).
// Write back with write_model_file (io/model_file.hpp). <nwc/nwc.hpp> includes everything.
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
#include "nwc/pipeline/pipeline_codec.hpp"
#include "nwc/quant/dechunk_kernels.hpp"
