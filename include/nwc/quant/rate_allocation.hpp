// nwc::allocate_rate: one operating point per tensor, minimizing the total estimated loss with the
// total bytes within a budget (a multiple-choice knapsack), for any method whose rate knob gives a
// curve of (bytes, loss) points per tensor: ecsq steps on a grid, rtn / gptq bit widths, nwc alpha.
//
// Read me first:
// - Stage 1, equal slope (Lagrangian): on each tensor's LOWER CONVEX HULL (the points no mixture of
//   two others beats), every hull segment has a slope = loss saved per extra byte. Every tensor
//   starts at its cheapest point; segments are taken in order of decreasing slope while they fit.
//   Stopped at the first segment that does not fit, this is the exact minimizer of
//   loss + lambda bytes for lambda = that segment's slope (`RateAllocation::slope`), so optimal
//   for the bytes it uses: the allocation the high-rate theory calls reverse water-filling.
// - Stage 2, greedy fill: the walk continues past the segment that did not fit, skipping it and the
//   rest of its tensor's hull and taking every later (flatter) segment that still fits; then any
//   single-tensor move to ANY of its points (hull or not) that fits and lowers the loss, the largest
//   saving first, until none is left.
// - Stage 3, exchanges: one tensor steps down so that another can step up, when the pair lowers
//   the loss (the best pair first), at most `max_exchanges` times. Each costs (points of all
//   tensors)^2 comparisons: 4e6 for 36 tensors x 57 steps, 2e8 for 250 x 57.
// - Guarantees (tests/test_rate_allocation.cpp checks them against brute force): the bytes never
//   exceed the budget (exactly, when bytes are integers as real byte counts are); the result is
//   never worse than stage 1, and stage 1 is within slope x (budget - its bytes) of the true
//   optimum (the Lagrangian dual bound), which is at most the loss saving of the one segment that
//   did not fit; at a budget equal to the bytes of an equal-slope solution the result is optimal.
//   Stage 1's loss never rises with the budget; stages 2-3 are knapsack heuristics and may, rarely,
//   give a slightly higher loss for a slightly larger budget (never by more than the dual gap).
// - Units are the caller's: bytes may be bits or bytes, loss any additive estimate (e.g. the change
//   of calibration NLL predicted from sensitivities, llm/sensitivity.hpp). Ties are broken by the
//   lower tensor index and the lower point index, so the result is deterministic.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <numeric>
#include <span>
#include <vector>

#include "nwc/core/config.hpp"
#include "nwc/core/error.hpp"

namespace nwc {

/// One choice for one tensor: what it costs and what it is estimated to lose.
struct OperatingPoint {
    double bytes = 0.0;  ///< cost (any unit the budget shares)
    double loss = 0.0;   ///< estimated loss (any additive unit)
};

/// The points of one tensor (any order; duplicates and dominated points are fine).
using OperatingCurve = std::vector<OperatingPoint>;

/// What allocate_rate chose.
struct RateAllocation {
    std::vector<std::size_t> choice;  ///< per tensor, the index of its chosen point in its curve
    double bytes = 0.0;               ///< sum of the chosen points' bytes
    double loss = 0.0;                ///< sum of the chosen points' losses
    /// Loss saved per byte by the first hull segment that did not fit (the equal-slope stage's
    /// Lagrange multiplier); 0 when every hull was climbed to its end.
    double slope = 0.0;
    double equal_slope_bytes = 0.0;  ///< bytes after stage 1 alone
    double equal_slope_loss = 0.0;   ///< loss after stage 1 alone
    int exchanges = 0;               ///< stage-3 exchanges made
    bool feasible = true;            ///< false: even the cheapest points exceed the budget (choice = cheapest)
};

namespace detail {
inline void check_curves(std::span<const OperatingCurve> curves, const char* context) {
    for (std::size_t i = 0; i < curves.size(); ++i) {
        require(!curves[i].empty(), errc::invalid_argument, context, ": tensor ", i, " has no operating points");
        for (std::size_t k = 0; k < curves[i].size(); ++k)
            require(std::isfinite(curves[i][k].bytes) && std::isfinite(curves[i][k].loss), errc::invalid_argument, context, ": point ", k,
                    " of tensor ", i, " is not finite (bytes ", curves[i][k].bytes, ", loss ", curves[i][k].loss, ")");
    }
}
}  // namespace detail

/// Indices of the lower convex hull of `points`, by increasing bytes and strictly decreasing loss:
/// the first is the cheapest point (the lowest loss among equally cheap ones), and the loss saved
/// per byte strictly decreases from one segment to the next.
inline std::vector<std::size_t> lower_convex_hull(std::span<const OperatingPoint> points) {
    std::vector<std::size_t> order(points.size());
    std::iota(order.begin(), order.end(), std::size_t(0));
    std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
        return points[a].bytes != points[b].bytes ? points[a].bytes < points[b].bytes : points[a].loss < points[b].loss;
    });
    std::vector<std::size_t> hull;
    for (std::size_t index : order) {
        const OperatingPoint& p = points[index];
        if (!hull.empty() && p.loss >= points[hull.back()].loss) continue;  // dominated: costs no less, loses no less
        // Pop the last point while it lies on or above the chord from the one before it to p.
        while (hull.size() >= 2) {
            const OperatingPoint& a = points[hull[hull.size() - 2]];
            const OperatingPoint& b = points[hull.back()];
            if ((a.loss - b.loss) * (p.bytes - b.bytes) > (b.loss - p.loss) * (b.bytes - a.bytes)) break;  // slope a->b steeper than b->p
            hull.pop_back();
        }
        hull.push_back(index);
    }
    return hull;
}

