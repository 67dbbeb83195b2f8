// kiln-nbd-load: a small NBD load generator on libnbd's asynchronous API, for the rows that
// fio's nbd engine cannot run: fio connects without allowing local files in the URI, so it
// cannot read a TLS key (tls-psk-file, tls-certificates). The same client drives the plain
// rows of the TLS comparison, so the two differ by TLS alone.
//
//   kiln-nbd-load URI [--rw=randread|read|randwrite|write] [--bs=4096] [--qd=32]
//                     [--seconds=5] [--size=BYTES]
//
// Prints one JSON object: ops, seconds, iops, mbs, p99_us.
#include <libnbd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

struct Slot {
  Clock::time_point started;
  std::vector<char> buf;
  struct Load* load;
};

struct Load {
  nbd_handle* h;
  std::string rw = "randread";
  uint64_t bs = 4096, qd = 32, seconds = 5, size = 0;
  uint64_t next_seq = 0, done = 0, failed = 0;
  std::vector<struct Slot*> ready;  // completed, to resubmit (libnbd's callbacks may not)
  std::mt19937_64 rng{42};
  std::vector<double> latencies_us;
  Clock::time_point end;
};

[[noreturn]] void die(const std::string& msg) {
  fprintf(stderr, "kiln-nbd-load: %s\n", msg.c_str());
  exit(1);
}

uint64_t number(const char* text, const char* what) {
  char* end = nullptr;
  errno = 0;
  const unsigned long long v = strtoull(text, &end, 10);
  if (errno || end == text || *end || v == 0) die(std::string("invalid ") + what + ": " + text);
  return v;
}

void submit(Slot* s);

int completed(void* user_data, int* error) {
  auto* s = static_cast<Slot*>(user_data);
  Load& l = *s->load;
  if (*error) ++l.failed;
  ++l.done;
  l.latencies_us.push_back(
      std::chrono::duration<double, std::micro>(Clock::now() - s->started).count());
  l.ready.push_back(s);
  return 1;  // retire the command
}

void submit(Slot* s) {
  Load& l = *s->load;
  const uint64_t blocks = l.size / l.bs;
  uint64_t off;
  if (l.rw == "read" || l.rw == "write") {
    off = (l.next_seq++ % blocks) * l.bs;
  } else {
    off = (l.rng() % blocks) * l.bs;
  }
  s->started = Clock::now();
  nbd_completion_callback cb{.callback = completed, .user_data = s, .free = nullptr};
  const bool write = l.rw == "write" || l.rw == "randwrite";
  const int64_t rc = write ? nbd_aio_pwrite(l.h, s->buf.data(), l.bs, off, cb, 0)
                           : nbd_aio_pread(l.h, s->buf.data(), l.bs, off, cb, 0);
  if (rc < 0) die(nbd_get_error());
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) die("usage: kiln-nbd-load URI [--rw=..] [--bs=N] [--qd=N] [--seconds=N]");
  Load l;
  const char* uri = argv[1];
  for (int i = 2; i < argc; ++i) {
    std::string a = argv[i];
    auto val = [&](const char* key) -> const char* {
      const size_t n = strlen(key);
      return a.compare(0, n, key) == 0 ? argv[i] + n : nullptr;
    };
    if (const char* v = val("--rw="))
      l.rw = v;
    else if (const char* v = val("--bs="))
      l.bs = number(v, "--bs");
    else if (const char* v = val("--qd="))
      l.qd = number(v, "--qd");
    else if (const char* v = val("--seconds="))
      l.seconds = number(v, "--seconds");
    else if (const char* v = val("--size="))
      l.size = number(v, "--size");
    else
      die("unknown option " + a);
  }
  if (l.rw != "randread" && l.rw != "read" && l.rw != "randwrite" && l.rw != "write")
    die("--rw must be randread, read, randwrite or write");

  l.h = nbd_create();
  if (!l.h) die(nbd_get_error());
  // Our own command line names the key files: allow them (nbdinfo and nbdcopy do too).
  nbd_set_uri_allow_local_file(l.h, true);
  if (nbd_connect_uri(l.h, uri) < 0) die(nbd_get_error());
  const int64_t export_size = nbd_get_size(l.h);
  if (export_size < 0) die(nbd_get_error());
  if (!l.size || l.size > uint64_t(export_size)) l.size = uint64_t(export_size);
  if (l.size < l.bs) die("export smaller than one block");

  std::vector<Slot> slots(l.qd);
  const auto start = Clock::now();
  l.end = start + std::chrono::seconds(l.seconds);
  for (Slot& s : slots) {
    s.buf.assign(l.bs, char(0x5a));
    s.load = &l;
    submit(&s);
  }
  while (nbd_aio_in_flight(l.h) > 0) {
    if (nbd_poll(l.h, -1) < 0) die(nbd_get_error());
    std::vector<Slot*> again = std::move(l.ready);
    l.ready.clear();
    if (Clock::now() < l.end)
      for (Slot* s : again) submit(s);
  }
  const double secs = std::chrono::duration<double>(Clock::now() - start).count();
  nbd_shutdown(l.h, 0);
  nbd_close(l.h);
  if (l.failed) die(std::to_string(l.failed) + " requests failed");

  std::sort(l.latencies_us.begin(), l.latencies_us.end());
  const double p99 =
      l.latencies_us.empty() ? 0 : l.latencies_us[size_t(0.99 * (l.latencies_us.size() - 1))];
  printf("{\"ops\": %llu, \"seconds\": %.3f, \"iops\": %.1f, \"mbs\": %.1f, \"p99_us\": %.1f}\n",
         (unsigned long long)l.done, secs, l.done / secs, l.done * double(l.bs) / secs / 1e6, p99);
  return 0;
}
