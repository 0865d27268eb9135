// Consumer of an installed nwc: writes a small record with ByteWriter, checksums it, reads it back.
#include <nwc/nwc.hpp>

#include <cstdio>
#include <string>

int main() {
    nwc::ByteWriter writer;
    writer.put_u32(0x3143574Eu);  // "NWC1"
    writer.put_string("layers.0.attention.wq");
    writer.put_f32(0.25f);
    const auto record = writer.bytes();
    const std::uint32_t checksum = nwc::crc32c(record);

    nwc::ByteReader reader(record, "consumer record");
    const std::uint32_t magic = reader.get_u32();
    const std::string name = reader.get_string();
    const float scale = reader.get_f32();
    reader.expect_end();
    if (magic != 0x3143574Eu || name != "layers.0.attention.wq" || scale != 0.25f || nwc::crc32c(record) != checksum) {
        std::printf("byte round trip gave a wrong result\n");
        return 1;
    }
    // A truncated record must throw nwc::error with id errc::truncated, never read past the end.
    try {
        const std::span<const std::uint8_t> first_six_bytes = std::span(record).first(6);
        nwc::ByteReader short_reader(first_six_bytes, "truncated record");
        (void)short_reader.get_u32();
        (void)short_reader.get_string();
        std::printf("reading a truncated record did not throw\n");
        return 1;
    } catch (const nwc::error& e) {
        if (e.id() != nwc::errc::truncated) {
            std::printf("truncated record gave %s\n", e.what());
            return 1;
        }
    }
    std::printf("nwc %s (version %d) via find_package: ok\n", nwc::version_string, nwc::version);
    return 0;
}
