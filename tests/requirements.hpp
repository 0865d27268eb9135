// What a test case needs from outside its program, and how a program that could not run every
// case says so: exit code 77 (tests/CMakeLists.txt sets SKIP_RETURN_CODE 77, so ctest counts the
// program as skipped, never as passed).
//
// A test case declares what it needs with a tag:
//   [data]  reads the real models and text of the data folder: every file of `data_files` must be
//           there. The folder is $NWC_DATA_DIR when that is set, else CMake's NWC_DATA_DIR.
//   [tool]  runs the `nwc` program built beside the tests (build/tests/.. -> build/tools/nwc); the
//           sanitizer trees never build it.
// catch_main.cpp checks every requirement before running anything. When one is not met it runs the
// cases that do not need it, prints which cases it left out and why, and exits 77 if all that ran
// passed (a failure exits non-zero as always, and never with 77).
#pragma once

#include <array>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <string_view>

#ifndef NWC_DATA_DIR
#define NWC_DATA_DIR "../shared/data"
#endif

namespace nwc::testing {

/// The exit code ctest reads as "skipped" (SKIP_RETURN_CODE in tests/CMakeLists.txt).
inline constexpr int exit_skipped = 77;

/// The folder of the real data: $NWC_DATA_DIR when set and not empty, else the configured one.
inline std::filesystem::path data_dir() {
    const char* from_environment = std::getenv("NWC_DATA_DIR");
    return from_environment != nullptr && *from_environment != '\0' ? std::filesystem::path(from_environment) : std::filesystem::path(NWC_DATA_DIR);
}

inline std::filesystem::path data_path(std::string_view name) { return data_dir() / name; }

/// The files [data] cases read (the data folder's README describes them).
inline constexpr std::array<std::string_view, 6> data_files{"stories260K.bin",      "tok512.bin",      "tinystories_calib.txt",
                                                             "tinystories_eval.txt", "mt3.safetensors", "gptneo125m_attn.safetensors"};

/// The `nwc` program: build/tools/nwc for build/tests/nwc_test_*.
inline std::filesystem::path nwc_program() {
    return std::filesystem::read_symlink("/proc/self/exe").parent_path().parent_path() / "tools" / "nwc";
}

/// One requirement: the tag of the cases that need it, and what is missing ("" when it is met).
struct Requirement {
    std::string_view tag;
    std::string (*missing)();
};

inline std::string missing_data() {
    std::string missing;
    for (const std::string_view name : data_files)
        if (!std::filesystem::is_regular_file(data_path(name))) missing += (missing.empty() ? "" : ", ") + std::string(name);
    return missing.empty() ? missing : "the data folder '" + data_dir().string() + "' (NWC_DATA_DIR) lacks " + missing;
}

inline std::string missing_tool() {
    const std::filesystem::path program = nwc_program();
    return std::filesystem::is_regular_file(program) ? std::string() : "the nwc program was not built ('" + program.string() + "' not found)";
}

inline constexpr std::array<Requirement, 2> requirements{{{"data", &missing_data}, {"tool", &missing_tool}}};

}  // namespace nwc::testing
