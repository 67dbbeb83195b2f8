// The digests image-create records (GnuTLS, checked against published test vectors), the
// --checksum and --property parsers, and the checksum verification.
#include "hashes.h"

#include <gtest/gtest.h>

#include <string>

#include "kiln/spawn/error.h"
#include "kiln/spawn/images.h"

namespace kiln::spawn {
namespace {

TEST(Hashes, KnownVectorsInOneOrManyPieces) {
  for (size_t piece : {size_t{1}, size_t{2}, size_t{3}}) {
    ImageHashes h;
    const std::string abc = "abc";
    for (size_t i = 0; i < abc.size(); i += piece)
      h.update(abc.data() + i, std::min(piece, abc.size() - i));
    h.finish();
    EXPECT_EQ(h.md5(), "900150983cd24fb0d6963f7d28e17f72");
    EXPECT_EQ(h.sha256(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    EXPECT_EQ(h.sha512(),
              "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a"
              "2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f");
    EXPECT_EQ(h.xxh3().size(), 32u);
  }
}

TEST(Hashes, ParseChecksum) {
  EXPECT_TRUE(parse_checksum("").algo.empty());
  auto c = parse_checksum("md5:900150983CD24FB0D6963F7D28E17F72");
  EXPECT_EQ(c.algo, "md5");
  EXPECT_EQ(c.hex, "900150983cd24fb0d6963f7d28e17f72");
  EXPECT_EQ(parse_checksum("sha256:" + std::string(64, 'a')).algo, "sha256");
  for (const char* bad : {"abc", "sha1:a9993e364706816aba3e25717850c26c9cd0d89d",
                          "md5:", "md5:zz0150983cd24fb0d6963f7d28e17f72", "sha256:abcd"}) {
    EXPECT_THROW(parse_checksum(bad), Error) << bad;
  }
}

TEST(Hashes, VerifyChecksum) {
  ImageHashes h;
  h.update("abc", 3);
  h.finish();
  EXPECT_NO_THROW(verify_checksum(parse_checksum("md5:900150983cd24fb0d6963f7d28e17f72"), h));
  EXPECT_NO_THROW(verify_checksum({}, h));
  try {
    verify_checksum(parse_checksum("sha256:" + std::string(64, '0')), h);
    FAIL() << "a wrong sha256 was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("checksum mismatch"), std::string::npos) << e.what();
  }
}

TEST(Hashes, ParseProperty) {
  auto [k, v] = parse_property("os_distro=debian");
  EXPECT_EQ(k, "os_distro");
  EXPECT_EQ(v, "debian");
  EXPECT_EQ(parse_property("empty=").second, "");
  EXPECT_EQ(parse_property("a=b=c").second, "b=c");
  for (const std::string& bad :
       {std::string("novalue"), std::string("=x"), std::string("checksum=1"),
        std::string("min_ram=1"), std::string(256, 'k') + "=v", "k=" + std::string(256, 'v'),
        std::string("k=a\nb")}) {
    EXPECT_THROW(parse_property(bad), Error) << bad;
  }
}

}  // namespace
}  // namespace kiln::spawn
