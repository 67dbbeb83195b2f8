// kiln-fs's CRC32C for libext2fs (fusefs/src/crc32c.cpp): the same sums as the library's own
// definition, and the definition the library's calls reach.
#include <dlfcn.h>
#include <ext2fs/ext2fs.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <vector>

namespace {

using Crc32cFn = __u32 (*)(__u32, unsigned char const*, size_t);

// libext2fs's own ext2fs_crc32c_le: a lookup in the library's scope finds the library first.
Crc32cFn library_definition() {
  void* lib = dlopen("libext2fs.so.2", RTLD_NOW | RTLD_NOLOAD);
  if (lib == nullptr) return nullptr;
  auto fn = reinterpret_cast<Crc32cFn>(dlsym(lib, "ext2fs_crc32c_le"));
  dlclose(lib);
  return fn;
}

TEST(Crc32c, LibraryCallsReachOurs) {
  // What the library's PLT entry binds to: the first definition in the global scope.
  EXPECT_EQ(reinterpret_cast<void*>(dlsym(RTLD_DEFAULT, "ext2fs_crc32c_le")),
            reinterpret_cast<void*>(&ext2fs_crc32c_le));
  Crc32cFn lib = library_definition();
  ASSERT_NE(lib, nullptr);
  EXPECT_NE(reinterpret_cast<void*>(lib), reinterpret_cast<void*>(&ext2fs_crc32c_le));
}

TEST(Crc32c, KnownAnswer) {
  // CRC-32C of "123456789" with the usual inversion before and after.
  const unsigned char text[] = "123456789";
  EXPECT_EQ(~ext2fs_crc32c_le(~0u, text, 9), 0xe3069283u);
  EXPECT_EQ(ext2fs_crc32c_le(0x1234u, text, 0), 0x1234u);
}

TEST(Crc32c, SameSumsAsTheLibrary) {
  Crc32cFn lib = library_definition();
  ASSERT_NE(lib, nullptr);
  std::mt19937_64 rng(16);
  std::vector<unsigned char> buf(70000);
  for (auto& b : buf) b = static_cast<unsigned char>(rng());
  std::vector<size_t> lengths;
  for (size_t n = 0; n <= 1600; ++n) lengths.push_back(n);
  for (size_t n : {2303, 2304, 2305, 3071, 3072, 4095, 4096, 4097, 8192, 65536, 69990}) {
    lengths.push_back(n);
  }
  for (size_t n : lengths) {
    for (size_t offset : {0, 1, 3, 7}) {
      const uint32_t seed = static_cast<uint32_t>(rng());
      ASSERT_EQ(ext2fs_crc32c_le(seed, buf.data() + offset, n), lib(seed, buf.data() + offset, n))
          << "length " << n << " offset " << offset;
    }
  }
}

}  // namespace
