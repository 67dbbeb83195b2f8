// Fetching an image by URL (image-create --url), with libcurl.
//
// What a URL may reach: file://, http:// and https:// only; redirects are followed at most
// kMaxRedirects times and only to http(s) (a web server must not redirect kiln-spawn, which
// runs as root, into the host's files). The body is bounded by `max_bytes` (a server streaming
// forever, or file:///dev/zero, stops there), a transfer that stalls is abandoned, and a body
// shorter than its Content-Length is an error. The caller writes the bytes (to a temporary
// file it removes on failure).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>

namespace kiln::spawn {

inline constexpr long kMaxRedirects = 5;
// Abandon a transfer that moves fewer than 1 byte/s for this long.
inline constexpr long kStallSeconds = 60;

struct DownloadOptions {
  uint64_t max_bytes = 0;
  bool progress = false;  // a progress line on stderr
  // Polled during the transfer; true aborts it ("interrupted").
  std::function<bool()> interrupted;
};

// Calls `sink` with each piece of the body, in order. Throws Error with a message naming the
// URL and the reason (HTTP status, unsupported scheme, too large, truncated, interrupted).
void download(const std::string& url, const DownloadOptions& opt,
              const std::function<void(const void*, size_t)>& sink);

// True for the URL schemes download() accepts (file, http, https; either case).
bool is_supported_url(const std::string& url);

}  // namespace kiln::spawn
