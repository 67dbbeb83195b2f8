#include "inject.h"

#include "kiln/fs/filesystem.h"
#include "kiln/fs/inject.h"
#include "kiln/spawn/error.h"

namespace kiln::spawn {

namespace {

std::vector<kiln::fs::Operation> operations(const InjectRequest& req) {
  std::vector<kiln::fs::Operation> ops;
  if (!req.key.empty()) ops.push_back(kiln::fs::Operation::ssh_key("root", req.key));
  ops.push_back(kiln::fs::Operation::hostname(req.hostname));
  for (const auto& [path, content] : req.files)
    ops.push_back(kiln::fs::Operation::file(path, content));
  return ops;
}

}  // namespace

void check_injection(const InjectRequest& req) {
  try {
    kiln::fs::validate(operations(req));
  } catch (const std::exception& e) {
    throw invalid(std::string("--inject: ") + e.what());
  }
}

void inject_into(const std::string& path, const InjectRequest& req,
                 const std::optional<std::string>& key) {
  kiln::fs::OpenOptions o;
  o.format = "qcow2";
  o.key_secret = key;
  try {
    kiln::fs::inject(path, operations(req), o);
  } catch (const std::exception& e) {
    throw system_error(std::string("injection into ") + path + ": " + e.what());
  }
}

}  // namespace kiln::spawn
