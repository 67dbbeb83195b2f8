// One line per event on stderr (or the --log file): "kiln-nbd: LEVEL: message".
#pragma once

#include <cstdarg>
#include <string>

namespace kiln::nbd {

enum class LogLevel { kError, kWarn, kInfo, kDebug };

void set_log_level(LogLevel level);
bool log_enabled(LogLevel level);
// Sends log lines to `path` (reopened on reopen_log()); empty = stderr.
void set_log_file(const std::string& path);
void reopen_log();
void logf(LogLevel level, const char* fmt, ...) __attribute__((format(printf, 2, 3)));

}  // namespace kiln::nbd
