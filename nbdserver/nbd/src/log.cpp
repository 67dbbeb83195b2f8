#include "log.h"

#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <ctime>

namespace kiln::nbd {

namespace {
LogLevel g_level = LogLevel::kInfo;
std::string g_path;
int g_fd = 2;
const char* name_of(LogLevel l) {
  switch (l) {
    case LogLevel::kError:
      return "error";
    case LogLevel::kWarn:
      return "warning";
    case LogLevel::kInfo:
      return "info";
    case LogLevel::kDebug:
      return "debug";
  }
  return "";
}
}  // namespace

void set_log_level(LogLevel level) { g_level = level; }
bool log_enabled(LogLevel level) { return level <= g_level; }

void set_log_file(const std::string& path) {
  g_path = path;
  reopen_log();
}

void reopen_log() {
  if (g_path.empty()) return;
  int fd = open(g_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
  if (fd < 0) return;  // keep the old one
  if (g_fd != 2) close(g_fd);
  g_fd = fd;
}

void logf(LogLevel level, const char* fmt, ...) {
  if (!log_enabled(level)) return;
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  tm t;
  gmtime_r(&ts.tv_sec, &t);
  char line[1200];
  int n = snprintf(line, sizeof line, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ kiln-nbd: %s: %s\n",
                   t.tm_year + 1900, t.tm_mon + 1, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec,
                   ts.tv_nsec / 1000000, name_of(level), msg);
  if (n > 0) {
    ssize_t ignored = write(g_fd, line, size_t(std::min<int>(n, int(sizeof line) - 1)));
    (void)ignored;
  }
}

}  // namespace kiln::nbd
