// The host side of a launch: type-checked entry points and a grid/block loop.
//
// Included by the .cpp that tests/cuda_host/build.py generates per kernel family, after the
// family's source. Each entry point is instantiated from its name expression and described
// by its parameter types in NumPy's names, so the Python runtime can check every argument
// the way CuPy would convert it before anything runs.
#pragma once

#include <cstddef>
#include <exception>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>

namespace fusedopt_host {

// NumPy dtype name of a kernel parameter type, or nullptr when CuPy has no plain
// equivalent (``long`` is platform dependent; structs need a custom dtype).
template <typename T> struct DtypeName { static constexpr const char* value = nullptr; };
template <> struct DtypeName<bool> { static constexpr const char* value = "bool"; };
template <> struct DtypeName<char> { static constexpr const char* value = "int8"; };
template <> struct DtypeName<signed char> { static constexpr const char* value = "int8"; };
template <> struct DtypeName<short> { static constexpr const char* value = "int16"; };
template <> struct DtypeName<int> { static constexpr const char* value = "int32"; };
template <> struct DtypeName<long long> { static constexpr const char* value = "int64"; };
template <> struct DtypeName<unsigned char> { static constexpr const char* value = "uint8"; };
template <> struct DtypeName<unsigned short> { static constexpr const char* value = "uint16"; };
template <> struct DtypeName<unsigned int> { static constexpr const char* value = "uint32"; };
template <> struct DtypeName<unsigned long long> { static constexpr const char* value = "uint64"; };
template <> struct DtypeName<float> { static constexpr const char* value = "float32"; };
template <> struct DtypeName<double> { static constexpr const char* value = "float64"; };

// "float32" for a value, "*float32" for a pointer, "?" for a type CuPy cannot pass as is.
template <typename T>
std::string type_code() {
    if constexpr (std::is_pointer_v<T>) {
        const char* name = DtypeName<std::remove_cv_t<std::remove_pointer_t<T>>>::value;
        return name ? std::string("*") + name : std::string("*?");
    } else {
        const char* name = DtypeName<std::remove_cv_t<T>>::value;
        return name ? std::string(name) : std::string("?");
    }
}

template <typename F> struct Kernel;

template <typename... P>
struct Kernel<void (*)(P...)> {
    static std::string signature() {
        std::string out;
        ((out += (out.empty() ? "" : ",") + type_code<P>()), ...);
        return out;
    }
    template <std::size_t... I>
    static void call(void (*kernel)(P...), void** args, std::index_sequence<I...>) {
        kernel(*static_cast<std::decay_t<P>*>(args[I])...);
    }
    static constexpr std::size_t arity = sizeof...(P);
};

struct Entry {
    const char* name;       // the name expression, e.g. "adam<float, 0, 1>"
    std::string signature;  // comma-separated type codes
    void (*run)(void** args);
};

template <auto K>
void run_thread(void** args) {
    using Info = Kernel<decltype(K)>;
    Info::call(K, args, std::make_index_sequence<Info::arity>{});
}

template <auto K>
Entry entry(const char* name) {
    return Entry{name, Kernel<decltype(K)>::signature(), &run_thread<K>};
}

inline thread_local std::string last_error;

inline uint3 index3(unsigned long long i, const unsigned* dims) {
    return uint3{static_cast<unsigned>(i % dims[0]), static_cast<unsigned>(i / dims[0] % dims[1]),
                 static_cast<unsigned>(i / dims[0] / dims[1])};
}

#if defined(FUSEDOPT_HOST_COOPERATIVE)
// One block at a time, its threads as fibers on this OS thread (fibers.h), each pass in
// reverse when ``reverse``. A thread's error (a failed check) ends that thread only, as a
// returning thread would; the block's first error is reported once every thread is done.
struct BlockLaunch {
    const Entry& entry;
    uint3 block;
    const unsigned* dims;
    void** args;
    std::string error;

