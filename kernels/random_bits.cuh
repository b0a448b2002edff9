// Counter-based random bits for stochastic rounding: a pure function of
// (seed, step, param position, element index, array), so every element draws its own bits
// on any thread, in any order, on the GPU or the host, with the same result.
//
// The generator is a strong 32-bit integer hash, chained over the key words:
//   mix(x):      x ^= x >> 16; x *= 0x21f0aaad; x ^= x >> 15; x *= 0x735a2d97; x ^= x >> 15
//                (a bijection of 32-bit words with full avalanche; constants from Wellons'
//                hash search, "lowbias32" family)
//   base      = mix(mix(mix(seed ^ 0x9e3779b9) ^ step) ^ position)       once per tensor
//   element   = mix(mix(base ^ (i >> 32)) ^ (i & 0xffffffff))             once per element
//   bits(0)   = element;  bits(a) = mix(element ^ (a * 0x9e3779b9))      per array a > 0
// with seed, step (the 1-based step the tensor is at) and position (the param's position
// in the optimizer) taken modulo 2^32, i the element's index in its tensor, and a the array
// the value is stored to: 0 the param, 1 + k state slot k. The param takes the element's
// hash itself, so a store of the param alone (float32 state) costs one mix per element and
// each bf16 state slot one more. Integer operations only, so the CPU backend (fusedopt/backends/cpu/random_bits.py) and the unfused backend (fusedopt/backends/rounding.py,
// NumPy uint32) compute the same words.
#pragma once

namespace fusedopt {

FUSEDOPT_DEVICE unsigned int mix32(unsigned int x) {
    x ^= x >> 16;
    x *= 0x21f0aaadu;
    x ^= x >> 15;
    x *= 0x735a2d97u;
    x ^= x >> 15;
    return x;
}

constexpr unsigned int GOLDEN = 0x9e3779b9u;

// The key of one tensor at one step: its stream (seed << 32 | position, a table row) and
// the step.
FUSEDOPT_DEVICE unsigned int stream_base(long long stream, long long step) {
    const unsigned int seed = static_cast<unsigned int>(static_cast<unsigned long long>(stream) >> 32);
    const unsigned int position = static_cast<unsigned int>(stream & 0xffffffffLL);
    return mix32(mix32(mix32(seed ^ GOLDEN) ^ static_cast<unsigned int>(step)) ^ position);
}

FUSEDOPT_DEVICE unsigned int element_hash(unsigned int base, long long i) {
    const unsigned long long u = static_cast<unsigned long long>(i);
    return mix32(mix32(base ^ static_cast<unsigned int>(u >> 32)) ^ static_cast<unsigned int>(u));
}

FUSEDOPT_DEVICE unsigned int array_bits(unsigned int element, int array) {
    return array == 0 ? element : mix32(element ^ (static_cast<unsigned int>(array) * GOLDEN));
}

}  // namespace fusedopt
