// Drives the block layer API directly on one thread: N requests in flight, 4 KiB (or --bs)
// random reads or writes, for a duration or a number of requests. Prints one JSON line.
//
//   kiln-block-bench --image FILE [--format qcow2] --rw randread|randwrite|cow
//                    [--bs 4096] [--qd 32] [--seconds 10]
//
// `cow` writes --bs bytes into every cluster once, in random order, so that on a fresh
// overlay every request allocates a cluster and copies the rest of it from the backing file.
#include <getopt.h>
#include <sys/resource.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "kiln/block/device.h"

using namespace kiln::block;
using Clock = std::chrono::steady_clock;

namespace {

struct Options {
  std::string image, format, rw = "randread";
  uint64_t bs = 4096;
  unsigned qd = 32;
  double seconds = 10;
  uint64_t cluster = 65536;
};

struct State {
  BlockDevice* dev;
  const Options* opt;
  Clock::time_point deadline;
  std::mt19937_64 rng{42};
  std::vector<uint64_t> order;  // cow: cluster indices still to write
  size_t next = 0;
  uint64_t done = 0, errors = 0;
  std::vector<double> latencies_us;
};

Task<void> worker(State* s) {
  std::vector<uint8_t> buf(s->opt->bs, 0x5a);
  const uint64_t blocks = s->dev->size() / s->opt->bs;
  while (Clock::now() < s->deadline) {
    uint64_t off;
    if (s->opt->rw == "cow") {
      if (s->next >= s->order.size()) break;
      off = s->order[s->next++] * s->opt->cluster;
    } else {
      off = (s->rng() % blocks) * s->opt->bs;
    }
    auto t0 = Clock::now();
    int rc = s->opt->rw == "randread" ? co_await s->dev->read(off, buf)
                                      : co_await s->dev->write(off, buf, 0);
    s->latencies_us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
    if (rc < 0) ++s->errors;
    ++s->done;
  }
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  static option longopts[] = {{"image", 1, nullptr, 'i'},   {"format", 1, nullptr, 'f'},
                              {"rw", 1, nullptr, 'w'},      {"bs", 1, nullptr, 'b'},
                              {"qd", 1, nullptr, 'q'},      {"seconds", 1, nullptr, 's'},
                              {"cluster", 1, nullptr, 'c'}, {nullptr, 0, nullptr, 0}};
  for (int c; (c = getopt_long(argc, argv, "", longopts, nullptr)) != -1;) {
    switch (c) {
      case 'i':
        o.image = optarg;
        break;
      case 'f':
        o.format = optarg;
        break;
      case 'w':
        o.rw = optarg;
        break;
      case 'b':
        o.bs = parse_size(optarg);
        break;
      case 'q':
        o.qd = unsigned(std::stoul(optarg));
        break;
      case 's':
        o.seconds = std::stod(optarg);
        break;
      case 'c':
        o.cluster = parse_size(optarg);
        break;
      default:
        return 2;
    }
  }
  if (o.image.empty()) {
    fprintf(stderr, "kiln-block-bench: --image is required\n");
    return 2;
  }
  try {
    Reactor r(1024);
    OpenOptions oo;
    oo.format = o.format;
    oo.read_only = o.rw == "randread";
    auto dev = r.run(open_image(r, o.image, oo));
    State s;
    s.dev = dev.get();
    s.opt = &o;
    if (o.rw == "cow") {
      s.order.resize(dev->size() / o.cluster);
      std::iota(s.order.begin(), s.order.end(), 0);
      std::shuffle(s.order.begin(), s.order.end(), s.rng);
    }
    rusage ru0, ru1;
    getrusage(RUSAGE_SELF, &ru0);
    auto start = Clock::now();
    s.deadline = start + std::chrono::duration_cast<Clock::duration>(
                             std::chrono::duration<double>(o.seconds));
    WaitGroup wg(r);
    for (unsigned i = 0; i < o.qd; ++i) r.spawn(worker(&s), &wg);
    r.run([](WaitGroup* g) -> Task<void> { co_await g->wait(); }(&wg));
    const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
    getrusage(RUSAGE_SELF, &ru1);
    if (o.rw != "randread") r.run(dev->close());
    auto cpu = [](const rusage& a, const rusage& b) {
      auto tv = [](const timeval& t) { return double(t.tv_sec) + double(t.tv_usec) / 1e6; };
      return tv(b.ru_utime) - tv(a.ru_utime) + tv(b.ru_stime) - tv(a.ru_stime);
    };
    std::sort(s.latencies_us.begin(), s.latencies_us.end());
    const double p99 = s.latencies_us.empty()
                           ? 0
                           : s.latencies_us[size_t(double(s.latencies_us.size() - 1) * 0.99)];
    printf(
        "{\"rw\":\"%s\",\"bs\":%llu,\"qd\":%u,\"ops\":%llu,\"errors\":%llu,\"seconds\":%.3f,"
        "\"iops\":%.0f,\"mbps\":%.1f,\"p99_us\":%.1f,\"cpu_seconds\":%.3f,\"max_rss_kb\":%ld}\n",
        o.rw.c_str(), (unsigned long long)o.bs, o.qd, (unsigned long long)s.done,
        (unsigned long long)s.errors, elapsed, double(s.done) / elapsed,
        double(s.done * o.bs) / elapsed / 1e6, p99, cpu(ru0, ru1), ru1.ru_maxrss);
    return s.errors ? 1 : 0;
  } catch (const std::exception& e) {
    fprintf(stderr, "kiln-block-bench: %s\n", e.what());
    return 1;
  }
}
