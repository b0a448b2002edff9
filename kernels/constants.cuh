// Generated from fusedopt/constants.py by `python -m fusedopt.backends.cuda.codegen
// --write`: do not edit. What each constant means is said there.
#pragma once

namespace fusedopt {

enum Flavor { KERAS = 0, TORCH_L2 = 1, TORCH_DECOUPLED = 2 };
enum Mode { PLAIN = 0, MASTER = 1, REMAINDER = 2, KAHAN = 3, STOCHASTIC = 4 };
enum Limits { MAX_SLOTS = 4 };

}  // namespace fusedopt
