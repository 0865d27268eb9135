// safetensors files in and out: SafetensorsFile (validated, memory-mapped, lazy) and
// SafetensorsWriter (deterministic, atomic). What is accepted: docs/format/safetensors.md.
#pragma once

#include "nwc/io/safetensors_reader.hpp"
#include "nwc/io/safetensors_writer.hpp"
