// What the fuzz targets call a finding, and the oracle every parser target shares: a parser of
// client (or registry) input may refuse it only with a coppice::Error of a 4xx status. Any
// other exception reaches the API as a 500 (api.cc) and is a bug.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>
#include <typeinfo>

#include "common/error.h"

namespace coppice::fuzz {

// Aborts with `what` (libFuzzer then saves the input as a crash artifact).
[[noreturn]] inline void finding(const std::string& what) {
  std::fprintf(stderr, "==coppice-fuzz== FINDING: %s\n", what.c_str());
  std::fflush(stderr);
  std::abort();
}

// Runs `f`; returns true when it returned, false when it threw a 4xx coppice::Error, and
// reports a finding for anything else it throws.
template <typename F>
bool only_client_errors(const char* what, F&& f) {
  try {
    f();
    return true;
  } catch (const Error& e) {
    if (e.status() < 400 || e.status() >= 500)
      finding(std::string(what) + ": Error " + std::to_string(e.status()) + ": " + e.what());
    return false;
  } catch (const std::exception& e) {
    finding(std::string(what) + ": " + typeid(e).name() + " escaped: " + e.what());
  }
}

}  // namespace coppice::fuzz
