#!/usr/bin/env bash
# Build the solution and run every test: the project's one test command (CI runs it via .ci/run).
#
#   bash scripts/test.sh [FILTER]
#
# FILTER goes to `dotnet test --filter`, e.g. "FullyQualifiedName~NbdEndpoint".
#
# 1. Checks the system tools the integration tests run (qemu-img/qemu-nbd, nbdkit and its filters,
#    nbdinfo/nbdcopy, socat, curl, openssl, nginx, systemd-analyze, setpriv, node/npm). If some are missing: as root, apt-get installs them;
#    otherwise prints the apt-get command to run and fails.
#    npm ci of scripts/npm-tools into artifacts/npm-tools (Dockerfile linters, YAML parser).
# 2. dotnet restore, dotnet build -c Release, dotnet test (no rebuild) with TRX files in
#    $TEST_RESULTS_DIR and a per-test hang guard (--blame-hang-timeout).
# 3. Sums the TRX counters. The last line is always "tests: N passed, N failed[, N skipped]".
#    Exit status 0 only if the build succeeded, at least one test ran and none failed.
#
# Environment:
#   TEST_RESULTS_DIR   TRX output directory (default: artifacts/test-results)
#   TEST_HANG_TIMEOUT  a test running longer than this fails the run (default: 5m)
#   TEST_RUN_TIMEOUT   bound on the whole `dotnet test` (default: 75m; CI's budget is 90m)
#   For testing this script: TEST_SH_SIMULATE_MISSING="tool ..." treats those tools as missing,
#   TEST_SH_SIMULATE_NONROOT=1 behaves as if not root.
set -uo pipefail
# One stream: whoever captures stdout and stderr separately still sees the summary as the last line.
exec 2>&1

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_root" || exit 1

