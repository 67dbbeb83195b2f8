// Big-endian field access for NBD messages.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "kiln/block/endian.h"

namespace kiln::nbd {

inline uint16_t get16(const uint8_t* p) { return block::load_be16(p); }
inline uint32_t get32(const uint8_t* p) { return block::load_be32(p); }
inline uint64_t get64(const uint8_t* p) { return block::load_be64(p); }
inline void put16(uint8_t* p, uint16_t v) { block::store_be16(p, v); }
inline void put32(uint8_t* p, uint32_t v) { block::store_be32(p, v); }
inline void put64(uint8_t* p, uint64_t v) { block::store_be64(p, v); }

// Appends big-endian fields to a byte vector.
class Builder {
 public:
  Builder& u16(uint16_t v) {
    grow(2);
    put16(&b_[b_.size() - 2], v);
    return *this;
  }
  Builder& u32(uint32_t v) {
    grow(4);
    put32(&b_[b_.size() - 4], v);
    return *this;
  }
  Builder& u64(uint64_t v) {
    grow(8);
    put64(&b_[b_.size() - 8], v);
    return *this;
  }
  Builder& str(const std::string& s) {
    b_.insert(b_.end(), s.begin(), s.end());
    return *this;
  }
  Builder& zeros(size_t n) {
    b_.resize(b_.size() + n, 0);
    return *this;
  }
  std::vector<uint8_t>& bytes() { return b_; }
  size_t size() const { return b_.size(); }

 private:
  void grow(size_t n) { b_.resize(b_.size() + n); }
  std::vector<uint8_t> b_;
};

}  // namespace kiln::nbd
