// Runs an nftables script through libnftables in the current network namespace.
#pragma once

#include <cstdint>
#include <set>
#include <string>

namespace kiln::net {

// Throws Error(kIo) with nft's own message when the script is refused.
void run_nft(const std::string& script);
// Output of a listing command ("list table inet kiln_sg"), or "" if it fails.
std::string nft_output(const std::string& command);
// The generation id of the current namespace's nftables ruleset: it changes with every
// committed transaction, whoever made it.
uint32_t nft_generation();
// An anonymous set of the given elements, as nft writes it: "{ a, b }".
std::string nft_set(const std::set<std::string>& elements);

}  // namespace kiln::net