solution=ImageioProxy.sln
filter=${1:-}
results_dir=${TEST_RESULTS_DIR:-artifacts/test-results}
case $results_dir in /*) ;; *) results_dir=$repo_root/$results_dir ;; esac
hang_timeout=${TEST_HANG_TIMEOUT:-5m}
run_timeout=${TEST_RUN_TIMEOUT:-75m}

export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1 DOTNET_SKIP_FIRST_TIME_EXPERIENCE=1
# The proxy runs socket continuations inline on the runtime's epoll threads (Program.cs sets
# DOTNET_SYSTEM_NET_SOCKETS_INLINE_COMPLETIONS=1 for itself). The child-process tests (load, crash, shutdown,
# the CLI binary) run it that way. In-process tests keep the runtime default: test code waits synchronously
# in places (an OpenTelemetry shutdown awaited on a socket continuation stalled an epoll thread, and with it
# other tests' sockets), which the proxy's own code never does.

log() { printf 'test.sh: %s\n' "$*" >&2; }

# Prints the closing line and exits. $1 passed, $2 failed, $3 skipped, $4 exit status.
finish() {
  local line="tests: $1 passed, $2 failed"
  if [ "$3" -gt 0 ]; then line="$line, $3 skipped"; fi
  printf '%s\n' "$line"
  exit "$4"
}

# One run at a time per checkout: a second run would rebuild under the first one's test hosts and write its
# TRX files into the same results directory, where the first run's count would pick them up. flock(1) holds
# the lock itself (--close), so a build server left running by this run does not keep it.
if [ -z "${TEST_SH_LOCKED:-}" ] && command -v flock >/dev/null 2>&1; then
  lock_file=$repo_root/artifacts/test.sh.lock
  mkdir -p "$repo_root/artifacts"
  if ! flock -n "$lock_file" true; then
    log "another scripts/test.sh run is under way in this checkout; waiting for it to finish"
  fi
  TEST_SH_LOCKED=1 exec flock --close "$lock_file" bash "${BASH_SOURCE[0]}" "$@"
fi

# ---------------------------------------------------------------------------------------------------
# 1. System tools
# ---------------------------------------------------------------------------------------------------

# tool:package (Debian 12). nbdkit's filters and basic plugins ship in the nbdkit package itself.
tools=(qemu-img:qemu-utils qemu-nbd:qemu-utils nbdkit:nbdkit nbdinfo:libnbd-bin nbdcopy:libnbd-bin
       socat:socat curl:curl openssl:openssl nginx:nginx
       systemd-analyze:systemd setpriv:util-linux node:nodejs npm:npm)
nbdkit_filters=(error delay pause multi-conn nozero noextents blocksize-policy log exitlast exitwhen exportname)
nbdkit_plugins=(memory file null eval)

have_tool() {
  local t=$1
  if [ "${2:-}" = honour-simulation ]; then
    case " ${TEST_SH_SIMULATE_MISSING:-} " in *" $t "*) return 1 ;; esac
  fi
  command -v "$t" >/dev/null 2>&1 || [ -x "/usr/sbin/$t" ] || [ -x "/sbin/$t" ]
}

# Sets missing_tools and missing_packages (deduplicated).
check_tools() {
  local entry tool package f p
  missing_tools=() missing_packages=()
  for entry in "${tools[@]}"; do
    tool=${entry%%:*} package=${entry#*:}
    if ! have_tool "$tool" "${1:-}"; then
      missing_tools+=("$tool")
      case " ${missing_packages[*]} " in *" $package "*) ;; *) missing_packages+=("$package") ;; esac
    fi
  done
  if have_tool nbdkit "${1:-}"; then
    for p in "${nbdkit_plugins[@]}"; do
      nbdkit "$p" --dump-plugin >/dev/null 2>&1 || missing_tools+=("nbdkit-$p-plugin")
    done
    for f in "${nbdkit_filters[@]}"; do
      nbdkit --filter="$f" null --dump-plugin >/dev/null 2>&1 || missing_tools+=("nbdkit-$f-filter")
    done
    case " ${missing_tools[*]} " in
      *-plugin\ *|*-filter\ *) case " ${missing_packages[*]} " in *" nbdkit "*) ;; *) missing_packages+=(nbdkit) ;; esac ;;
    esac
  fi
}

install_packages() {
  local created_policy=
  export DEBIAN_FRONTEND=noninteractive
  log "installing: ${*}"
  apt-get update -qq || log "apt-get update failed; trying to install anyway"
  # Keep package scripts from starting services (nginx would take port 80): tests start their own.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && created_policy=1
  fi
  apt-get install -y -qq "$@"
  local rc=$?
  if [ -n "$created_policy" ]; then rm -f /usr/sbin/policy-rc.d; fi
  return $rc
}

check_tools honour-simulation
if [ ${#missing_tools[@]} -gt 0 ]; then
  log "missing system tools: ${missing_tools[*]}"
  if [ "$(id -u)" = 0 ] && [ "${TEST_SH_SIMULATE_NONROOT:-}" != 1 ]; then
    if ! install_packages "${missing_packages[@]}"; then
      log "apt-get install failed"
      finish 0 0 0 1
    fi
    check_tools
    if [ ${#missing_tools[@]} -gt 0 ]; then
      log "still missing after installing ${missing_packages[*]}: ${missing_tools[*]}"
      finish 0 0 0 1
    fi
  else
    log "not root, so not installing them. Install them with:"
    printf '    sudo apt-get update && sudo apt-get install -y %s\n' "${missing_packages[*]}" >&2
    finish 0 0 0 1
  fi
fi

if ! command -v dotnet >/dev/null 2>&1; then
  log "dotnet not found: install the .NET 10 SDK (see README.md, Prerequisites)"
  finish 0 0 0 1
fi

# ---------------------------------------------------------------------------------------------------
# 2. Build and test
# ---------------------------------------------------------------------------------------------------

# Linters for deploy/ (dockerfilelint, dockerfile-utils, js-yaml), pinned by scripts/npm-tools/package-lock.json.
npm_tools=artifacts/npm-tools
if [ ! -d "$npm_tools/node_modules" ] || ! cmp -s scripts/npm-tools/package-lock.json "$npm_tools/package-lock.json"; then
  log "npm ci (scripts/npm-tools -> $npm_tools)"
  rm -rf "$npm_tools" && mkdir -p "$npm_tools" && cp scripts/npm-tools/package.json scripts/npm-tools/package-lock.json "$npm_tools/"
  if ! (cd "$npm_tools" && npm ci --no-audit --no-fund --loglevel=error); then
    rm -rf "$npm_tools"
    log "npm ci failed (the npm registry must be reachable)"
    finish 0 0 0 1
  fi
fi

log "dotnet restore"
if ! dotnet restore "$solution" --nologo; then
  log "restore failed"
  finish 0 0 0 1
fi

log "dotnet build -c Release"
if ! dotnet build "$solution" -c Release --no-restore --nologo; then
  log "build failed"
  finish 0 0 0 1
fi

rm -rf "$results_dir"
mkdir -p "$results_dir"
test_args=(test "$solution" -c Release --no-build --nologo
  --results-directory "$results_dir"
  --logger trx
  --logger "console;verbosity=minimal"
  --blame-hang-timeout "$hang_timeout" --blame-hang-dump-type none)
if [ -n "$filter" ]; then test_args+=(--filter "$filter"); fi

log "dotnet test${filter:+ --filter $filter} (hang guard $hang_timeout per test)"
# timeout(1) runs dotnet in its own process group and, when it fires, signals the whole group (test
# hosts and the servers they started). On a terminal that group could not read the tty, so there it
# stays in the foreground and only dotnet itself is timed out.
timeout_args=(--kill-after=30s)
if [ -t 0 ]; then timeout_args+=(--foreground); fi
test_log=$results_dir/dotnet-test.log
timeout "${timeout_args[@]}" "$run_timeout" dotnet "${test_args[@]}" 2>&1 | tee "$test_log"
test_rc=${PIPESTATUS[0]}
if [ $test_rc -eq 124 ] || [ $test_rc -eq 137 ]; then
  log "dotnet test did not finish within $run_timeout and was killed"
fi

# ---------------------------------------------------------------------------------------------------
# 3. Sum the TRX files
# ---------------------------------------------------------------------------------------------------

# Value of attribute $1 in the element text $2 (0 if absent).
attr() {
  local v
  v=$(printf '%s' "$2" | sed -n "s/.* $1=\"\([0-9]*\)\".*/\1/p")
  printf '%s' "${v:-0}"
}

