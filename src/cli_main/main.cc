// coppice: the command-line client (see src/cli/app.h).
#include "cli/app.h"

int main(int argc, char** argv) {
  return coppice::cli::run_cli(argc, argv);
}
