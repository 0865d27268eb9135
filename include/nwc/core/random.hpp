// Deterministic random numbers.
//
// std::normal_distribution and friends differ between standard libraries, which would make
// "same seed, same file" false across machines. These generators are fully specified: SplitMix64
// for seeding and streams, and a Box-Muller normal built on it. `Random::split(k)` gives an
// independent stream per thread or per work item, so results do not depend on thread count.
#pragma once

#include <cmath>
#include <cstdint>
#include <numbers>

namespace nwc {

/// SplitMix64 (Steele, Lea, Flood 2014): tiny, fast, passes BigCrush, fully portable.
class Random {
public:
    explicit Random(std::uint64_t seed = 0x6E7763ull) : m_state(seed) {}

    std::uint64_t next_u64() noexcept {
        std::uint64_t z = (m_state += 0x9E3779B97F4A7C15ull);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        return z ^ (z >> 31);
    }
    std::uint32_t next_u32() noexcept { return std::uint32_t(next_u64() >> 32); }
    /// Uniform in [0, bound), bound > 0 (modulo; the bias below 2^-40 for our bounds is irrelevant).
    std::uint64_t below(std::uint64_t bound) noexcept { return next_u64() % bound; }
    /// Uniform in [0, 1) with 24 random bits, exactly representable as float.
    float uniform() noexcept { return float(next_u64() >> 40) * 0x1.0p-24f; }
    /// Uniform in [low, high).
    float uniform(float low, float high) noexcept { return low + (high - low) * uniform(); }
    /// Standard normal by Box-Muller, computed in double for portability of the rounding.
    float normal() noexcept {
        if (m_has_spare) {
            m_has_spare = false;
            return m_spare;
        }
        const double u1 = (double(next_u64() >> 11) + 1.0) * 0x1.0p-53;  // (0, 1]
        const double u2 = double(next_u64() >> 11) * 0x1.0p-53;
        const double radius = std::sqrt(-2.0 * std::log(u1));
        const double angle = 2.0 * std::numbers::pi * u2;
        m_spare = float(radius * std::sin(angle));
        m_has_spare = true;
        return float(radius * std::cos(angle));
    }
    /// An independent generator for sub-stream `index` (per thread, per tensor, per step).
    Random split(std::uint64_t index) const noexcept {
        Random mixer(m_state ^ (index * 0xD1B54A32D192ED03ull + 0x8CB92BA72F3D8DD7ull));
        return Random(mixer.next_u64());
    }

private:
    std::uint64_t m_state;
    float m_spare = 0.0f;
    bool m_has_spare = false;
};

}  // namespace nwc
