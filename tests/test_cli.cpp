// The `nwc` program's compress / decompress / inspect commands, driven as a user drives them:
// exit codes, --help, --json, atomic outputs. The binary is found next to the test program
// (build/tests/nwc_test_cli -> build/tools/nwc); the test is skipped (exit 77, tests/requirements.hpp)
// when it was not built.
// nwc-ctest-labels: data
#include <catch2/catch.hpp>

#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <string>

#include <nlohmann/json.hpp>

#include "nwc/core/file_io.hpp"
#include "nwc/io/llama2c_file.hpp"
#include "nwc/io/safetensors.hpp"
#include "requirements.hpp"

namespace {

std::filesystem::path data(const std::string& name) { return nwc::testing::data_path(name); }

std::filesystem::path program() { return nwc::testing::nwc_program(); }

struct Result {
    int status = -1;
    std::string out;
};

/// Runs `nwc ARGS` (stderr to a file) and returns the exit status and stdout.
Result run(const std::string& arguments) {
    const std::string command = "'" + program().string() + "' " + arguments + " 2>>" + (std::filesystem::temp_directory_path() / "nwc_cli_test.err").string();
    Result result;
    FILE* pipe = ::popen(command.c_str(), "r");
    REQUIRE(pipe != nullptr);
    std::array<char, 4096> buffer{};
    for (std::size_t count; (count = std::fread(buffer.data(), 1, buffer.size(), pipe)) > 0;) result.out.append(buffer.data(), count);
    const int status = ::pclose(pipe);
    result.status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    return result;
}

struct TempDir {
    std::filesystem::path path = std::filesystem::temp_directory_path() / ("nwc_cli_test_" + std::to_string(::getpid()));
    TempDir() { std::filesystem::create_directories(path); }
    ~TempDir() {
        std::error_code ignored;
        std::filesystem::remove_all(path, ignored);
    }
    std::string operator/(const std::string& name) const { return "'" + (path / name).string() + "'"; }
};

}  // namespace

