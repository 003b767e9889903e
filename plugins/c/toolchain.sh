# Sourced by the C plugins' build and test scripts: the C toolchain for WebAssembly, from Debian
# (clang, lld, wasi-libc, compiler-rt's builtins for wasm32), installed with apt-get when missing
# and this runs as root; and `wasm-c` (tools/wasm-c), built in this repository's workspace.
# Defines c_toolchain_wasm (checks or installs the packages, builds wasm-c into $WASM_C) and
# c_toolchain_native (a C compiler for the native tests, in $CC).

c_toolchain_fail() { printf '%s: %s\n' "${c_toolchain_who:-plugins/c}" "$*" >&2; exit 1; }

# Installs Debian packages, as root, or fails saying what to install.
c_toolchain_install() {
    local why="$1"; shift
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
        c_toolchain_fail "$why: install $* (Debian/Ubuntu: sudo apt-get install $*)"
    fi
    printf '%s: %s: apt-get install %s\n' "${c_toolchain_who:-plugins/c}" "$why" "$*" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null ||
        c_toolchain_fail "$why and apt-get install $* failed: install them (apt-get install $*)"
}

c_toolchain_native() {
    CC="${CC:-}"
    if [ -z "$CC" ]; then
        for cc in cc clang gcc; do command -v "$cc" >/dev/null && CC="$cc" && break; done
    fi
    [ -n "$CC" ] || { c_toolchain_install "no C compiler for the native tests" clang; CC=clang; }
}

c_toolchain_wasm() {
    command -v clang >/dev/null || c_toolchain_install "clang is missing" clang lld wasi-libc
    local major
    major="$(clang -dumpversion | cut -d. -f1)"
    local missing=()
    command -v wasm-ld >/dev/null || missing+=(lld)
    [ -f /usr/lib/wasm32-wasi/libc.a ] || missing+=(wasi-libc)
    [ -f "$(clang --target=wasm32-wasi -print-libgcc-file-name)" ] ||
        missing+=("libclang-rt-$major-dev-wasm32")
    [ ${#missing[@]} -eq 0 ] ||
        c_toolchain_install "the WebAssembly parts of the C toolchain are missing" "${missing[@]}"

    # wasm-c, from the workspace (built already when weir's tests run).
    local repo
    repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
    command -v cargo >/dev/null || c_toolchain_fail "cargo is not installed: it builds tools/wasm-c"
    (cd "$repo" && cargo build --quiet --locked -p wasm-c) ||
        c_toolchain_fail "could not build tools/wasm-c"
    WASM_C="${CARGO_TARGET_DIR:-$repo/target}/debug/wasm-c"
}