passed=0 failed=0 skipped=0 executed=0 aborted_runs=0
failed_names=()
shopt -s nullglob
trx_files=("$results_dir"/*.trx)
for trx in "${trx_files[@]}"; do
  counters=$(grep -o '<Counters [^>]*>' "$trx" | head -n 1)
  total=$(attr total "$counters")
  f_passed=$(( $(attr passed "$counters") + $(attr passedButRunAborted "$counters") ))
  f_failed=$(( $(attr failed "$counters") + $(attr error "$counters") + $(attr timeout "$counters") + $(attr aborted "$counters") ))
  f_skipped=$(( total - f_passed - f_failed ))
  if [ $f_skipped -lt 0 ]; then f_skipped=0; fi
  outcome=$(grep -o '<ResultSummary outcome="[A-Za-z]*"' "$trx" | head -n 1 | sed 's/.*outcome="//; s/"$//')
  if [ $f_failed -eq 0 ] && grep -q '<RunInfo [^>]*outcome="Error"' "$trx"; then
    # The test host crashed or the hang guard killed it: the tests it was running are not counted.
    log "test run aborted ($outcome) in $(basename "$trx"):"
    grep -o '<Text>[^<]*</Text>' "$trx" | sed 's/<[^>]*>//g; s/^/    /' >&2
    f_failed=1
    aborted_runs=$(( aborted_runs + 1 ))
  fi
  while IFS= read -r name; do
    [ -n "$name" ] && failed_names+=("$name")
  done < <(grep -o '<UnitTestResult [^>]*outcome="\(Failed\|Error\|Timeout\|Aborted\)"' "$trx" | sed -n 's/.* testName="\([^"]*\)".*/\1/p')
  passed=$(( passed + f_passed ))
  failed=$(( failed + f_failed ))
  skipped=$(( skipped + f_skipped ))
  executed=$(( executed + f_passed + f_failed ))
done

if [ $aborted_runs -gt 0 ]; then
  # The blame collector writes Sequence_*.xml only for aborted runs; unfinished tests are the culprits.
  hung=$(find "$results_dir" -name 'Sequence_*.xml' -exec grep -ho '<Test Name="[^"]*"[^>]*Completed="False"' {} + 2>/dev/null \
    | sed 's/<Test Name="\([^"]*\)".*/\1/' | sort -u)
  if [ -n "$hung" ]; then
    while IFS= read -r name; do failed_names+=("$name (hung or crashed the test host)"); done <<<"$hung"
  else
    failed_names+=("($aborted_runs test run(s) aborted; see the output above)")
  fi
fi

# Default TRX names come from the run's start second, made unique by a check-then-write: two test
# projects finishing at the same instant could overwrite one another. Never undercount silently.
if grep -q 'Overwriting results file' "$test_log"; then
  log "a TRX file was overwritten (two test projects wrote the same name); counts would be incomplete"
  failed=$(( failed + 1 ))
  failed_names+=("(TRX results overwritten: rerun)")
fi

if [ $test_rc -ne 0 ] && [ $failed -eq 0 ]; then
  log "dotnet test exited with status $test_rc but no TRX file records a failure (see the output above)"
  failed=1
fi

if [ ${#failed_names[@]} -gt 0 ]; then
  log "failed:"
  printf '    %s\n' "${failed_names[@]}" >&2
fi

if [ $executed -eq 0 ] && [ $failed -eq 0 ]; then
  log "no test ran (${#trx_files[@]} TRX files in $results_dir)${filter:+; does the filter match anything?}"
  finish 0 0 "$skipped" 1
fi

if [ $failed -gt 0 ]; then
  finish "$passed" "$failed" "$skipped" 1
fi
finish "$passed" "$failed" "$skipped" 0
