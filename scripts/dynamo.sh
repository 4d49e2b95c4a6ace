#!/usr/bin/env bash
# NVIDIA Dynamo's KVBM G4 (object) client, the crates.io crate `kvbm-engine` (pinned in
# connectors/dynamo/Cargo.toml), built outside kvtier's workspace and run against kvtier.
#
#   scripts/dynamo.sh install       the Debian packages its build needs (protoc for velo's
#                                   gRPC, libclang and g++ for nixl-sys' bindings), the build
#                                   (once; target under $KVTIER_CACHE/dynamo), and NIXL's
#                                   runtime (PyPI's nixl-cu12 wheel, in a venv there): a KVBM
#                                   layout is registered with NIXL even in host memory
#   scripts/dynamo.sh test ENDPOINT ACCESS_KEY SECRET_KEY
#                                   Dynamo's own `s3_integration` tests against that S3
#                                   endpoint (they create their buckets)
#   scripts/dynamo.sh g4 ENDPOINTS ACCESS_KEY SECRET_KEY MAX_OBJECT
#                                   connectors/dynamo/tests/g4.rs: KVBM's G4 client as KVBM
#                                   uses it, through each of ENDPOINTS (comma-separated),
#                                   whose s3.max_object_size is MAX_OBJECT
#   scripts/dynamo.sh bench ACCESS_KEY SECRET_KEY ARGS...
#                                   connectors/dynamo/examples/g4_bench.rs with ARGS (what
#                                   `kvtier-bench dynamo` runs; it starts the servers)
#   scripts/dynamo.sh native GRPC_ENDPOINTS SHM_SOCKETS MAX_BLOCK
#                                   connectors/dynamo/tests/native.rs: kvtier's native G4
#                                   client through each member (comma-separated gRPC
#                                   addresses, the same members' shared-memory sockets, and
#                                   their max_block_size in bytes)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
manifest="$root/connectors/dynamo/Cargo.toml"
cache="${KVTIER_CACHE:-$HOME/.cache/kvtier}/dynamo"
export CARGO_TARGET_DIR="$cache/target"
nixl_version="1.5.1"
# kvtier's tests run this under cargo, which sets variables for the crate it runs (CARGO_PKG_*,
# CARGO_MANIFEST_DIR, ...): build scripts here would see another environment and rebuild
# everything each time. Only those go (a user's CARGO_NET_*, registries and proxies stay).
for var in $(compgen -e); do
    case "$var" in
    CARGO | CARGO_PKG_* | CARGO_MANIFEST_* | CARGO_CRATE_NAME | CARGO_BIN_* | CARGO_PRIMARY_PACKAGE | \
        CARGO_TARGET_TMPDIR | CARGO_RUSTC_CURRENT_DIR | OUT_DIR | RUSTC_BOOTSTRAP) unset "$var" ;;
    esac
done

packages() {
    local missing=()
    command -v protoc >/dev/null || missing+=(protobuf-compiler)
    compgen -G "/usr/lib/llvm-*/lib/libclang.so*" >/dev/null || missing+=(libclang-dev)
    command -v g++ >/dev/null || missing+=(g++)
    if ((${#missing[@]})); then
        apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

# NIXL's C API and plugins from the wheel (its libraries only: --no-deps).
nixl() {
    if [[ ! -x "$cache/nixl/bin/python" ]]; then
        python3 -m venv "$cache/nixl" >&2
    fi
    "$cache/nixl/bin/python" -c "import importlib.metadata as m; assert m.version('nixl-cu12') == '$nixl_version'" 2>/dev/null ||
        "$cache/nixl/bin/pip" install --quiet --no-deps "nixl-cu12==$nixl_version" >&2
    local site
    site="$("$cache/nixl/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    export LD_LIBRARY_PATH="$site/.nixl_cu12.mesonpy.libs:$site/nixl_cu12.libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    export NIXL_PLUGIN_DIR="$site/nixl_cu12.libs/nixl"
}

install() {
    packages
    nixl
    cargo test --locked --manifest-path "$manifest" -p kvbm-engine --no-run >&2
    cargo test --locked --manifest-path "$manifest" --tests --no-run >&2
    cargo build --locked --manifest-path "$manifest" --examples >&2
}

# Credentials as the AWS default chain reads them (what KVBM's client uses).
credentials() {
    export AWS_ACCESS_KEY_ID="$1" AWS_SECRET_ACCESS_KEY="$2" AWS_DEFAULT_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true
}

case "${1:-}" in
install) install ;;
test)
    install
    credentials "$3" "$4"
    S3_TEST_ENDPOINT="$2" cargo test --locked --manifest-path "$manifest" -p kvbm-engine s3_integration
    ;;
g4)
    install
    credentials "$3" "$4"
    KVTIER_S3_ENDPOINTS="$2" KVTIER_S3_MAX_OBJECT="$5" cargo test --locked --manifest-path "$manifest" --test g4
    ;;
bench)
    install
    credentials "$2" "$3"
    shift 3
    cargo run --locked --quiet --manifest-path "$manifest" --example g4_bench -- "$@"
    ;;
native)
    install
    KVTIER_GRPC_ENDPOINTS="$2" KVTIER_SHM_SOCKETS="$3" KVTIER_MAX_BLOCK_SIZE="$4" cargo test --locked --manifest-path "$manifest" --test native
    ;;
*)
    echo "usage: $0 install | test ENDPOINT ACCESS_KEY SECRET_KEY | g4 ENDPOINTS ACCESS_KEY SECRET_KEY MAX_OBJECT | native GRPC_ENDPOINTS SHM_SOCKETS MAX_BLOCK | bench ACCESS_KEY SECRET_KEY ARGS..." >&2
    exit 2
    ;;
esac