/// Per tensor, the point minimizing loss + lambda x bytes (lambda >= 0; ties: the cheaper, then
/// the lower index): the equal-slope allocation at a given slope.
inline std::vector<std::size_t> choose_at_slope(std::span<const OperatingCurve> curves, double lambda) {
    detail::check_curves(curves, "choose_at_slope");
    require(std::isfinite(lambda) && lambda >= 0.0, errc::invalid_argument, "choose_at_slope: slope ", lambda, " must be finite and >= 0");
    std::vector<std::size_t> choice(curves.size());
    for (std::size_t i = 0; i < curves.size(); ++i) {
        std::size_t best = 0;
        for (std::size_t k = 1; k < curves[i].size(); ++k) {
            const OperatingPoint& p = curves[i][k];
            const OperatingPoint& q = curves[i][best];
            const double cost = p.loss + lambda * p.bytes, best_cost = q.loss + lambda * q.bytes;
            if (cost < best_cost || (cost == best_cost && p.bytes < q.bytes)) best = k;
        }
        choice[i] = best;
    }
    return choice;
}

/// Chooses one point per curve with total bytes <= `budget` and the least total loss it can find
/// (see the header comment for the two stages and their guarantees). Throws errc::invalid_argument
/// for an empty curve, a non-finite value or a non-finite budget.
inline RateAllocation allocate_rate(std::span<const OperatingCurve> curves, double budget) {
    detail::check_curves(curves, "allocate_rate");
    require(std::isfinite(budget), errc::invalid_argument, "allocate_rate: budget ", budget, " is not finite");
    const std::size_t count = curves.size();
    std::vector<std::vector<std::size_t>> hulls(count);
    for (std::size_t i = 0; i < count; ++i) hulls[i] = lower_convex_hull(curves[i]);

    RateAllocation result;
    result.choice.resize(count);
    for (std::size_t i = 0; i < count; ++i) {
        result.choice[i] = hulls[i].front();
        result.bytes += curves[i][result.choice[i]].bytes;
        result.loss += curves[i][result.choice[i]].loss;
    }
    if (result.bytes > budget) {
        result.feasible = false;
        result.equal_slope_bytes = result.bytes, result.equal_slope_loss = result.loss;
        return result;
    }

    // Stage 1 + the first half of stage 2: hull segments by decreasing slope.
    struct Segment {
        std::size_t tensor, position;  // hull position reached by taking it (>= 1)
        double bytes, saving;
    };
    std::vector<Segment> segments;
    for (std::size_t i = 0; i < count; ++i)
        for (std::size_t k = 1; k < hulls[i].size(); ++k) {
            const OperatingPoint& from = curves[i][hulls[i][k - 1]];
            const OperatingPoint& to = curves[i][hulls[i][k]];
            segments.push_back({i, k, to.bytes - from.bytes, from.loss - to.loss});
        }
    // Slopes compared by cross-multiplication (bytes > 0, saving > 0 on a hull); stable: ties keep
    // tensor order, and within a tensor the strict convexity keeps hull order.
    std::stable_sort(segments.begin(), segments.end(),
                     [](const Segment& a, const Segment& b) { return a.saving * b.bytes > b.saving * a.bytes; });
    std::vector<std::size_t> position(count, 0);
    std::vector<bool> blocked(count, false);
    bool in_equal_slope_stage = true;
    for (const Segment& segment : segments) {
        if (blocked[segment.tensor]) continue;
        NWC_ASSERT(position[segment.tensor] + 1 == segment.position);
        if (result.bytes + segment.bytes <= budget) {
            position[segment.tensor] = segment.position;
            result.bytes += segment.bytes;
            result.loss -= segment.saving;
            result.choice[segment.tensor] = hulls[segment.tensor][segment.position];
            continue;
        }
        if (in_equal_slope_stage) {
            in_equal_slope_stage = false;
            result.slope = segment.saving / segment.bytes;
            result.equal_slope_bytes = result.bytes, result.equal_slope_loss = result.loss;
        }
        blocked[segment.tensor] = true;
    }
    if (in_equal_slope_stage) result.equal_slope_bytes = result.bytes, result.equal_slope_loss = result.loss;

    // Second half of stage 2: single moves to any point that fits, the largest saving first.
    for (;;) {
        double best_saving = 0.0;
        std::size_t best_tensor = count, best_point = 0;
        for (std::size_t i = 0; i < count; ++i) {
            const OperatingPoint& current = curves[i][result.choice[i]];
            for (std::size_t k = 0; k < curves[i].size(); ++k) {
                const OperatingPoint& p = curves[i][k];
                const double saving = current.loss - p.loss;
                if (saving > best_saving && result.bytes - current.bytes + p.bytes <= budget) best_saving = saving, best_tensor = i, best_point = k;
            }
        }
        if (best_tensor == count) break;
        result.bytes += curves[best_tensor][best_point].bytes - curves[best_tensor][result.choice[best_tensor]].bytes;
        result.loss -= best_saving;
        result.choice[best_tensor] = best_point;
    }
    // Stage 3, exchanges: one tensor steps down to any cheaper point (or stays) so that another can
    // step up to any point the freed bytes pay for, when that lowers the loss; the best first.
    constexpr int max_exchanges = 16;  // a bound on the cost; each one must lower the loss
    for (int exchange = 0; exchange < max_exchanges; ++exchange) {
        double best_saving = 1e-12 * std::max(1.0, std::fabs(result.loss));  // strictly better only
        std::size_t down_tensor = count, down_point = 0, up_tensor = 0, up_point = 0;
        const double slack = budget - result.bytes;
        for (std::size_t i = 0; i < count; ++i) {
            const OperatingPoint& from_i = curves[i][result.choice[i]];
            for (std::size_t k = 0; k < curves[i].size(); ++k) {
                const OperatingPoint& to_i = curves[i][k];
                if (k != result.choice[i] && to_i.bytes >= from_i.bytes) continue;  // staying put: a single move of j
                const double freed = slack + from_i.bytes - to_i.bytes, cost = to_i.loss - from_i.loss;
                for (std::size_t j = 0; j < count; ++j) {
                    if (j == i) continue;
                    const OperatingPoint& from_j = curves[j][result.choice[j]];
                    for (std::size_t l = 0; l < curves[j].size(); ++l) {
                        const OperatingPoint& to_j = curves[j][l];
                        const double saving = from_j.loss - to_j.loss - cost;
                        if (saving > best_saving && to_j.bytes - from_j.bytes <= freed)
                            best_saving = saving, down_tensor = i, down_point = k, up_tensor = j, up_point = l;
                    }
                }
            }
        }
        if (down_tensor == count) break;
        result.bytes += curves[down_tensor][down_point].bytes - curves[down_tensor][result.choice[down_tensor]].bytes;
        result.bytes += curves[up_tensor][up_point].bytes - curves[up_tensor][result.choice[up_tensor]].bytes;
        result.choice[down_tensor] = down_point;
        result.choice[up_tensor] = up_point;
        ++result.exchanges;
    }
    // Recompute the sums from the choice: no drift from the running updates.
    result.bytes = result.loss = 0.0;
    for (std::size_t i = 0; i < count; ++i) result.bytes += curves[i][result.choice[i]].bytes, result.loss += curves[i][result.choice[i]].loss;
    return result;
}

}  // namespace nwc