TEST_CASE("nwc compress, inspect and decompress as a user runs them", "[cli][data][tool]") {
    const TempDir temp;
    const std::string model = "'" + data("stories260K.bin").string() + "'";

    SECTION("help and usage errors") {
        for (const char* command : {"compress", "decompress", "inspect"}) {
            const Result help = run(std::string(command) + " --help");
            CHECK(help.status == 0);
            CHECK(help.out.find("usage: nwc ") != std::string::npos);
            CHECK(help.out.find("exit codes") != std::string::npos);
            CHECK(run(std::string(command)).status == 2);
            CHECK(run(std::string(command) + " x --no-such-option").status == 2);
        }
        const std::string help = run("compress --help").out;
        for (const char* option : {"--output", "--method", "--codec", "--target-bpw", "--bits", "--group-size", "--step", "--alpha", "--calib",
                                   "--tokenizer", "--calib-windows", "--no-ldlq", "--no-finetune", "--finetune-windows", "--threads", "--json", "--help"})
            CHECK(help.find(option) != std::string::npos);
        CHECK(run("compress " + model + " -o " + (temp / "x.nwc") + " --method nwc --codec ''").status == 2);  // no codec
        CHECK(run("compress " + model + " -o " + (temp / "x.nwc") + " --method rtn --no-finetune").status == 2);  // needs --calib
        // Without --codec, --method nwc uses the shipped codecs (the one nearest 4 bits per weight).
        const Result shipped = run("compress " + model + " -o " + (temp / "n.nwc") + " --method nwc --threads 2 --json");
        REQUIRE(shipped.status == 0);
        CHECK(nlohmann::json::parse(shipped.out)["codec"].get<std::string>().find("nwc-32x1-") != std::string::npos);
        CHECK(run("compress " + model + " -o " + (temp / "x.nwc") + " --method rtn --step 0.3").status == 2);
        CHECK(run("compress " + model + " -o " + (temp / "x.nwc") + " --method rtn --bits 4 --target-bpw 4").status == 2);
        CHECK(run("decompress " + (temp / "x.nwc") + " -o " + (temp / "x.txt")).status == 2);
        CHECK(run("compress " + (temp / "missing.bin") + " -o " + (temp / "x.nwc") + " --method rtn").status == 1);
    }

    SECTION("round trip with a rate target, JSON reports, atomic outputs") {
        const Result compressed = run("compress " + model + " -o " + (temp / "s.nwc") + " --method gptq --target-bpw 4.5 --calib '" +
                                      data("tinystories_calib.txt").string() + "' --tokenizer '" + data("tok512.bin").string() +
                                      "' --calib-windows 4 --threads 2 --json");
        REQUIRE(compressed.status == 0);
        const nlohmann::json report = nlohmann::json::parse(compressed.out);
        const auto bytes = std::filesystem::file_size(temp.path / "s.nwc");
        CHECK(report["file_bytes"].get<std::uint64_t>() == bytes);
        CHECK(report["bits_per_weight"].get<double>() == Approx(8.0 * double(bytes) / 260032.0));
        CHECK(std::fabs(report["bits_per_weight"].get<double>() / 4.5 - 1.0) <= 0.01);
        CHECK(report["tensors"].size() == 47);
        CHECK(report["tensors"][2]["proxy_loss"].is_number());
        CHECK(report["calibration"]["finetune"] == true);  // on by default with --calib

        const Result inspected = run("inspect " + (temp / "s.nwc") + " --verify --json");
        REQUIRE(inspected.status == 0);
        const nlohmann::json listing = nlohmann::json::parse(inspected.out);
        CHECK(listing["file_bytes"].get<std::uint64_t>() == bytes);
        CHECK(listing["tensors"].size() == 47);
        CHECK(listing["tensors"][2]["method"] == "gptq");
        CHECK(listing["tensors"][2]["proxy_loss"].get<double>() == Approx(report["tensors"][2]["proxy_loss"].get<double>()).epsilon(1e-6));
        CHECK(run("inspect " + (temp / "s.nwc")).out.find("bits per weight (whole file)") != std::string::npos);

        REQUIRE(run("decompress " + (temp / "s.nwc") + " -o " + (temp / "s.bin") + " --threads 2").status == 0);
        const nwc::llm::Llama2cModel loaded = nwc::llm::read_llama2c(temp.path / "s.bin");
        CHECK(loaded.weights.config == nwc::llm::read_llama2c(data("stories260K.bin")).weights.config);
        REQUIRE(run("decompress " + (temp / "s.nwc") + " -o " + (temp / "s.safetensors")).status == 0);
        CHECK(nwc::SafetensorsFile::open(temp.path / "s.safetensors").tensor_count() == 47);

        // A corrupt input fails with exit code 1 and leaves an existing output untouched.
        std::vector<std::uint8_t> file = nwc::read_file(temp.path / "s.nwc");
        file[file.size() - 10] ^= 0x40;
        nwc::write_file_atomic(temp.path / "bad.nwc", file);
        const std::vector<std::uint8_t> before = nwc::read_file(temp.path / "s.bin");
        CHECK(run("decompress " + (temp / "bad.nwc") + " -o " + (temp / "s.bin")).status == 1);
        CHECK(nwc::read_file(temp.path / "s.bin") == before);
        CHECK(run("decompress " + (temp / "bad.nwc") + " -o " + (temp / "new.bin")).status == 1);
        CHECK(!std::filesystem::exists(temp.path / "new.bin"));
        CHECK(run("compress '" + data("tok512.bin").string() + "' -o " + (temp / "s.nwc") + " --method rtn").status == 1);
        CHECK(std::filesystem::file_size(temp.path / "s.nwc") == bytes);
        for (const auto& entry : std::filesystem::directory_iterator(temp.path))  // no temporary file left behind
            CHECK(entry.path().filename().string().find(".tmp.") == std::string::npos);
    }
}
