// The boot pipeline as data: one table of steps, each with its task state, its work and its
// undo, and the one runner that goes through it forwards (boot) and backwards (rollback, delete).
// A step is added here, with its undo, or not at all; its name is then in the instance's steps,
// the events, KILN_SPAWN_FAIL_AT and `kiln-spawn help` without more.
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <cstdio>
#include <cstdlib>

#include "build.h"
#include "kiln/spawn/error.h"

namespace kiln::spawn {

std::span<const Compute::Step> Compute::steps() {
  using R = Step::Record;
  // Nova's task states: scheduling (the claim), networking (the port), block_device_mapping
  // (the disk and what goes on it), spawning (the domain).
  static constexpr Step kSteps[] = {
      {"claim", "scheduling", &Compute::claim, &Compute::unclaim, R::kByWork},
      {"port", "networking", &Compute::step_port, &Compute::undo_port},
      {"overlay", "block_device_mapping", &Compute::step_overlay, &Compute::undo_overlay},
      {"config_drive", "block_device_mapping", &Compute::step_config_drive,
       &Compute::undo_config_drive},
      // Its writes are inside the overlay, which the overlay's undo removes.
      {"inject", "block_device_mapping", &Compute::step_inject, &Compute::nothing_to_undo},
      {"export", "block_device_mapping", &Compute::step_export, &Compute::undo_export},
      {"domain", "spawning", &Compute::step_domain, &Compute::undo_domain},
      // Waiting makes nothing; the domain's undo stops what it waited for.
      {"wait", "spawning", &Compute::step_wait, &Compute::nothing_to_undo},
  };
  return kSteps;
}

const std::vector<std::string>& build_steps() {
  static const std::vector<std::string> kNames = [] {
    std::vector<std::string> v;
    for (const auto& s : Compute::steps()) v.emplace_back(s.name);
    return v;
  }();
  return kNames;
}

void Compute::nothing_to_undo(Instance&) {}

namespace {

volatile std::sig_atomic_t g_interrupted = 0;

bool fault_injected_at(const char* step) {
  const char* f = std::getenv(kFailAtEnv);
  return f && std::string(f) == step;
}

}  // namespace

void interrupt_boot() { g_interrupted = 1; }
bool interrupted() { return g_interrupted != 0; }

namespace {
// Sleeps until SIGINT or SIGTERM (whose handlers call interrupt_boot()) has come. The two are
// blocked while the flag is checked and let in only by sigsuspend(): a `while (!interrupted())
// pause();` loses a signal that comes between its check and its pause, and sleeps on (a test
// that sent one SIGTERM waited 11 minutes).
void wait_for_interrupt() {
  sigset_t block, old;
  sigemptyset(&block);
  sigaddset(&block, SIGINT);
  sigaddset(&block, SIGTERM);
  sigprocmask(SIG_BLOCK, &block, &old);
  sigset_t wait = old;
  sigdelset(&wait, SIGINT);
  sigdelset(&wait, SIGTERM);
  while (!interrupted()) sigsuspend(&wait);
  sigprocmask(SIG_SETMASK, &old, nullptr);
}
}  // namespace

void Compute::run_steps(Build& b, size_t first) {
  Instance& inst = b.inst;
  const auto all = steps();
  for (size_t i = first; i < all.size(); ++i) {
    const Step& s = all[i];
    if (b.remote) return;  // the claim queued the rest for another host's agent
    if (interrupted()) throw system_error(std::string("interrupted before step ") + s.name);
    // Recorded before the work starts: the undo is idempotent and so also covers a step that
    // failed (or died) half-way.
    inst.steps_done.emplace_back(s.name);
    inst.task_state = s.task_state;
    if (s.record == Step::Record::kBeforeWork) save(inst, std::string("step ") + s.name);
    try {
      (this->*s.work)(b);
    } catch (...) {
      // Its transaction was rolled back: nothing of the step exists, not even its record.
      if (s.record == Step::Record::kByWork) inst.steps_done.pop_back();
      throw;
    }
    if (fault_injected_at(s.name))
      throw system_error(std::string("fault injected at step ") + s.name + " (" + kFailAtEnv + ")");
    if (const char* p = std::getenv(kPauseAtEnv); p && std::string(p) == s.name) {
      // Test hook: stand still after the step's work until killed, to show what a build that
      // dies there leaves behind (delete must clean it all).
      std::fprintf(stderr, "kiln-spawn: paused after step %s (%s)\n", p, kPauseAtEnv);
      wait_for_interrupt();
    }
  }
}

void Compute::undo_steps(Instance& inst, std::vector<std::string>* errors) {
  const auto all = steps();
  for (auto s = all.rbegin(); s != all.rend(); ++s) {
    auto done = [&] { return std::find(inst.steps_done.begin(), inst.steps_done.end(), s->name); };
    if (done() == inst.steps_done.end()) continue;
    try {
      (this->*s->undo)(inst);
      inst.steps_done.erase(done());
      save(inst, std::string("undid step ") + s->name);
    } catch (const std::exception& e) {
      errors->push_back(std::string(s->name) + ": " + e.what());
    }
  }
  // A name this kiln-spawn has no step for (a record written by another version): what it made
  // is not known, so it is not forgotten either.
  for (const auto& name : inst.steps_done)
    if (std::none_of(all.begin(), all.end(), [&](const Step& s) { return name == s.name; }))
      errors->push_back(name + ": no such build step here; its work cannot be undone");
}

}  // namespace kiln::spawn
