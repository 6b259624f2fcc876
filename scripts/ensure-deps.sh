#!/usr/bin/env bash
# Installs what the build and the tests need, skipping what is already there.
# Usage: scripts/ensure-deps.sh [wasm] [redis] [sqlite3] [kafka] [chromium] [node] [compose] [genai-prices] [sdk-clients] [litellm]
#
# Tools fetched once (Apache Kafka's jars from Maven Central) go to
# $CACHE_DIR/tools (default ~/.cache/llm-billing/tools), outside the clone,
# and are reused.
set -euo pipefail

say() { printf '==> %s\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        say "need root to run: $*"; return 1
    fi
}

apt_install_pkg() { # apt_install_pkg PACKAGE (no command to probe)
    say "installing $1 (Debian package)"
    export DEBIAN_FRONTEND=noninteractive
    as_root apt-get install -y -q "$1" >/dev/null 2>&1 || { as_root apt-get update -q >/dev/null && as_root apt-get install -y -q "$1" >/dev/null; }
}

python_venv() { # python_venv NAME REQUIREMENTS: a virtualenv in the tools cache, reinstalled when REQUIREMENTS changes
    apt_install python3 python3
    python3 -c 'import venv, ensurepip' 2>/dev/null || apt_install_pkg python3-venv
    local venv="${CACHE_DIR:-$HOME/.cache/llm-billing}/tools/$1" want_sum
    want_sum=$(sha256sum "$2" | cut -d' ' -f1)
    if [ "$(cat "$venv/requirements.sha256" 2>/dev/null)" != "$want_sum" ]; then
        say "installing $(grep -v '^#' "$2" | tr '\n' ' ')into $venv (PyPI, once)"
        rm -rf "$venv"
        python3 -m venv "$venv"
        "$venv/bin/pip" install -q -r "$2" >&2
        echo "$want_sum" > "$venv/requirements.sha256"
    fi
}

apt_install() { # apt_install COMMAND PACKAGE
    command -v "$1" >/dev/null 2>&1 && return 0
    say "installing $2 (Debian package)"
    export DEBIAN_FRONTEND=noninteractive
    as_root apt-get install -y -q "$2" >/dev/null 2>&1 || { as_root apt-get update -q >/dev/null && as_root apt-get install -y -q "$2" >/dev/null; }
    command -v "$1" >/dev/null 2>&1 || { say "$2 did not install $1"; return 1; }
}

for want in "${@:-wasm redis sqlite3}"; do
    for w in $want; do
        case "$w" in
            wasm)
                if ! rustup target list --installed | grep -qx wasm32-wasip2; then
                    say "adding the wasm32-wasip2 Rust target"
                    rustup target add wasm32-wasip2
                fi ;;
            redis) apt_install redis-server redis-server ;;
            sqlite3) apt_install sqlite3 sqlite3 ;;
            chromium) apt_install chromium chromium ;;
            compose) apt_install docker-compose docker-compose ;;
            node) apt_install node nodejs; apt_install npm npm ;;
            kafka)
                # Apache Kafka's broker from Maven Central (scripts/kafka/pom.xml names
                # the version); fetched again only when that file changes.
                apt_install java openjdk-17-jre-headless
                apt_install mvn maven
                java_major=$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1)
                if [ "${java_major:-0}" -lt 17 ]; then
                    say "Apache Kafka 4 needs Java 17 or newer; \`java\` here is ${java_major:-unknown} (set PATH or JAVA_HOME to a Java 17+)"
                    exit 1
                fi
                here=$(cd "$(dirname "$0")" && pwd)
                kafka="${CACHE_DIR:-$HOME/.cache/llm-billing}/tools/kafka"
                want_sum=$(sha256sum "$here/kafka/pom.xml" | cut -d' ' -f1)
                if [ "$(cat "$kafka/pom.sha256" 2>/dev/null)" != "$want_sum" ]; then
                    say "fetching Apache Kafka's jars from Maven Central into $kafka/libs (about a minute, once)"
                    rm -rf "$kafka/libs" "$kafka/pom.sha256"
                    mkdir -p "$kafka"
                    mvn -q -B -Dstyle.color=never -f "$here/kafka/pom.xml" dependency:copy-dependencies \
                        -DincludeScope=runtime -DoutputDirectory="$kafka/libs" >&2
                    echo "$want_sum" > "$kafka/pom.sha256"
                fi ;;
            genai-prices)
                # The pydantic genai-prices catalogue and calculator, for the
                # quote's cross-check and the catalogue import.
                python_venv genai-prices "$(cd "$(dirname "$0")" && pwd)/../tests/crosscheck/requirements.txt" ;;
            sdk-clients)
                # The official provider SDKs, the gateway tests' clients.
                python_venv sdk-clients "$(cd "$(dirname "$0")" && pwd)/../tests/sdk/requirements.txt" ;;
            litellm)
                # LiteLLM's proxy, the gateway benchmark's comparison (make bench only).
                python_venv litellm "$(cd "$(dirname "$0")" && pwd)/../tests/bench/litellm-requirements.txt" ;;
            *) say "unknown dependency $w"; exit 2 ;;
        esac
    done
done
