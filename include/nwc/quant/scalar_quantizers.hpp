// The classical quantizer policies for LDLQ (quantizer_concept.hpp): RoundToNearest (llama.cpp-style
// groups; LDLQ + RoundToNearest = GPTQ) and EntropyCodedScalar (uniform step, entropy-coded
// symbols). Each lives in its own header; this one includes both.
#pragma once

#include "nwc/quant/entropy_coded_scalar.hpp"
#include "nwc/quant/quantizer_concept.hpp"
#include "nwc/quant/round_to_nearest.hpp"
