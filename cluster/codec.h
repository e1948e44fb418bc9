// cluster/codec.h: the wire encoding of ClusterMessage (what the membership actor sends).
//
// A compact little-endian binary format, versioned, independent of CAF's serializer so that the
// membership protocol's wire format is written down in one place, fuzzable and unit-tested:
//
//   byte 0: 'M'   byte 1: kWireVersion   byte 2: kind (variant index)   then the fields in
//   declaration order: integers little-endian at their natural width, bool/enum as one byte,
//   strings and vectors as a u32 count followed by the elements.
//
// decode() validates everything (magic, version, kind, member states, counts against the bytes
// left, trailing bytes, string sizes up to kMaxText) and returns Corruption naming the problem;
// a hostile peer cannot make it allocate more than the message's own size or read out of bounds.
//
// Thread-safety: pure functions.
#pragma once

#include <string>
#include <string_view>

#include "cluster/messages.h"
#include "model/status.h"

namespace ds::cluster {

constexpr uint8_t kWireVersion = 1;
constexpr size_t kMaxText = 64 * 1024;  // the longest string a message may carry

std::string encode(const ClusterMessage& m);
Result<ClusterMessage> decode(std::string_view bytes);

}  // namespace ds::cluster
