// nwc: neural weight compression for language models.
#pragma once

#define NWC_VERSION_MAJOR 0
#define NWC_VERSION_MINOR 1
#define NWC_VERSION_PATCH 0
#define NWC_VERSION_STRING "0.1.0"

namespace nwc {
/// The library's version, as major * 10000 + minor * 100 + patch.
inline constexpr int version = NWC_VERSION_MAJOR * 10000 + NWC_VERSION_MINOR * 100 + NWC_VERSION_PATCH;
inline constexpr const char* version_string = NWC_VERSION_STRING;
}  // namespace nwc
