#include "kiln/common/cli.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <iostream>
#include <sstream>

namespace kiln::common::cli {
namespace {

std::string usage_error(const std::function<void()>& f) {
  try {
    f();
  } catch (const UsageError& e) {
    EXPECT_EQ(e.reason(), Reason::kInvalidArgument);
    return e.what();
  }
  ADD_FAILURE() << "no UsageError";
  return "";
}

const std::vector<Option> kNbdLike = {
    {"-k|--socket", kValue}, {"-r|--read-only"}, {"-t|--persistent"}, {"--export", kValue}};

TEST(CliArgs, ShortAndLongSpellings) {
  for (const auto& argv : std::vector<std::vector<std::string>>{{"-k", "/s", "img"},
                                                                {"-k/s", "img"},
                                                                {"--socket", "/s", "img"},
                                                                {"--socket=/s", "img"},
                                                                {"img", "--socket=/s"}}) {
    Args a = parse(argv, kNbdLike);
    EXPECT_EQ(a.get("--socket"), "/s");
    EXPECT_EQ(a.get("-k"), "/s");  // any spelling names the option
    EXPECT_EQ(a.positional(), std::vector<std::string>{"img"});
  }
}

TEST(CliArgs, BundledShortFlagsAndValue) {
  Args a = parse({"-rtk", "/s"}, kNbdLike);
  EXPECT_TRUE(a.flag("--read-only"));
  EXPECT_TRUE(a.flag("-t"));
  EXPECT_EQ(a.get("--socket"), "/s");
  Args b = parse({"-rk/s"}, kNbdLike);
  EXPECT_EQ(b.get("-k"), "/s");
  EXPECT_FALSE(parse({}, kNbdLike).flag("-r"));
}

TEST(CliArgs, RepeatableOptionsKeepTheirOrder) {
  Args a = parse({"--export", "a=1", "-r", "--export=b=2"}, kNbdLike);
  EXPECT_EQ(a.all("--export"), (std::vector<std::string>{"a=1", "b=2"}));
  EXPECT_EQ(a.get("--export"), "b=2");  // the last one
  ASSERT_EQ(a.items().size(), 3u);
  EXPECT_EQ(a.items()[1].name, "--read-only");
}

TEST(CliArgs, DoubleDashEndsOptions) {
  Args a = parse({"vm1", "--", "--literal", "-r"}, kNbdLike);
  EXPECT_EQ(a.positional(), (std::vector<std::string>{"vm1", "--literal", "-r"}));
  EXPECT_FALSE(a.flag("-r"));
  EXPECT_EQ(parse({"-"}, kNbdLike).positional(), std::vector<std::string>{"-"});  // stdin
}

TEST(CliArgs, SubcommandStopsGlobalOptions) {
  Rules r;
  r.stop_at_positional = true;
  Args g = parse({"--format", "json", "net-create", "--shared", "x"}, {{"-f|--format", kValue}}, r);
  EXPECT_EQ(g.get("-f"), "json");
  EXPECT_EQ(g.rest(), (std::vector<std::string>{"net-create", "--shared", "x"}));
  Args c = parse({"--shared", "x", "--format", "table"}, {{"-f|--format", kValue}, {"--shared"}});
  g.merge(c);
  EXPECT_EQ(g.get("--format"), "table");  // given after the command: the later one wins
  EXPECT_TRUE(g.flag("--shared"));
  EXPECT_EQ(g.positional(), std::vector<std::string>{"x"});
}

TEST(CliArgs, NegativeNumbersArePositionalWhenAsked) {
  Rules r;
  r.negative_numbers_are_positional = true;
  EXPECT_EQ(parse({"cpu_allocation_ratio", "-2"}, {}, r).positional().size(), 2u);
  EXPECT_EQ(usage_error([] { parse({"-2"}, {}); }), "unknown option -2");
}

TEST(CliArgs, NeutronSpellings) {
  Rules r;
  r.neutron = true;
  Args a = parse({"demo-net", "--provider:network_type", "vxlan", "--provider:segmentation_id=1",
                  "--router:external=True", "--tenant_id", "demo", "--shared=False"},
                 {{"--router:external"},
                  {"--shared"},
                  {"--provider:network-type", kValue},
                  {"--provider:segmentation-id", kValue},
                  {"--tenant-id", kValue}},
                 r);
  EXPECT_EQ(a.positional(0, "NAME"), "demo-net");
  EXPECT_EQ(a.get("--provider:network-type"), "vxlan");
  EXPECT_EQ(a.number("--provider:segmentation-id", 1, 16777215), 1u);
  EXPECT_TRUE(a.flag("--router:external"));
  EXPECT_FALSE(a.flag("--shared"));
  EXPECT_EQ(a.get("--tenant-id"), "demo");
  EXPECT_EQ(usage_error([&] { parse({"--shared=maybe"}, {{"--shared"}}, r); }),
            "--shared: 'maybe' is not True or False");
}

// The neutron client's lists: "--opt list=true A B" gives --opt every argument up to the next
// option; without Rules::neutron "list=true" is an ordinary value.
TEST(CliArgs, NeutronListTrue) {
  Rules r;
  r.neutron = true;
  const std::vector<Option> opts = {{"--dns-nameservers", kValue}, {"--name", kValue}};
  Args a = parse(
      {"net", "--dns_nameservers", "list=true", "8.8.8.8", "8.8.4.4", "--name", "s", "10.0.0.0/24"},
      opts, r);
  EXPECT_EQ(a.all("--dns-nameservers"), (std::vector<std::string>{"8.8.8.8", "8.8.4.4"}));
  EXPECT_EQ(a.get("--name"), "s");
  EXPECT_EQ(a.positional(), (std::vector<std::string>{"net", "10.0.0.0/24"}));
  Args last = parse({"--dns-nameservers", "list=true", "1.1.1.1"}, opts, r);
  EXPECT_EQ(last.all("--dns-nameservers"), std::vector<std::string>{"1.1.1.1"});
  EXPECT_EQ(usage_error([&] {
              parse({"--dns-nameservers", "list=true"}, opts, r);
            }),
            "option --dns-nameservers list=true needs at least one value");
  EXPECT_EQ(usage_error([&] {
              parse({"--dns-nameservers", "list=true", "--name", "x"}, opts, r);
            }),
            "option --dns-nameservers list=true needs at least one value");
  Args plain = parse({"--dns-nameservers", "list=true", "8.8.8.8"}, opts);
  EXPECT_EQ(plain.get("--dns-nameservers"), "list=true");
  EXPECT_EQ(plain.positional(), std::vector<std::string>{"8.8.8.8"});
}

// The messages users see (kiln-net's walkthrough compares "unknown option --bogus").
TEST(CliArgs, MistakesAreOneLineUsageErrors) {
  EXPECT_EQ(usage_error([] { parse({"--bogus"}, kNbdLike); }), "unknown option --bogus");
  EXPECT_EQ(usage_error([] { parse({"-z"}, kNbdLike); }), "unknown option -z");
  EXPECT_EQ(usage_error([] { parse({"-rz"}, kNbdLike); }), "unknown option -z");
  EXPECT_EQ(usage_error([] { parse({"--socket"}, kNbdLike); }), "option --socket needs a value");
  EXPECT_EQ(usage_error([] { parse({"-k"}, kNbdLike); }), "option -k needs a value");
  EXPECT_EQ(usage_error([] { parse({"--read-only=1"}, kNbdLike); }),
            "option --read-only takes no value");
  EXPECT_EQ(usage_error([] { parse({std::string(5000, 'x')}, {}); }),
            "argument longer than 4096 characters");
  // No abbreviations: "--sock" is not guessed to be --socket.
  EXPECT_EQ(usage_error([] { parse({"--sock=x"}, kNbdLike); }), "unknown option --sock");
  // A control character cannot break the line.
  EXPECT_EQ(usage_error([] { parse({"--a\nb"}, {}); }), "unknown option --a?b");
  Args a = parse({"x", "y"}, {});
  EXPECT_EQ(usage_error([&] { a.positional(2, "FILE"); }), "missing argument FILE");
  EXPECT_EQ(usage_error([&] { a.max_positional(1); }), "unexpected argument 'y'");
}

// Whole strings only, within the range; the error names the thing, the text and the range.
TEST(CliNumbers, DecimalIsStrictAndRangeChecked) {
  EXPECT_EQ(parse_number("0", "port", 0, 65535), 0u);
  EXPECT_EQ(parse_number("65535", "port", 0, 65535), 65535u);
  EXPECT_EQ(parse_number("4294967295", "id", 1, 0xffffffff), 4294967295u);
  EXPECT_EQ(parse_number("010", "n", 0, 100), 10u);
  EXPECT_EQ(parse_number("18446744073709551615", "n", 0, UINT64_MAX), UINT64_MAX);
  EXPECT_EQ(usage_error([] { parse_number("80x", "port", 1, 65535); }),
            "Invalid port '80x' (expected a whole number from 1 to 65535)");
  for (const char* bad : {"", " 80", "80 ", "+80", "-1", "0x50", "8e1", "1.5", "65536", "0",
                          "99999999999999999999", "18446744073709551616"}) {
    const std::string m = usage_error([&] { parse_number(bad, "port", 1, 65535); });
    EXPECT_EQ(m.rfind(std::string("Invalid port '") + bad + "' (", 0), 0u) << m;
  }
}

TEST(CliNumbers, HexAndLeadingZeros) {
  EXPECT_EQ(parse_number("0x10", "n", 0, 100, Radix::kDecimalOrHex), 16u);
  EXPECT_EQ(parse_number("0XfF", "n", 0, 1000, Radix::kDecimalOrHex), 255u);
  EXPECT_EQ(parse_number("0", "n", 0, 100, Radix::kDecimalOrHex), 0u);
  EXPECT_NE(usage_error([] {
              parse_number("010", "n", 0, 100, Radix::kDecimalOrHex);
            }).find("leading zero"),
            std::string::npos);
  for (const char* bad : {"0x", "0xg", "x10", "0x101", "-0x1"})
    usage_error([&] { parse_number(bad, "n", 0, 256, Radix::kDecimalOrHex); });
}

TEST(CliNumbers, Octal) {
  EXPECT_EQ(parse_number("0755", "mode", 0, 07777, Radix::kOctal), 0755u);
  EXPECT_EQ(parse_number("7777", "mode", 0, 07777, Radix::kOctal), 07777u);
  EXPECT_EQ(usage_error([] { parse_number("0799", "mode", 0, 07777, Radix::kOctal); }),
            "Invalid mode '0799' (expected an octal number from 0 to 7777)");
  usage_error([] { parse_number("17777", "mode", 0, 07777, Radix::kOctal); });
}

TEST(CliNumbers, OptionValues) {
  Args a = parse({"--n", "x1", "--m", "7"}, {{"--n", kValue}, {"--m", kValue}});
  EXPECT_EQ(usage_error([&] { a.number("--n", 0, 10); }),
            "Invalid --n 'x1' (expected a whole number from 0 to 10)");
  EXPECT_EQ(a.number("--m", 0, 10), 7u);
  EXPECT_FALSE(a.number("--absent", 0, 10));
}

TEST(CliBool, Spellings) {
  for (const char* t : {"True", "true", "1", "yes", "ON"}) EXPECT_TRUE(parse_bool(t, "x"));
  for (const char* f : {"False", "false", "0", "no", "off"}) EXPECT_FALSE(parse_bool(f, "x"));
  usage_error([] { parse_bool("", "x"); });
}

TEST(CliCommands, TableLookupAndListing) {
  struct Ctx {
    int seen = 0;
  };
  CommandTable<Ctx> table = {
      {"net-create", "NAME [--shared]", {{"--shared"}}, [](Ctx& c) { return c.seen = 1; }},
      {"apply", "", {}, [](Ctx& c) { return c.seen = 2; }},
  };
  const auto* cmd = find_command(table, "apply");
  ASSERT_NE(cmd, nullptr);
  Ctx ctx;
  EXPECT_EQ(cmd->run(ctx), 2);
  EXPECT_EQ(find_command(table, "nope"), nullptr);
  std::ostringstream out;
  print_commands(out, table);
  EXPECT_EQ(out.str(), "  net-create NAME [--shared]\n  apply\n");
}

TEST(CliCommands, InvocationWithGlobalOptionsOnBothSides) {
  struct Ctx {};
  CommandTable<Ctx> table = {{"net-create", "NAME", {{"--shared"}}, [](Ctx&) { return 0; }}};
  const std::vector<Option> global = {{"-f|--format", kValue}, {"--help"}};
  auto inv = parse_invocation({"-f", "json", "net-create", "x", "--shared", "--format=table"},
                              global, {}, table, "kiln-x");
  ASSERT_EQ(inv.command, &table[0]);
  EXPECT_EQ(inv.args.get("--format"), "table");
  EXPECT_TRUE(inv.args.flag("--shared"));
  EXPECT_EQ(inv.args.positional(), std::vector<std::string>{"x"});
  EXPECT_EQ(parse_invocation({"--help"}, global, {}, table, "kiln-x").command, nullptr);
  EXPECT_EQ(parse_invocation({"help"}, global, {}, table, "kiln-x").command, nullptr);
  EXPECT_EQ(usage_error([&] { parse_invocation({"frob"}, global, {}, table, "kiln-x"); }),
            "unknown command 'frob' (see kiln-x help)");
  // A command's options belong to it: --shared before the command is unknown.
  EXPECT_EQ(usage_error([&] {
              parse_invocation({"--shared", "net-create"}, global, {}, table, "kiln-x");
            }),
            "unknown option --shared");
}

// run_main: one line on stderr, the exit code by kind of error.
int run(const Program& p, std::vector<std::string> argv,
        const std::function<int(const std::vector<std::string>&)>& body, std::string* err,
        std::string* out = nullptr) {
  argv.insert(argv.begin(), p.name);
  std::vector<char*> c;
  for (auto& s : argv) c.push_back(s.data());
  testing::internal::CaptureStderr();
  testing::internal::CaptureStdout();
  int rc = run_main(p, static_cast<int>(c.size()), c.data(), body);
  std::string o = testing::internal::GetCapturedStdout();
  *err = testing::internal::GetCapturedStderr();
  if (out) *out = o;
  return rc;
}

TEST(CliRunMain, ErrorsBecomeOneLineAndAnExitCode) {
  Program p{"kiln-test", nullptr, 2, false};
  std::string err;
  EXPECT_EQ(run(
                p, {}, [](auto&) -> int { throw UsageError("unknown option --x"); }, &err),
            2);
  EXPECT_EQ(err, "kiln-test: unknown option --x\n");
  EXPECT_EQ(run(
                p, {}, [](auto&) -> int { throw not_found("network 'n' not found"); }, &err),
            3);
  EXPECT_EQ(err, "kiln-test: network 'n' not found\n");
  EXPECT_EQ(run(
                p, {}, [](auto&) -> int { throw busy("in use"); }, &err),
            1);
  EXPECT_EQ(run(
                p, {}, [](auto&) -> int { throw ExitError("leaks", 3); }, &err),
            3);
  EXPECT_EQ(err, "kiln-test: leaks\n");
  EXPECT_EQ(run(
                p, {}, [](auto&) -> int { throw std::runtime_error("boom"); }, &err),
            1);
  EXPECT_EQ(run(
                p, {}, [](auto&) -> int { throw std::bad_alloc(); }, &err),
            1);
  EXPECT_EQ(err, "kiln-test: out of memory\n");
  EXPECT_EQ(run(
                p, {"a", "b"}, [](auto& a) { return static_cast<int>(a.size()); }, &err),
            2);
  EXPECT_EQ(err, "");

  Program q{"kiln-q", nullptr, 1, true, &exit_one};
  EXPECT_EQ(run(
                q, {}, [](auto&) -> int { throw UsageError("bad"); }, &err),
            1);
  EXPECT_EQ(err, "kiln-q: bad (kiln-q --help)\n");
  EXPECT_EQ(run(
                q, {}, [](auto&) -> int { throw not_found("gone"); }, &err),
            1);
}

TEST(CliRunMain, VersionAndHelp) {
  Program p{"kiln-test", [](std::ostream& o) { o << "Usage: kiln-test [OPTIONS]\n"; }};
  std::string err, out;
  auto never = [](auto&) -> int { throw std::logic_error("body ran"); };
  EXPECT_EQ(run(p, {"--version"}, never, &err, &out), 0);
  EXPECT_EQ(out.rfind("kiln-test ", 0), 0u);
  EXPECT_EQ(run(p, {"--help"}, never, &err, &out), 0);
  EXPECT_EQ(out, "Usage: kiln-test [OPTIONS]\n");
  EXPECT_EQ(run(p, {"-h"}, never, &err, &out), 0);
  EXPECT_EQ(out, "Usage: kiln-test [OPTIONS]\n");
}

// `kiln-img info > /dev/full` must not succeed: what could not be written is an error.
TEST(CliRunMain, FailedWriteToStdoutIsAnError) {
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    int full = ::open("/dev/full", O_WRONLY);
    int null = ::open("/dev/null", O_WRONLY);
    if (full < 0 || null < 0 || dup2(full, 1) < 0 || dup2(null, 2) < 0) _exit(99);
    char name[] = "kiln-test";
    char* argv[] = {name, nullptr};
    int rc = run_main({"kiln-test", nullptr, 2, false, &exit_code}, 1, argv, [](auto&) {
      std::cout << std::string(100000, 'x') << "\n";
      return 0;
    });
    _exit(rc);
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 1);
}

}  // namespace
}  // namespace kiln::common::cli
