// The main of every Catch2 test program, compiled once: Catch2 v2's session, preceded by the
// requirement check of requirements.hpp (Catch2 v2 has no SKIP): cases whose [data] or [tool]
// requirement is not met are left out, and the program then exits 77 (skipped) instead of 0.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include <cstdio>
#include <set>
#include <string>
#include <vector>

#include "requirements.hpp"

namespace {
// Catch2 exits with the number of failed assertions: 77 of them must not read as "skipped".
int failure_status(int status) { return status == nwc::testing::exit_skipped ? 1 : status; }
}  // namespace

int main(int argc, char* argv[]) {
    Catch::Session session;
    if (const int status = session.applyCommandLine(argc, argv); status != 0) return status;
    Catch::ConfigData data = session.configData();
    // The unity test program (tests/CMakeLists.txt) holds every component: ctest selects one with
    // `-# [#test_<component>]`. Catch2 v2 adds the file-name tags only inside run(), after the
    // selection below would have found nothing, so they are added here, once.
    if (data.filenamesAsTags) {
        Catch::applyFilenamesAsTags(session.config());
        data.filenamesAsTags = false;
        session.useConfigData(data);
    }
    if (data.listTests || data.listTestNamesOnly || data.listTags || data.listReporters || data.showHelp) return failure_status(session.run());

    const std::vector<Catch::TestCase> selected =
        Catch::filterTests(Catch::getAllTestCasesSorted(session.config()), session.config().testSpec(), session.config());
    std::set<std::string> left_out;
    std::string reasons;
    for (const nwc::testing::Requirement& requirement : nwc::testing::requirements) {
        std::vector<std::string> needing;
        for (const Catch::TestCase& test_case : selected)
            for (const std::string& tag : test_case.lcaseTags)
                if (tag == requirement.tag) needing.push_back(test_case.name);
        if (needing.empty()) continue;
        const std::string missing = requirement.missing();
        if (missing.empty()) continue;
        left_out.insert(needing.begin(), needing.end());
        // Several command-line specs are ANDed by Catch2 v2, so this narrows the user's selection.
        data.testsOrTags.push_back("~[" + std::string(requirement.tag) + "]");
        reasons += "  [" + std::string(requirement.tag) + "]: " + missing + "\n";
    }
    if (left_out.empty()) return failure_status(session.run());

    int status = 0;
    if (left_out.size() < selected.size()) {
        session.useConfigData(data);
        status = session.run();
    }
    std::printf("SKIPPED %zu of %zu test cases (exit code %d):\n%s", left_out.size(), selected.size(), nwc::testing::exit_skipped, reasons.c_str());
    for (const std::string& name : left_out) std::printf("  skipped: %s\n", name.c_str());
    return status != 0 ? failure_status(status) : nwc::testing::exit_skipped;
}
