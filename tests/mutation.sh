#!/bin/sh
# Mutation testing of massboot's pure cores against the unit tests alone (README "Tests",
# "Mutation testing"). Slow and CPU-heavy: not run by CI. Usage, from the checkout's root:
#
#     tests/mutation.sh [MODULE[:NAME,NAME...]]...
#
# MODULE is a path such as massboot/tftp/packet.py; NAME limits the run to one class or
# top-level function of it (massboot/dhcp/leases/index.py:_Index). Without arguments the default
# set below is run. Each module is mutated in a scratch copy of the checkout (nothing is
# written here; KEEP=1 keeps the copy for `mutmut show NAME`), the survivors are listed and
# the score printed: killed / (mutants - skipped), a mutant that hangs a test counting as
# killed. PYTHON (default: tests/run.sh's .venv-test, else python3) needs the test
# requirements, mutmut among them; NICE (default 10) and TESTS (default tests/unit) can be
# changed too.
set -eu

ROOT=$(cd "$(dirname "$0")/.." && pwd)
if [ -z "${PYTHON:-}" ]; then
    PYTHON=python3
    if [ -x "$ROOT/.venv-test/bin/python" ]; then
        PYTHON="$ROOT/.venv-test/bin/python"
    fi
fi
NICE=${NICE:-10}
TESTS=${TESTS:-tests/unit}

if [ $# -eq 0 ]; then
    # the pure cores: codecs, the transfer state machine, the lease index, the ACL rule table,
    # name resolution and confinement, the sans-IO DHCP exchange, the sans-IO HTTP core
    set -- massboot/tftp/packet.py massboot/tftp/transfer.py massboot/dhcp/packet.py \
        massboot/dhcp/leases/index.py:_Index massboot/acl.py:RuleTable massboot/files/names.py \
        massboot/dhcp/exchange.py massboot/http/protocol.py
fi

"$PYTHON" -c "import mutmut" 2>/dev/null || {
    echo "mutation.sh: $PYTHON has no mutmut (pip install -r requirements-test.txt)" >&2
    exit 2
}

SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/massboot-mutation.XXXXXX")
if [ -n "${KEEP:-}" ]; then
    echo "mutation.sh: keeping $SCRATCH (mutmut show NAME in its work.* directories)" >&2
else
    trap 'rm -rf "$SCRATCH"' EXIT INT TERM
fi
summary="$SCRATCH/summary"
: >"$summary"

for spec in "$@"; do
    module=${spec%%:*}
    names=""
    [ "$module" != "$spec" ] && names=${spec#*:}
    if [ ! -f "$ROOT/$module" ]; then
        echo "mutation.sh: no such module: $module" >&2
        exit 2
    fi
    work="$SCRATCH/work.$(echo "$module" | tr / _)"
    mkdir -p "$work"
    # the package, the tests and the pytest settings, and what the tests read besides (the
    # README's tables, deploy/'s configs, bench/'s TFTP client); mutmut copies them into
    # work/mutants/
    cp -r "$ROOT/massboot" "$ROOT/tests" "$ROOT/pyproject.toml" "$work/"
    also=""
    for extra in README.rst deploy bench; do
        if [ -e "$ROOT/$extra" ]; then
            cp -r "$ROOT/$extra" "$work/"
            also="$also${also:+, }\"$extra\""
        fi
    done
    find "$work" -name __pycache__ -prune -exec rm -rf {} +
    cat >>"$work/pyproject.toml" <<TOML

[tool.mutmut]
source_paths = ["massboot"]
also_copy = [$also]
only_mutate = ["$module"]
pytest_add_cli_args_test_selection = ["$TESTS"]
# pytest-timeout ends a mutant that loops for ever (a hang is a kill); the fork server keeps
# mutmut's own process free of the tests' gevent monkey-patching, which stops its timeout thread
pytest_add_cli_args = ["-p", "no:cacheprovider", "-q", "-x", "--timeout=30"]
process_isolation = "forkserver"
use_git_change_detection = false
TOML
    dotted=$(echo "${module%.py}" | tr / .)
    globs=""
    if [ -n "$names" ]; then
        for name in $(echo "$names" | tr , ' '); do
            # mutmut's names: module.xǁClassǁmethod__mutmut_N and module.x_function__mutmut_N
            globs="$globs $dotted.xǁ${name}ǁ* $dotted.x_${name}__mutmut_*"
        done
    else
        globs="$dotted.*"
    fi
    echo "== $spec" >&2
    # shellcheck disable=SC2086 # the globs are words, mutmut matches them itself
    (cd "$work" && nice -n "$NICE" "$PYTHON" -m mutmut run $globs >"$SCRATCH/run.log" 2>&1) || {
        tail -n 30 "$SCRATCH/run.log" >&2
        echo "mutation.sh: mutmut failed on $spec" >&2
        exit 1
    }
    (cd "$work" && "$PYTHON" -m mutmut results --all true 2>/dev/null) >"$SCRATCH/results"
    "$PYTHON" - "$spec" "$dotted" "$names" "$SCRATCH/results" >>"$summary" <<'PY'
import fnmatch, sys
spec, dotted, names, path = sys.argv[1:]
globs = ([f"{dotted}.xǁ{n}ǁ*" for n in names.split(",")] + [f"{dotted}.x_{n}__mutmut_*" for n in names.split(",")]
         if names else [f"{dotted}.*"])
counts: dict[str, int] = {}
survivors = []
for line in open(path, encoding="utf-8"):
    name, sep, status = line.strip().rpartition(": ")
    if not sep or not any(fnmatch.fnmatchcase(name, g) for g in globs):
        continue
    counts[status] = counts.get(status, 0) + 1
    if status not in ("killed", "timeout", "skipped"):
        survivors.append(f"    {status}: {name}")
total = sum(counts.values()) - counts.get("skipped", 0)
killed = counts.get("killed", 0) + counts.get("timeout", 0)
score = 100.0 * killed / total if total else 0.0
print(f"{score:5.1f} %  {killed}/{total}  {spec}  " + " ".join(f"{k}={v}" for k, v in sorted(counts.items())))
print("\n".join(survivors), file=sys.stderr)
PY
done
echo "== mutation scores (killed / mutants, unit tests only)"
cat "$summary"
