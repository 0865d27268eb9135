// Files in and out: memory-mapped reading and atomic writing.
//
// Nothing is lost: `AtomicFileWriter` writes to a temporary file in the target's directory and
// renames it over the target only on `commit()`. If the writer is destroyed without a commit (an
// exception mid-way, a full disk) the temporary file is removed and an existing target is never
// touched. `max_bytes` lets tests simulate a full disk.
#pragma once

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

#include "nwc/core/config.hpp"
#include "nwc/core/error.hpp"

namespace nwc {

/// A read-only memory map of a whole file (an empty file maps to an empty span).
class MappedFile {
public:
    explicit MappedFile(const std::filesystem::path& path) : m_path(path.string()) {
        const int descriptor = ::open(m_path.c_str(), O_RDONLY | O_CLOEXEC);
        if (descriptor < 0) fail(errc::io, "cannot open '", m_path, "': ", std::strerror(errno));
        struct stat info {};
        if (::fstat(descriptor, &info) != 0 || !S_ISREG(info.st_mode)) {
            ::close(descriptor);
            fail(errc::io, "'", m_path, "' is not a regular file");
        }
        m_size = std::size_t(info.st_size);
        if (m_size > 0) {
            void* address = ::mmap(nullptr, m_size, PROT_READ, MAP_PRIVATE, descriptor, 0);
            if (address == MAP_FAILED) {
                ::close(descriptor);
                fail(errc::io, "cannot map '", m_path, "': ", std::strerror(errno));
            }
            m_data = static_cast<const std::uint8_t*>(address);
        }
        ::close(descriptor);
    }
    MappedFile(const MappedFile&) = delete;
    MappedFile& operator=(const MappedFile&) = delete;
    MappedFile(MappedFile&& other) noexcept : m_path(std::move(other.m_path)), m_data(other.m_data), m_size(other.m_size) {
        other.m_data = nullptr;
        other.m_size = 0;
    }
    ~MappedFile() {
        if (m_data != nullptr) ::munmap(const_cast<std::uint8_t*>(m_data), m_size);
    }

    std::span<const std::uint8_t> bytes() const noexcept { return {m_data, m_size}; }
    std::size_t size() const noexcept { return m_size; }
    const std::string& path() const noexcept { return m_path; }

private:
    std::string m_path;
    const std::uint8_t* m_data = nullptr;
    std::size_t m_size = 0;
};

/// Tells the kernel that the pages wholly inside `bytes` will not be read again soon, so a pipeline
/// that walks a mapped file once does not end up holding all of it: they leave this process
/// (MADV_DONTNEED) but stay in the page cache, so a second pass (rate control) or the next run
/// finds them there. A hint on a file mapping: the contents stay valid (they are read from the file
/// again). Never pass anonymous memory: MADV_DONTNEED would replace it with zeros.
inline void release_pages(std::span<const std::uint8_t> bytes) noexcept {
    const std::uintptr_t page = std::uintptr_t(::sysconf(_SC_PAGESIZE));
    const std::uintptr_t begin = (reinterpret_cast<std::uintptr_t>(bytes.data()) + page - 1) / page * page;
    const std::uintptr_t end = (reinterpret_cast<std::uintptr_t>(bytes.data()) + bytes.size()) / page * page;
    if (end > begin) ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);  // failure only means the pages stay
}
/// release_pages([from, to)) for a walk that hands pages back as it goes: returns where the next
/// range should start (the start of `to`'s page when that is past `from`, else `from`), so that no
/// page straddling two consecutive ranges is left behind.
inline const std::uint8_t* release_pages_until(const std::uint8_t* from, const std::uint8_t* to) noexcept {
    const std::uintptr_t page = std::uintptr_t(::sysconf(_SC_PAGESIZE));
    const std::uintptr_t boundary = reinterpret_cast<std::uintptr_t>(to) / page * page;
    if (to <= from) return from;
    release_pages(std::span<const std::uint8_t>(from, std::size_t(to - from)));
    return boundary > reinterpret_cast<std::uintptr_t>(from) ? from + (boundary - reinterpret_cast<std::uintptr_t>(from)) : from;
}

/// Reads a whole file into memory.
inline std::vector<std::uint8_t> read_file(const std::filesystem::path& path) {
    MappedFile file(path);
    return {file.bytes().begin(), file.bytes().end()};
}

