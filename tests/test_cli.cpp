// The `nwc` program, driven as a user drives it: every subcommand's generated help lists every
// option it declares (with the library's defaults and the method list's knobs), --json prints one
// JSON object for every subcommand, usage errors exit 2 and bad input exits 1 everywhere, and the
// outputs are atomic. The binary is found next to the test program (build/tests/nwc_test_cli ->
// build/tools/nwc); without it or the real data the cases are left out and the program exits 77
// (skipped; tests/requirements.hpp).
// nwc-ctest-labels: data
#include <catch2/catch.hpp>

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <limits>
#include <map>
#include <type_traits>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "nwc/codec/codec_file.hpp"
#include "nwc/codec/sha256.hpp"
#include "nwc/codec/trainer.hpp"
#include "nwc/core/file_io.hpp"
#include "nwc/core/random.hpp"
#include "nwc/io/safetensors.hpp"
#include "nwc/io/llama2c_file.hpp"
#include "nwc/io/model_file.hpp"
#include "nwc/pipeline/builtin_methods.hpp"
#include "nwc/pipeline/rate_control.hpp"
#include "requirements.hpp"

namespace nwc_test_cli {

namespace {

const char* const subcommands[] = {"compress", "decompress", "inspect", "train", "eval", "report", "demo"};

std::filesystem::path data(const std::string& name) { return nwc::testing::data_path(name); }
std::string quoted_data(const std::string& name) { return "'" + data(name).string() + "'"; }

std::filesystem::path program() { return nwc::testing::nwc_program(); }

struct Result {
    int status = -1;
    std::string out;
};

/// Runs `nwc ARGS` (stderr appended to a file) and returns the exit status and stdout.
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

/// The one JSON object a --json run printed (a failed check if stdout holds anything else).
nlohmann::json json_of(const Result& result) {
    INFO(result.out);
    REQUIRE(result.status == 0);
    const nlohmann::json parsed = nlohmann::json::parse(result.out, nullptr, false);
    REQUIRE(!parsed.is_discarded());
    REQUIRE(parsed.is_object());
    return parsed;
}

/// Runs of spaces and line breaks as one space: a wrapped help line reads as one line.
std::string collapse_spaces(const std::string& text) {
    std::string collapsed;
    for (char c : text)
        if (!(c == ' ' || c == '\n') || (!collapsed.empty() && collapsed.back() != ' ')) collapsed += (c == '\n' ? ' ' : c);
    return collapsed;
}

double number(const std::string& text) { return std::stod(text); }

struct TempDir {
    std::filesystem::path path = std::filesystem::temp_directory_path() / ("nwc_cli_test_" + std::to_string(::getpid()));
    TempDir() { std::filesystem::create_directories(path); }
    ~TempDir() {
        std::error_code ignored;
        std::filesystem::remove_all(path, ignored);
    }
    std::string operator/(const std::string& name) const { return "'" + (path / name).string() + "'"; }
};

/// A small safetensors file of random 64 x 64 matrices (codec training data, not a Llama model).
void write_matrices(const std::filesystem::path& path) {
    nwc::Random random(7);
    nwc::SafetensorsWriter writer;
    for (const char* name : {"a.weight", "b.weight", "c.weight"}) {
        nwc::Tensor<float> matrix(nwc::Shape{64, 64});
        for (std::int64_t k = 0; k < matrix.numel(); ++k) matrix.data()[k] = random.normal();
        writer.add_float32(name, matrix.view(), nwc::dtype::f32);
    }
    writer.write(path);
}

}  // namespace

TEST_CASE("every subcommand's help is generated from its declarations", "[cli][data][tool]") {
    for (const char* command : subcommands) {
        INFO("nwc " << command);
        const Result help = run(std::string(command) + " --help");
        REQUIRE(help.status == 0);
        CHECK(help.out.rfind(std::string("usage: nwc ") + command, 0) == 0);
        CHECK(help.out.find("exit codes: 0 ok, 1 bad input") != std::string::npos);
        CHECK(run(std::string(command) + " -h").out == help.out);
        CHECK(run(std::string(command) + " --no-such-option").status == 2);
        CHECK(run(std::string(command) + " --no-such-option --help").status == 0);  // --help wins

        const nlohmann::json declarations = json_of(run(std::string(command) + " --help --json"));
        CHECK(declarations["command"] == command);
        const std::string text = collapse_spaces(help.out);
        std::vector<std::string> names;
        for (const auto& option : declarations["options"]) {
            const std::string name = option["name"].get<std::string>();
            INFO("--" << name);
            names.push_back(name);
            std::string label = (option.contains("short") ? "-" + option["short"].get<std::string>() + ", " : std::string()) + "--" + name;
            if (option.contains("value")) label += " " + option["value"].get<std::string>();
            CHECK(text.find(" " + label + " ") != std::string::npos);
            if (option["required"].get<bool>()) CHECK(text.find("required") != std::string::npos);
            else if (!option["default"].is_null()) CHECK(text.find("default " + option["default"].get<std::string>()) != std::string::npos);
        }
        // --json and --help come from one place: every subcommand has them.
        CHECK(std::find(names.begin(), names.end(), "json") != names.end());
        CHECK(std::find(names.begin(), names.end(), "help") != names.end());
    }
}

TEST_CASE("defaults and method options come from the library", "[cli][data][tool]") {
    const auto declared = [](const char* command) {
        std::map<std::string, nlohmann::json> options;
        const nlohmann::json declarations = json_of(run(std::string(command) + " --help --json"));
        for (const auto& option : declarations["options"]) options[option["name"].get<std::string>()] = option;
        return options;
    };
    auto compress = declared("compress");
    const nwc::MethodOptions defaults;
    CHECK(compress["method"]["default"] == defaults.method);
    std::vector<std::string> methods;
    for (const auto& name : compress["method"]["choices"]) methods.push_back(name.get<std::string>());
    // Every method of the list: its name is a --method choice, its knob an option that applies to it.
    const auto check_method = [&]<class M>(std::type_identity<M>) {
        INFO(M::name);
        CHECK(std::find(methods.begin(), methods.end(), std::string(M::name)) != methods.end());
        const nlohmann::json& knob = compress[std::string(M::knob.option)];
        REQUIRE(knob.is_object());
        CHECK(number(knob["default"].get<std::string>()) == Approx(M::knob_value(defaults)));
        CHECK(std::find(knob["methods"].begin(), knob["methods"].end(), std::string(M::name)) != knob["methods"].end());
        CHECK(knob["kind"] == (M::knob.integer ? "integer" : "number"));
    };
    check_method(std::type_identity<nwc::NwcMethod>{});
    check_method(std::type_identity<nwc::EcsqMethod>{});
    check_method(std::type_identity<nwc::GptqMethod>{});
    check_method(std::type_identity<nwc::RtnMethod>{});
    CHECK(methods.size() == nwc::BuiltinMethods::size);
    CHECK(number(compress["group-size"]["default"].get<std::string>()) == defaults.group_size);

    auto train = declared("train");
    const nwc::TrainingOptions training;
    CHECK(number(train["table-tail"]["default"].get<std::string>()) == nwc::default_table_tail_mass);
    CHECK(number(train["precision"]["default"].get<std::string>()) == nwc::default_table_precision);
    CHECK(number(train["lambda"]["default"].get<std::string>()) == training.loss.lambda);
    CHECK(number(train["steps"]["default"].get<std::string>()) == double(training.steps));
    CHECK(number(train["lr"]["default"].get<std::string>()) == training.learning_rate);
    CHECK(number(train["width"]["default"].get<std::string>()) == training.architecture.width);
    CHECK(train["holdout"]["default"] == nwc::default_holdout_regex);

    auto demo = declared("demo");
    CHECK(number(demo["target-bpw"]["default"].get<std::string>()) == nwc::RateTarget{}.bits_per_weight);
}

TEST_CASE("usage errors exit 2, bad input exits 1, in every subcommand", "[cli][data][tool]") {
    const TempDir temp;
    const std::string model = quoted_data("stories260K.bin"), tokenizer = quoted_data("tok512.bin");
    const std::string calib = quoted_data("tinystories_calib.txt"), eval = quoted_data("tinystories_eval.txt");
    write_matrices(temp.path / "m.safetensors");

    CHECK(run("").status == 2);
    CHECK(run("no-such-command").status == 2);
    const std::vector<std::string> usage_errors = {
             "compress",                                                                   // no input
             "compress " + model,                                                          // no -o
             "compress " + model + " x -o " + (temp / "x.nwc"),                            // two inputs
             "compress " + model + " -o " + (temp / "x.nwc") + " --method nwc --codec ''",  // no codec
             "compress " + model + " -o " + (temp / "x.nwc") + " --method zip",
             "compress " + model + " -o " + (temp / "x.nwc") + " --method rtn --step 0.3",  // ecsq's knob
             "compress " + model + " -o " + (temp / "x.nwc") + " --method ecsq --bits 3",   // rtn and gptq's knob
             "compress " + model + " -o " + (temp / "x.nwc") + " --method ecsq --group-size 64",
             "compress " + model + " -o " + (temp / "x.nwc") + " --method rtn --codec c.nwcc",
             "compress " + model + " -o " + (temp / "x.nwc") + " --method rtn --bits 4 --target-bpw 4",
             "compress " + model + " -o " + (temp / "x.nwc") + " --method rtn --bits 9",
             "compress " + model + " -o " + (temp / "x.nwc") + " --method rtn --target-bpw 0",
             "compress " + model + " -o " + (temp / "x.nwc") + " --method rtn --no-finetune",  // needs --calib
             "compress " + model + " -o " + (temp / "x.nwc") + " --method rtn --calib " + calib,  // needs --tokenizer
             "compress " + model + " -o " + (temp / "x.nwc") + " --method rtn --threads -1",
             "compress " + model + " -o " + (temp / "x.nwc") + " --method rtn --threads two",
             "compress " + model + " -o " + (temp / "x.nwc") + " --method rtn --json=yes",
             "compress " + model + " --method rtn -o",
             "decompress " + (temp / "x.nwc") + " -o " + (temp / "x.txt"),
             "inspect",
             "inspect a.nwc b.nwc",
             "train -o " + (temp / "c.nwcc"),
             "train " + (temp / "m.safetensors") + " -o " + (temp / "c.nwcc") + " --dtype f8",
             "train " + (temp / "m.safetensors") + " -o " + (temp / "c.nwcc") + " --table-tail 0.5",
             "train " + (temp / "m.safetensors") + " -o " + (temp / "c.nwcc") + " --precision 17",
             "eval " + model + " --text " + eval,
             "eval " + model + " --text " + eval + " --tokenizer " + tokenizer + " --window 1",
             "report " + model + " --calib " + calib + " --text " + eval,
             "report " + model + " --calib " + calib + " --text " + eval + " --tokenizer " + tokenizer + " --configs rtn,zip",
             "report " + model + " --calib " + calib + " --text " + eval + " --tokenizer " + tokenizer + " --rates 4,40",
             "report " + model + " --calib " + calib + " --text " + eval + " --tokenizer " + tokenizer + " --json rd.json",  // renamed --json-file
             "demo extra",
             "demo --method ecsq --codec c.nwcc",
    };
    for (const std::string& arguments : usage_errors) {
        INFO("nwc " << arguments);
        CHECK(run(arguments).status == 2);
    }
    std::vector<std::uint8_t> corrupt = nwc::read_file(data("stories260K.bin"));
    corrupt.resize(1000);
    nwc::write_file_atomic(temp.path / "truncated.bin", corrupt);
    const std::vector<std::string> bad_inputs = {
             "compress " + (temp / "missing.bin") + " -o " + (temp / "x.nwc") + " --method rtn",
             "compress " + (temp / "truncated.bin") + " -o " + (temp / "x.nwc") + " --method rtn",
             "compress " + (temp / "m.safetensors") + " -o " + (temp / "x.nwc") + " --method rtn --calib " + calib + " --tokenizer " + tokenizer,
             "decompress " + tokenizer + " -o " + (temp / "x.bin"),
             "inspect " + model,
             "train " + tokenizer + " -o " + (temp / "c.nwcc") + " --steps 1",
             "eval " + model + " --text " + (temp / "missing.txt") + " --tokenizer " + tokenizer,
             "eval " + (temp / "truncated.bin") + " --text " + eval + " --tokenizer " + tokenizer,
             "report " + (temp / "m.safetensors") + " --calib " + calib + " --text " + eval + " --tokenizer " + tokenizer,
             "demo --data " + (temp / "no-data"),
    };
    for (const std::string& arguments : bad_inputs) {
        INFO("nwc " << arguments);
        CHECK(run(arguments).status == 1);
    }
    CHECK(!std::filesystem::exists(temp.path / "x.nwc"));
}

TEST_CASE("--json prints one JSON object in every subcommand", "[cli][data][tool]") {
    const TempDir temp;
    const std::string model = quoted_data("stories260K.bin"), tokenizer = quoted_data("tok512.bin");
    const std::string calib = quoted_data("tinystories_calib.txt"), eval = quoted_data("tinystories_eval.txt");

    const nlohmann::json compressed = json_of(run("compress " + model + " -o " + (temp / "r.nwc") + " --method rtn --threads 2 --json"));
    CHECK(compressed["file_bytes"].get<std::uint64_t>() == std::filesystem::file_size(temp.path / "r.nwc"));
    CHECK(compressed["setting"] == "bits=4");
    const nlohmann::json listing = json_of(run("inspect " + (temp / "r.nwc") + " --json"));
    CHECK(listing["tensors"].size() == compressed["tensors"].size());
    const nlohmann::json decompressed = json_of(run("decompress " + (temp / "r.nwc") + " -o " + (temp / "r.bin") + " --json"));
    CHECK(decompressed["weights"] == compressed["weights"]);
    const nlohmann::json evaluated = json_of(run("eval " + (temp / "r.nwc") + " --text " + eval + " --tokenizer " + tokenizer + " --max-windows 2 --json"));
    CHECK(evaluated["windows"] == 2);
    CHECK(evaluated["format"] == "nwc");

    write_matrices(temp.path / "m.safetensors");
    const nlohmann::json trained = json_of(run("train " + (temp / "m.safetensors") + " -o " + (temp / "c.nwcc") +
                                               " --steps 4 --log-every 2 --width 16 --blocks 1 --batch 64 --holdout '^c' --json"));
    CHECK(trained["codec_bytes"].get<std::uint64_t>() == std::filesystem::file_size(temp.path / "c.nwcc"));
    CHECK(trained["log"].size() == 2);
    CHECK(trained["held_out"].size() == 4);

    // --retable rebuilds the tables only: with the codec's own precision and tail the decoder half
    // comes back byte for byte; a smaller tail widens every table and keeps the networks.
    const nwc::NeuralCodec original = nwc::read_codec_file(temp.path / "c.nwcc");
    const nlohmann::json same = json_of(run("train " + (temp / "m.safetensors") + " --retable " + (temp / "c.nwcc") + " -o " + (temp / "same.nwcc") +
                                            " --holdout '^c' --json"));
    CHECK(same["held_out"].size() == 4);
    const nwc::NeuralCodec rebuilt = nwc::read_codec_file(temp.path / "same.nwcc");
    CHECK(nwc::serialize_codec_decoder(rebuilt.decoder()) == nwc::serialize_codec_decoder(original.decoder()));
    const nlohmann::json provenance = nlohmann::json::parse(rebuilt.provenance());
    CHECK(provenance["retabled_from"]["sha256"] == nwc::detail::sha256_hex(nwc::read_file(temp.path / "c.nwcc")));
    CHECK(provenance["training"] == nlohmann::json::parse(original.provenance())["training"]);
    CHECK(run("train " + (temp / "m.safetensors") + " --retable " + (temp / "c.nwcc") + " -o " + (temp / "wide.nwcc") + " --table-tail 1e-7 --holdout '^c'").status == 0);
    const nwc::NeuralCodec wide = nwc::read_codec_file(temp.path / "wide.nwcc");
    CHECK(nwc::serialize_codec(wide).size() > nwc::serialize_codec(original).size());
    const auto network_bytes = [](const nwc::ResidualMLP<float>& network, nwc::dtype storage) {
        nwc::ByteWriter writer;
        nwc::detail::write_network_weights(writer, network, storage);
        return writer.take();
    };
    CHECK(network_bytes(wide.encoder(), wide.weight_dtype()) == network_bytes(original.encoder(), original.weight_dtype()));
    CHECK(network_bytes(wide.decoder().network(), wide.weight_dtype()) == network_bytes(original.decoder().network(), original.weight_dtype()));
    CHECK(nlohmann::json::parse(wide.provenance())["table_tail_mass"].get<double>() == 1e-7);
    for (std::size_t group = 0; group < original.decoder().all_tables().size(); ++group)
        for (std::size_t channel = 0; channel < original.decoder().all_tables()[group].tables().size(); ++channel)
            CHECK(wide.decoder().all_tables()[group][channel].support() >= original.decoder().all_tables()[group][channel].support());
    CHECK(run("train " + (temp / "m.safetensors") + " --retable " + (temp / "missing.nwcc") + " -o " + (temp / "x.nwcc")).status == 1);

    const nlohmann::json report = json_of(run("report " + model + " --calib " + calib + " --text " + eval + " --tokenizer " + tokenizer +
                                              " --configs rtn --rates 4 --eval-windows 2 --sensitivity-windows 1 --sensitivity-pairs 1 --threads 2 --json --json-file " +
                                              (temp / "rd.json")));
    CHECK(report["rows"].size() == 2);  // the target and the Q4_0 setting
    CHECK(nlohmann::json::parse(nwc::read_file(temp.path / "rd.json")) == report);

    const nlohmann::json demo = json_of(run("demo --method rtn --threads 2 --sensitivity-windows 2 --sensitivity-pairs 1 --out " + (temp / "demo") + " --json"));
    CHECK(demo["compress"]["file_bytes"].get<std::uint64_t>() == std::filesystem::file_size(temp.path / "demo" / "stories260K.nwc"));
    CHECK(demo["compress"]["calibration"]["finetune"] == true);
    CHECK(demo["original"]["perplexity"].get<double>() < demo["compressed"]["perplexity"].get<double>());
}

TEST_CASE("--method lossless: no knob, no rate target, the same bytes back", "[cli][data][tool]") {
    const TempDir temp;
    // A safetensors file written by nwc's own writer, so that decompress can reproduce it byte for byte.
    nwc::Random random(3);
    nwc::SafetensorsWriter writer;
    nwc::Tensor<float> matrix(nwc::Shape{64, 48}), norm(nwc::Shape{48});
    for (float& value : matrix.values()) value = 0.02f * float(random.normal());
    for (float& value : norm.values()) value = 1.0f + 0.1f * float(random.normal());
    writer.add_float32("layer.weight", matrix.view(), nwc::dtype::bf16);
    writer.add_float32("layer.norm", norm.view(), nwc::dtype::bf16);
    writer.write(temp.path / "m.safetensors");

    const nlohmann::json report = json_of(run("compress " + (temp / "m.safetensors") + " -o " + (temp / "m.nwc") + " --method lossless --json"));
    CHECK(report["setting"] == "");
    CHECK(report["tensors"][0]["method"] == "lossless");
    CHECK(report["tensors"][1]["method"] == "lossless");
    CHECK(run("compress " + (temp / "m.safetensors") + " -o " + (temp / "x.nwc") + " --method lossless --target-bpw 4").status == 2);
    CHECK(run("compress " + (temp / "m.safetensors") + " -o " + (temp / "x.nwc") + " --method lossless --step 0.5").status == 2);
    const nlohmann::json breakdown = json_of(run("inspect " + (temp / "m.nwc") + " --breakdown --json"));
    std::uint64_t sum = 0;
    for (const auto& [category, count] : breakdown["breakdown"].items()) sum += count.get<std::uint64_t>();
    CHECK(sum == std::filesystem::file_size(temp.path / "m.nwc"));
    CHECK(breakdown["breakdown"]["tables"].get<std::uint64_t>() > 0);
    REQUIRE(run("decompress " + (temp / "m.nwc") + " -o " + (temp / "back.safetensors")).status == 0);
    CHECK(nwc::read_file(temp.path / "back.safetensors") == nwc::read_file(temp.path / "m.safetensors"));
}

TEST_CASE("compress, inspect and decompress: rate targets, shipped codecs, atomic outputs", "[cli][data][tool]") {
    const TempDir temp;
    const std::string model = quoted_data("stories260K.bin");

    // Without --codec, --method nwc uses the shipped codecs (the one nearest 4 bits per weight).
    const nlohmann::json shipped = json_of(run("compress " + model + " -o " + (temp / "n.nwc") + " --method nwc --threads 2 --json"));
    CHECK(shipped["codec"].get<std::string>().find("nwc-32x1-") != std::string::npos);

    const nlohmann::json report = json_of(run("compress " + model + " -o " + (temp / "s.nwc") + " --method gptq --target-bpw 4.5 --calib " +
                                              quoted_data("tinystories_calib.txt") + " --tokenizer " + quoted_data("tok512.bin") +
                                              " --calib-windows 4 --sensitivity-windows 2 --sensitivity-pairs 1 --threads 2 --json"));
    const auto bytes = std::filesystem::file_size(temp.path / "s.nwc");
    CHECK(report["file_bytes"].get<std::uint64_t>() == bytes);
    CHECK(report["bits_per_weight"].get<double>() == Approx(8.0 * double(bytes) / 260032.0));
    CHECK(std::fabs(report["bits_per_weight"].get<double>() / 4.5 - 1.0) <= 0.01);
    CHECK(report["tensors"].size() == 47);
    CHECK(report["tensors"][2]["proxy_loss"].is_number());
    CHECK(report["calibration"]["finetune"] == true);  // on by default with --calib
    CHECK(report["calibration"]["allocation"] == true);  // on by default with --calib and --target-bpw

    const nlohmann::json listing = json_of(run("inspect " + (temp / "s.nwc") + " --verify --json"));
    CHECK(listing["file_bytes"].get<std::uint64_t>() == bytes);
    CHECK(listing["tensors"].size() == 47);
    CHECK(listing["tensors"][2]["method"] == "gptq");
    // The file stores its diagnostics as bfloat16 (8 significant bits); the proxy loss only the compress report has.
    CHECK(listing["tensors"][2]["relative_mse"].get<double>() == Approx(report["tensors"][2]["relative_mse"].get<double>()).epsilon(1.0 / 128));
    CHECK(listing["tensors"][2]["proxy_loss"].is_null());
    CHECK(run("inspect " + (temp / "s.nwc")).out.find("bits per weight (whole file)") != std::string::npos);
    // Allocation recorded each matrix's sensitivity; --breakdown accounts for every byte.
    CHECK(listing["tensors"][2]["sensitivity"].get<double>() > 0.0);
    const nlohmann::json breakdown = json_of(run("inspect " + (temp / "s.nwc") + " --breakdown --json"));
    std::uint64_t sum = 0, tensor_sum = 0;
    for (const auto& [category, count] : breakdown["breakdown"].items()) sum += count.get<std::uint64_t>();
    CHECK(sum == bytes);
    CHECK(breakdown["breakdown"]["payload"].get<std::uint64_t>() > bytes / 2);
    CHECK(breakdown["breakdown"]["scales"].get<std::uint64_t>() > 0);  // gptq's group scales
    CHECK(breakdown["side_information_bytes"].get<std::uint64_t>() == bytes - breakdown["breakdown"]["payload"].get<std::uint64_t>());
    for (const auto& [category, count] : breakdown["tensors"][2]["bytes"].items()) tensor_sum += count.get<std::uint64_t>();
    double tensor_weights = 1.0;
    for (const auto& extent : breakdown["tensors"][2]["shape"]) tensor_weights *= extent.get<double>();
    CHECK(double(tensor_sum) * 8.0 == Approx(breakdown["tensors"][2]["bits_per_weight"].get<double>() * tensor_weights));

    REQUIRE(run("decompress " + (temp / "s.nwc") + " -o " + (temp / "s.bin") + " --threads 2").status == 0);
    const nwc::llm::Llama2cModel loaded = nwc::llm::read_llama2c(temp.path / "s.bin");
    CHECK(loaded.weights.config == nwc::llm::read_llama2c(data("stories260K.bin")).weights.config);
    REQUIRE(run("decompress " + (temp / "s.nwc") + " -o " + (temp / "s.safetensors")).status == 0);
    CHECK(nwc::SafetensorsFile::open(temp.path / "s.safetensors").tensor_count() == 47);
    // A Hugging Face directory: config.json, shards of at most --shard-size, the index; nwc reads it back.
    const nlohmann::json directory = json_of(run("decompress " + (temp / "s.nwc") + " -o " + (temp / "hf") + "/ --shard-size 300KB --json"));
    CHECK(directory["shards"].get<int>() >= 4);  // 1.04 MB of F32 tensors in shards of at most 300 KB
    for (const auto& entry : std::filesystem::directory_iterator(temp.path / "hf"))
        if (entry.path().extension() == ".safetensors") CHECK(std::filesystem::file_size(entry.path()) <= 300000 + 4096);  // + the JSON header
    CHECK(std::filesystem::exists(temp.path / "hf" / "config.json"));
    CHECK(std::filesystem::exists(temp.path / "hf" / "model.safetensors.index.json"));
    CHECK(nwc::read_llama_weights(temp.path / "hf").config == loaded.weights.config);
    CHECK(run("decompress " + (temp / "s.nwc") + " -o " + (temp / "hf") + "/").status == 1);  // not empty: refused
    CHECK(run("decompress " + (temp / "s.nwc") + " -o " + (temp / "hf2") + "/ --shard-size 5XB").status == 2);

    // A corrupt input fails with exit code 1 and leaves an existing output untouched.
    std::vector<std::uint8_t> file = nwc::read_file(temp.path / "s.nwc");
    file[file.size() - 10] ^= 0x40;
    nwc::write_file_atomic(temp.path / "bad.nwc", file);
    const std::vector<std::uint8_t> before = nwc::read_file(temp.path / "s.bin");
    CHECK(run("decompress " + (temp / "bad.nwc") + " -o " + (temp / "s.bin")).status == 1);
    CHECK(nwc::read_file(temp.path / "s.bin") == before);
    CHECK(run("decompress " + (temp / "bad.nwc") + " -o " + (temp / "new.bin")).status == 1);
    CHECK(!std::filesystem::exists(temp.path / "new.bin"));
    CHECK(run("compress " + quoted_data("tok512.bin") + " -o " + (temp / "s.nwc") + " --method rtn").status == 1);
    CHECK(std::filesystem::file_size(temp.path / "s.nwc") == bytes);
    for (const auto& entry : std::filesystem::directory_iterator(temp.path))  // no temporary file left behind
        CHECK(entry.path().filename().string().find(".tmp.") == std::string::npos);
}

// Safetensors and directory outputs are streamed (streaming_decompress.hpp); --in-memory decodes
// the whole model first, the former path. Both must write the same bytes, for any --threads.
TEST_CASE("decompress streams tensor by tensor: the same bytes as decoding the whole model first", "[cli][data][tool]") {
    const TempDir temp;
    const auto files_of = [](const std::filesystem::path& directory) {
        std::map<std::string, std::vector<std::uint8_t>> files;
        for (const auto& entry : std::filesystem::directory_iterator(directory)) files[entry.path().filename().string()] = nwc::read_file(entry.path());
        return files;
    };
    // Every dtype a safetensors source may hold: BF16, F16 and F32 (coded, and raw when too
    // small), an I32 tensor (raw bytes); a llama2.c source (HF names, q/k rows permuted, F32); and
    // a Hugging Face directory (config.json, shards), the one the llama2.c source decompresses to.
    nwc::Random random(5);
    nwc::SafetensorsWriter writer;
    const auto add = [&](const char* name, nwc::Shape shape, nwc::dtype type) {
        nwc::Tensor<float> values(shape);
        for (float& value : values.values()) value = 0.02f * random.normal();
        writer.add_float32(name, values.view(), type);
    };
    add("a.weight", nwc::Shape{96, 64}, nwc::dtype::bf16);
    add("b.weight", nwc::Shape{64, 48}, nwc::dtype::f16);
    add("c.weight", nwc::Shape{32, 32}, nwc::dtype::f32);
    add("c.norm", nwc::Shape{48}, nwc::dtype::bf16);
    add("tiny", nwc::Shape{8}, nwc::dtype::f16);
    const std::vector<std::int32_t> ids{3, -1, 7, 1 << 30, 0, 42};
    writer.add_raw("ids", nwc::dtype::i32, nwc::Shape{6}, std::span<const std::uint8_t>(reinterpret_cast<const std::uint8_t*>(ids.data()), 24));
    writer.set_metadata("format", "pt");
    writer.write(temp.path / "mixed.safetensors");
    REQUIRE(run("compress " + (temp / "mixed.safetensors") + " -o " + (temp / "m.nwc")).status == 0);
    REQUIRE(run("compress " + quoted_data("stories260K.bin") + " -o " + (temp / "l.nwc") + " --threads 2").status == 0);
    // A tensor far above the mean (its segments are split among the workers) beside small ones,
    // coded with ecsq (e) and lossless (x: decoded straight into BF16 and F16, NaNs and infinities
    // kept bit for bit).
    nwc::Tensor<float> big(nwc::Shape{1024, 1100});
    for (float& value : big.values()) value = 0.02f * random.normal();
    const auto write_large = [&](const std::filesystem::path& path) {
        nwc::SafetensorsWriter large;
        large.add_float32("big.weight", big.view(), nwc::dtype::bf16);
        nwc::Random small_values(6);
        for (int k = 0; k < 6; ++k) {
            nwc::Tensor<float> small(nwc::Shape{64, 40});
            for (float& value : small.values()) value = 0.02f * small_values.normal();
            large.add_float32("small." + std::to_string(k), small.view(), k % 2 == 0 ? nwc::dtype::f16 : nwc::dtype::bf16);
        }
        large.write(path);
    };
    write_large(temp.path / "large.safetensors");
    REQUIRE(run("compress " + (temp / "large.safetensors") + " -o " + (temp / "e.nwc") + " --method ecsq").status == 0);
    for (const std::size_t k : {3, 70000, 123456}) big.values()[k] = std::numeric_limits<float>::quiet_NaN();
    big.values()[5] = std::numeric_limits<float>::infinity();
    big.values()[6] = -0.0f;
    write_large(temp.path / "special.safetensors");
    REQUIRE(run("compress " + (temp / "special.safetensors") + " -o " + (temp / "x.nwc") + " --method lossless").status == 0);

    for (const auto& [source, shard_size] :
         {std::pair<std::string, std::string>{"m", "10KB"}, {"l", "100KB"}, {"h", "100KB"}, {"e", "1MB"}, {"x", "1MB"}}) {
        INFO(source);
        if (source == "h") REQUIRE(run("compress " + (temp / "l-whole") + " -o " + (temp / "h.nwc")).status == 0);
        const std::string input = temp / (source + ".nwc"), shards = " --shard-size " + shard_size;
        const nlohmann::json whole = json_of(run("decompress " + input + " -o " + (temp / (source + "-whole.safetensors")) + " --in-memory --json"));
        CHECK(whole["streamed"] == false);
        REQUIRE(run("decompress " + input + " -o " + (temp / (source + "-whole")) + "/ --in-memory" + shards).status == 0);
        const auto whole_directory = files_of(temp.path / (source + "-whole"));
        CHECK(whole_directory.size() >= 3);  // several shards and the index
        for (const char* threads : {"1", "3"}) {
            INFO("--threads " << threads);
            const std::string streamed = source + "-streamed-" + threads;
            const nlohmann::json file = json_of(run("decompress " + input + " -o " + (temp / (streamed + ".safetensors")) + " --threads " + threads + " --json"));
            CHECK(file["streamed"] == true);
            CHECK(file["tensors"] == whole["tensors"]);
            CHECK(file["weights"] == whole["weights"]);
            CHECK(nwc::read_file(temp.path / (streamed + ".safetensors")) == nwc::read_file(temp.path / (source + "-whole.safetensors")));
            REQUIRE(run("decompress " + input + " -o " + (temp / streamed) + "/ --threads " + threads + shards).status == 0);
            CHECK(files_of(temp.path / streamed) == whole_directory);
        }
    }

    // A payload that fails its check midway: no output, an existing one untouched, nothing left behind.
    std::vector<std::uint8_t> file = nwc::read_file(temp.path / "l.nwc");
    file[file.size() / 2] ^= 0x10;
    nwc::write_file_atomic(temp.path / "bad.nwc", file);
    const std::vector<std::uint8_t> before = nwc::read_file(temp.path / "l-whole.safetensors");
    CHECK(run("decompress " + (temp / "bad.nwc") + " -o " + (temp / "l-whole.safetensors")).status == 1);
    CHECK(nwc::read_file(temp.path / "l-whole.safetensors") == before);
    CHECK(run("decompress " + (temp / "bad.nwc") + " -o " + (temp / "bad") + "/ --shard-size 100KB").status == 1);
    CHECK(!std::filesystem::exists(temp.path / "bad"));
    for (const auto& entry : std::filesystem::directory_iterator(temp.path)) {
        CHECK(entry.path().filename().string().find(".tmp.") == std::string::npos);
        CHECK(entry.path().filename().string().find(".nwc-partial") == std::string::npos);
    }
}

// Without --calib, compress reads, codes and writes one tensor at a time (model_reader.hpp,
// compress_model_into); --in-memory reads the whole model first. The same bytes, for any --threads
// and with rate control (continuous and integer knobs).
TEST_CASE("compress streams tensor by tensor: the same bytes as reading the whole model first", "[cli][data][tool]") {
    const TempDir temp;
    REQUIRE(run("compress " + quoted_data("stories260K.bin") + " -o " + (temp / "l.nwc") + " --method rtn").status == 0);
    REQUIRE(run("decompress " + (temp / "l.nwc") + " -o " + (temp / "hf") + "/ --shard-size 100KB").status == 0);
    REQUIRE(std::filesystem::exists(temp.path / "hf" / "model.safetensors.index.json"));
    for (const std::string& source : {quoted_data("stories260K.bin"), temp / "hf"}) {
        for (const std::string method : {"", " --method ecsq --target-bpw 3", " --method rtn --target-bpw 4"}) {
            INFO(source << method);
            const nlohmann::json whole = json_of(run("compress " + source + " -o " + (temp / "whole.nwc") + method + " --in-memory --json"));
            for (const char* threads : {"1", "3"}) {
                INFO("--threads " << threads);
                const nlohmann::json streamed = json_of(run("compress " + source + " -o " + (temp / "streamed.nwc") + method + " --threads " + threads + " --json"));
                CHECK(streamed["file_bytes"] == whole["file_bytes"]);
                CHECK(streamed["passes"] == whole["passes"]);
                CHECK(nwc::read_file(temp.path / "streamed.nwc") == nwc::read_file(temp.path / "whole.nwc"));
            }
        }
    }
    // A shard cut short: refused before anything is written; an existing output is left untouched.
    const std::vector<std::uint8_t> before = nwc::read_file(temp.path / "streamed.nwc");
    std::filesystem::path second_shard;
    for (const auto& entry : std::filesystem::directory_iterator(temp.path / "hf"))
        if (entry.path().filename().string().starts_with("model-00002-of-")) second_shard = entry.path();
    REQUIRE(!second_shard.empty());
    std::filesystem::resize_file(second_shard, 1000);
    CHECK(run("compress " + (temp / "hf") + " -o " + (temp / "streamed.nwc")).status == 1);
    CHECK(nwc::read_file(temp.path / "streamed.nwc") == before);
    for (const auto& entry : std::filesystem::directory_iterator(temp.path)) CHECK(entry.path().filename().string().find(".tmp.") == std::string::npos);
}

TEST_CASE("an HF model nwc cannot run compresses without calibration and says so; --calib is refused with the reason", "[cli][data][tool]") {
    const TempDir temp;
    const auto source = temp.path / "qwen2";
    nwc::llm::write_hf_llama(source, nwc::read_llama_weights(data("stories260K.bin")), nwc::dtype::bf16);
    nlohmann::json config = nwc::llm::detail::read_json_file(source / "config.json");
    config["architectures"] = {"Qwen2ForCausalLM"};
    config["model_type"] = "qwen2";
    const std::string text = config.dump(2);
    nwc::write_file_atomic(source / "config.json", {reinterpret_cast<const std::uint8_t*>(text.data()), text.size()});
    const std::vector<std::uint8_t> tokenizer_model{0x0A, 0x00, 0xFF, 0x13};  // travels byte for byte to a directory output
    nwc::write_file_atomic(source / "tokenizer.model", tokenizer_model);

    const Result plain = run("compress " + (temp / "qwen2") + " -o " + (temp / "q.nwc") + " --target-bpw 4");
    INFO(plain.out);
    REQUIRE(plain.status == 0);
    CHECK_THAT(plain.out, Catch::Contains("(hf, tcq)") && Catch::Contains("Qwen2ForCausalLM") && Catch::Contains("without calibration"));
    const nlohmann::json report = json_of(run("compress " + (temp / "qwen2") + " -o " + (temp / "q2.nwc") + " --step 0.3 --json"));
    CHECK(report["source_format"] == "hf");
    CHECK_THAT(report["forward_pass_missing"].get<std::string>(), Catch::Contains("qwen2"));
    const Result calibrated = run("compress " + (temp / "qwen2") + " -o " + (temp / "q3.nwc") + " --calib " + quoted_data("tinystories_calib.txt") +
                                  " --tokenizer " + quoted_data("tok512.bin"));
    CHECK(calibrated.status == 1);
    CHECK_FALSE(std::filesystem::exists(temp.path / "q3.nwc"));
    const Result back = run("decompress " + (temp / "q.nwc") + " -o " + (temp / "back") + "/");
    REQUIRE(back.status == 0);
    CHECK_THAT(back.out, Catch::Contains("1 other files"));
    CHECK(nwc::llm::detail::read_json_file(temp.path / "back" / "config.json") == config);
    CHECK(nwc::read_file(temp.path / "back" / "tokenizer.model") == tokenizer_model);
    const Result single = run("decompress " + (temp / "q.nwc") + " -o " + (temp / "single.safetensors"));
    REQUIRE(single.status == 0);
    CHECK_THAT(single.out, Catch::Contains("written only to a directory output"));
    CHECK(run("decompress " + (temp / "q.nwc") + " -o " + (temp / "q.bin")).status == 1);
}

}  // namespace nwc_test_cli
