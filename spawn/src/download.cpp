#include "download.h"

#include <curl/curl.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <mutex>
#include <optional>

#include "kiln/spawn/error.h"

namespace kiln::spawn {

namespace {

std::string lower_scheme(const std::string& url) {
  auto colon = url.find("://");
  if (colon == std::string::npos) return "";
  std::string s = url.substr(0, colon);
  std::transform(s.begin(), s.end(), s.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

struct Transfer {
  const DownloadOptions& opt;
  const std::function<void(const void*, size_t)>& sink;
  uint64_t received = 0;
  // Why a callback stopped the transfer; curl's own code would only say "write error".
  std::optional<Error> stopped;
  bool shown = false;
  std::chrono::steady_clock::time_point last_shown{};
};

size_t on_data(char* p, size_t size, size_t n, void* user) {
  auto* t = static_cast<Transfer*>(user);
  size_t len = size * n;
  if (t->received + len > t->opt.max_bytes) {
    t->stopped = invalid("larger than the limit of " + std::to_string(t->opt.max_bytes) +
                         " bytes (--max-size)");
    return 0;
  }
  try {
    t->sink(p, len);
  } catch (const Error& e) {
    t->stopped = e;
    return 0;
  } catch (const std::exception& e) {
    t->stopped = system_error(e.what());
    return 0;
  }
  t->received += len;
  return len;
}

int on_progress(void* user, curl_off_t total, curl_off_t now, curl_off_t, curl_off_t) {
  auto* t = static_cast<Transfer*>(user);
  if (t->opt.interrupted && t->opt.interrupted()) {
    t->stopped = system_error("interrupted");
    return 1;
  }
  if (!t->opt.progress) return 0;
  auto clock = std::chrono::steady_clock::now();
  if (clock - t->last_shown < std::chrono::milliseconds(100)) return 0;
  t->last_shown = clock;
  auto mib = [](curl_off_t b) { return static_cast<unsigned long long>(b >> 20); };
  if (total > 0)
    std::fprintf(stderr, "\rkiln-spawn: downloading: %3d%% (%llu/%llu MiB)",
                 static_cast<int>(now * 100 / total), mib(now), mib(total));
  else
    std::fprintf(stderr, "\rkiln-spawn: downloading: %llu MiB", mib(now));
  t->shown = true;
  return 0;
}

void global_init() {
  static std::once_flag once;
  std::call_once(once, [] {
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
      throw system_error("cannot initialise libcurl");
  });
}

struct Easy {
  CURL* h = curl_easy_init();
  Easy() {
    if (!h) throw system_error("cannot initialise libcurl");
  }
  ~Easy() { curl_easy_cleanup(h); }
  Easy(const Easy&) = delete;
  Easy& operator=(const Easy&) = delete;
  template <typename T>
  void set(CURLoption o, T v) {
    CURLcode rc = curl_easy_setopt(h, o, v);
    if (rc != CURLE_OK)
      throw system_error(std::string("libcurl option refused: ") + curl_easy_strerror(rc));
  }
};

}  // namespace

bool is_supported_url(const std::string& url) {
  std::string s = lower_scheme(url);
  return s == "file" || s == "http" || s == "https";
}

void download(const std::string& url, const DownloadOptions& opt,
              const std::function<void(const void*, size_t)>& sink) {
  if (!is_supported_url(url))
    throw invalid("unsupported URL '" + url + "': only file://, http:// and https:// are accepted");
  global_init();
  Easy e;
  Transfer t{opt, sink, 0, std::nullopt, false, {}};
  char errbuf[CURL_ERROR_SIZE] = {};
  e.set(CURLOPT_URL, url.c_str());
  e.set(CURLOPT_PROTOCOLS_STR, "file,http,https");
  e.set(CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
  e.set(CURLOPT_FOLLOWLOCATION, 1L);
  e.set(CURLOPT_MAXREDIRS, kMaxRedirects);
  e.set(CURLOPT_FAILONERROR, 1L);
  e.set(CURLOPT_NOSIGNAL, 1L);
  e.set(CURLOPT_CONNECTTIMEOUT, 30L);
  e.set(CURLOPT_LOW_SPEED_LIMIT, 1L);
  e.set(CURLOPT_LOW_SPEED_TIME, kStallSeconds);
  e.set(CURLOPT_MAXFILESIZE_LARGE, static_cast<curl_off_t>(opt.max_bytes));
  e.set(CURLOPT_USERAGENT, "kiln-spawn");
  e.set(CURLOPT_ERRORBUFFER, errbuf);
  e.set(CURLOPT_WRITEFUNCTION, on_data);
  e.set(CURLOPT_WRITEDATA, &t);
  e.set(CURLOPT_NOPROGRESS, 0L);
  e.set(CURLOPT_XFERINFOFUNCTION, on_progress);
  e.set(CURLOPT_XFERINFODATA, &t);
  CURLcode rc = curl_easy_perform(e.h);
  if (t.shown) std::fprintf(stderr, "\n");
  const std::string what = "cannot download " + url + ": ";
  if (t.stopped) throw Error(t.stopped->reason(), what + t.stopped->what());
  if (rc == CURLE_OK) return;
  long status = 0;
  curl_easy_getinfo(e.h, CURLINFO_RESPONSE_CODE, &status);
  std::string detail = errbuf[0] ? errbuf : curl_easy_strerror(rc);
  switch (rc) {
    case CURLE_HTTP_RETURNED_ERROR:
      throw invalid(what + "the server answered HTTP " + std::to_string(status));
    case CURLE_PARTIAL_FILE:
      throw invalid(what + "truncated: the transfer ended before the announced size (" + detail +
                    ")");
    case CURLE_FILESIZE_EXCEEDED:
      throw invalid(what + "larger than the limit of " + std::to_string(opt.max_bytes) +
                    " bytes (--max-size)");
    case CURLE_TOO_MANY_REDIRECTS:
      throw invalid(what + "more than " + std::to_string(kMaxRedirects) + " redirects");
    case CURLE_UNSUPPORTED_PROTOCOL:
      throw invalid(what + "redirected to a URL scheme that is not accepted (" + detail + ")");
    case CURLE_FILE_COULDNT_READ_FILE:
      throw not_found(what + detail);
    default:
      throw system_error(what + detail);
  }
}

}  // namespace kiln::spawn