    static void enter(unsigned t, void* self) {
        const auto& launch = *static_cast<BlockLaunch*>(self);
        block_idx = launch.block;
        thread_idx = index3(t, launch.dims);
    }
    static void body(unsigned, void* self) {
        auto& launch = *static_cast<BlockLaunch*>(self);
        try {
            launch.entry.run(launch.args);
        } catch (const std::exception& failure) {
            if (launch.error.empty()) launch.error = failure.what();
        }
    }
};

inline std::string describe(uint3 i) {
    return "(" + std::to_string(i.x) + ", " + std::to_string(i.y) + ", " + std::to_string(i.z) +
           ")";
}

inline void run_block(const Entry& e, uint3 block, const unsigned* dims, void** args,
                      bool reverse) {
    static thread_local FiberBlock fibers;
    const unsigned n_threads = dims[0] * dims[1] * dims[2];
    BlockLaunch launch{e, block, dims, args, {}};
    fibers.run(n_threads, reverse, &BlockLaunch::body, &BlockLaunch::enter, &launch);
    if (!launch.error.empty()) throw std::runtime_error(launch.error);
    // Every thread must meet every barrier: one that returns early would, on a GPU, leave
    // the others waiting or meeting the wrong __syncthreads.
    for (unsigned t = 1; t < n_threads; ++t) {
        if (fibers.barriers(t) != fibers.barriers(0)) {
            throw std::logic_error(
                "block " + describe(block) + ": thread " + describe(index3(0, dims)) +
                " passed " + std::to_string(fibers.barriers(0)) + " barriers but thread " +
                describe(index3(t, dims)) + " passed " + std::to_string(fibers.barriers(t)) +
                "; every thread of a block must reach the same __syncthreads (a shuffle "
                "is two) - a barrier in code that not every thread runs hangs or "
                "misbehaves on a GPU");
        }
    }
}
#endif

// Every thread of every block, one after another; ``reverse`` runs blocks and threads in
// the opposite order, so a kernel whose result depends on the order is caught. Cooperative
// builds run each block's threads together instead, as fibers (fibers.h).
inline int launch(const Entry& e, const unsigned* grid, const unsigned* block, void** args,
                  int reverse) {
    try {
        grid_dim = dim3(grid[0], grid[1], grid[2]);
        block_dim = dim3(block[0], block[1], block[2]);
        const unsigned long long n_blocks = 1ULL * grid[0] * grid[1] * grid[2];
        const unsigned long long n_threads = 1ULL * block[0] * block[1] * block[2];
        for (unsigned long long b = 0; b < n_blocks; ++b) {
            const uint3 bi = index3(reverse ? n_blocks - 1 - b : b, grid);
#if defined(FUSEDOPT_HOST_COOPERATIVE)
            run_block(e, bi, block, args, reverse != 0);
            (void)n_threads;
#else
            block_idx = bi;
            for (unsigned long long t = 0; t < n_threads; ++t) {
                thread_idx = index3(reverse ? n_threads - 1 - t : t, block);
                e.run(args);
            }
#endif
        }
        return 0;
    } catch (const std::exception& error) {
        last_error = error.what();
        return 1;
    }
}

}  // namespace fusedopt_host

// The C interface the Python runtime loads with ctypes.
#define FUSEDOPT_HOST_EXPORTS(entries)                                                      \
    extern "C" int fusedopt_host_count() {                                                  \
        return static_cast<int>(sizeof(entries) / sizeof(entries[0]));                      \
    }                                                                                       \
    extern "C" const char* fusedopt_host_name(int i) { return entries[i].name; }            \
    extern "C" const char* fusedopt_host_signature(int i) {                                 \
        return entries[i].signature.c_str();                                                \
    }                                                                                       \
    extern "C" int fusedopt_host_launch(int i, const unsigned* grid, const unsigned* block, \
                                        void** args, int reverse) {                         \
        return ::fusedopt_host::launch(entries[i], grid, block, args, reverse);             \
    }                                                                                       \
    extern "C" const char* fusedopt_host_error() {                                          \
        return ::fusedopt_host::last_error.c_str();                                         \
    }