/// Writes a file through a temporary sibling and an atomic rename.
class AtomicFileWriter {
public:
    /// `max_bytes` caps the output (errc::io past it), to test the behaviour on a full disk.
    explicit AtomicFileWriter(const std::filesystem::path& target, std::uint64_t max_bytes = UINT64_MAX)
        : m_target(target), m_max_bytes(max_bytes) {
        std::string pattern = (target.has_parent_path() ? target.parent_path() / ("." + target.filename().string()) : std::filesystem::path("." + target.filename().string())).string() + ".tmp.XXXXXX";
        std::vector<char> name(pattern.begin(), pattern.end());
        name.push_back('\0');
        m_descriptor = ::mkstemp(name.data());
        if (m_descriptor < 0) fail(errc::io, "cannot create a temporary file next to '", target.string(), "': ", std::strerror(errno));
        m_temporary = name.data();
    }
    AtomicFileWriter(const AtomicFileWriter&) = delete;
    AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;
    ~AtomicFileWriter() { abandon(); }

    void write(std::span<const std::uint8_t> bytes) {
        NWC_ASSERT(m_descriptor >= 0);
        if (m_written + bytes.size() > m_max_bytes)
            fail(errc::io, "writing '", m_target.string(), "': no space left (limit of ", m_max_bytes, " bytes)");
        std::size_t done = 0;
        while (done < bytes.size()) {
            const ssize_t count = ::write(m_descriptor, bytes.data() + done, bytes.size() - done);
            if (count < 0) {
                if (errno == EINTR) continue;
                fail(errc::io, "writing '", m_target.string(), "': ", std::strerror(errno));
            }
            done += std::size_t(count);
        }
        m_written += bytes.size();
        write_behind();
    }

    /// Flushes, closes and renames over the target. Only after this does the target change.
    void commit() {
        NWC_ASSERT(m_descriptor >= 0);
        if (::fsync(m_descriptor) != 0 || ::fchmod(m_descriptor, 0644) != 0) fail(errc::io, "flushing '", m_target.string(), "': ", std::strerror(errno));
        const int descriptor = m_descriptor;
        m_descriptor = -1;
        if (::close(descriptor) != 0) fail(errc::io, "closing '", m_target.string(), "': ", std::strerror(errno));
        if (::rename(m_temporary.c_str(), m_target.c_str()) != 0) {
            const int saved = errno;
            ::unlink(m_temporary.c_str());
            m_temporary.clear();
            fail(errc::io, "renaming onto '", m_target.string(), "': ", std::strerror(saved));
        }
        m_temporary.clear();
    }

private:
    // Starts the disk writes of every whole write_behind_bytes written so far without waiting for
    // them, so they overlap the work that produces the next bytes and commit()'s fsync has only the
    // tail left to wait for (a quarter of a streamed `nwc decompress`'s time before: 67 of 280 ms,
    // docs/bench/scale.md). A hint: failure changes nothing, the fsync still flushes everything.
    void write_behind() noexcept {
#ifdef __linux__
        constexpr std::uint64_t write_behind_bytes = std::uint64_t(8) << 20;
        const std::uint64_t end = m_written / write_behind_bytes * write_behind_bytes;
        if (end <= m_started) return;
        ::sync_file_range(m_descriptor, off64_t(m_started), off64_t(end - m_started), SYNC_FILE_RANGE_WRITE);
        m_started = end;
#endif
    }

    void abandon() noexcept {
        if (m_descriptor >= 0) ::close(m_descriptor);
        m_descriptor = -1;
        if (!m_temporary.empty()) ::unlink(m_temporary.c_str());
        m_temporary.clear();
    }

    std::filesystem::path m_target;
    std::string m_temporary;
    int m_descriptor = -1;
    std::uint64_t m_written = 0;
    std::uint64_t m_started = 0;  // the bytes write_behind() has started writing to disk
    std::uint64_t m_max_bytes;
};

/// Writes `bytes` to `path` atomically.
inline void write_file_atomic(const std::filesystem::path& path, std::span<const std::uint8_t> bytes, std::uint64_t max_bytes = UINT64_MAX) {
    AtomicFileWriter writer(path, max_bytes);
    writer.write(bytes);
    writer.commit();
}

}  // namespace nwc
