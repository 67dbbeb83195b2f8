// run_main(): the one place where a tool's errors become a line on stderr and an exit code.
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <new>

#include "kiln/common/cli.h"
#include "kiln/version.h"

namespace kiln::common::cli {

int exit_one(const Error&) { return 1; }

void print_version(std::ostream& out, const std::string& name) {
  out << name << " " << KILN_VERSION << "\n";
}

namespace {

// What was printed goes out before the error line, so that the two keep their order.
void flush_output() {
  std::cout.flush();
  std::fflush(stdout);
}

int report(const Program& p, const std::string& message, int code) {
  flush_output();
  std::cerr << p.name << ": " << message << "\n";
  return code;
}

}  // namespace

int run_main(const Program& p, int argc, char** argv,
             const std::function<int(const std::vector<std::string>&)>& body) {
  std::vector<std::string> args(argv + (argc > 0 ? 1 : 0), argv + argc);
  int rc;
  try {
    if (args.size() == 1 && args[0] == "--version") {
      print_version(std::cout, p.name);
      rc = 0;
    } else if (!args.empty() && (args[0] == "--help" || args[0] == "-h") && p.help) {
      p.help(std::cout);
      rc = 0;
    } else {
      rc = body(args);
    }
  } catch (const UsageError& e) {
    return report(p, std::string(e.what()) + (p.usage_hint ? " (" + p.name + " --help)" : ""),
                  p.usage_exit);
  } catch (const ExitError& e) {
    return report(p, e.what(), e.exit_code());
  } catch (const Error& e) {
    return report(p, e.what(), p.error_exit(e));
  } catch (const std::bad_alloc&) {
    return report(p, "out of memory", 1);
  } catch (const std::exception& e) {
    return report(p, e.what(), 1);
  }
  std::cout.flush();
  if (std::cout.fail() || std::fflush(stdout) != 0 || std::ferror(stdout)) {
    std::cerr << p.name << ": error writing to standard output: " << std::strerror(errno) << "\n";
    return 1;
  }
  return rc;
}

}  // namespace kiln::common::cli
