// The fixed CDF table sets fuzz_rans decodes with, shared with make_seeds so the seed streams
// carry their checksums. The first input byte picks one (byte % count).
#pragma once

#include <vector>

#include "nwc/entropy/cdf_table_set.hpp"

namespace nwc::fuzz {

inline const std::vector<CdfTableSet>& rans_table_sets() {
    static const std::vector<CdfTableSet> sets = [] {
        std::vector<CdfTableSet> result;
        // One uniform channel: many words per symbol, few escapes.
        result.emplace_back(std::vector<CdfTable>{CdfTable::uniform(-8, 16, 12)});
        // Skewed channels with escapes (long escape codes, few words).
        const std::vector<double> skewed{0.9, 0.05, 0.03}, flat{0.3, 0.3, 0.2, 0.1};
        result.emplace_back(std::vector<CdfTable>{CdfTable::from_probabilities(-1, skewed, 0.02, 14),
                                                  CdfTable::from_probabilities(0, flat, 0.1, 14)});
        // Four channels of precision 16 (the codec's), one with a single-value support.
        const std::vector<double> one{1.0};
        result.emplace_back(std::vector<CdfTable>{CdfTable::uniform(-3, 7, 16), CdfTable::from_probabilities(0, one, 1e-3, 16),
                                                  CdfTable::from_probabilities(-2, skewed, 0.05, 16), CdfTable::uniform(0, 200, 16)});
        return result;
    }();
    return sets;
}

}  // namespace nwc::fuzz
