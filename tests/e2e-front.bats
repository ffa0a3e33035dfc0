#!/usr/bin/env bats
# End to end, the HTTPS front door (issue 19, docs/front-door.md): on a throwaway Debian host
# with a real systemd (tests/e2e/host.sh) where tribist is installed with `make install`, root
# runs `tribist-host front apply|remove|status` over ssh, with pebble as the ACME CA on the host
# (tests/e2e/front-host.sh; the hosts have no network). The tests run in order and build on
# each other. Run it under the shared lock:
#   flock /var/lock/tribist-e2e.lock bats tests/e2e-front.bats

load /usr/lib/bats/bats-support/load.bash
load /usr/lib/bats/bats-assert/load.bash

REPO=$(cd "$BATS_TEST_DIRNAME/.." && pwd)
# Its host in a run directory and namespace prefix of its own (host.sh), so the main suite's
# cleanup never takes it, nor this file's the main suite's.
export TRIBIST_E2E_RUN=${TRIBIST_E2E_RUN:-/var/tmp/tribist-e2e-front}
export TRIBIST_E2E_NETNS=${TRIBIST_E2E_NETNS:-tbfront}
HOSTSH="$REPO/tests/e2e/host.sh"
FRONTSH="$REPO/tests/e2e/front-host.sh"
H=${TRIBIST_E2E_NAMES:-trib}front
DOMAIN=api.front.test
TIMINGS=${TRIBIST_E2E_TIMINGS:-$REPO/target/e2e-front-timings.txt}
PEBBLE_ROOT=/root/pebble/root.pem

# Runs one shell command line on the host (pass it as one string to keep its quoting).
on() { "$HOSTSH" ssh "$H" "cd / && $*"; }
# tribist-host front … on the host, as root over ssh.
front() { on "/home/tribist/bin/tribist-host front $*"; }
apply_args() { "$FRONTSH" apply-args "$DOMAIN"; }
in_ns() { ip netns exec "$TRIBIST_E2E_NETNS-$H" "$@"; }

timed() {
  local what=$1 start rc=0
  shift
  start=$EPOCHREALTIME
  "$@" || rc=$?
  printf '%s: %.1f s\n' "$what" "$(bc <<<"$EPOCHREALTIME - $start")" | tee -a "$TIMINGS" >&3
  return "$rc"
}

# The certificate the front serves for DOMAIN: "serial=… issuer=…", read here with openssl.
served_cert() {
  in_ns openssl s_client -connect 127.0.0.1:443 -servername "$DOMAIN" </dev/null 2>/dev/null |
    openssl x509 -noout -serial -issuer
}

# How many new configurations Caddy has loaded through its admin endpoint (a reload, by
# systemctl or caddy reload; a start logs none).
reloads() { on "journalctl -u caddy -o cat --no-pager | grep -c '\"msg\":\"load complete\"' || true"; }

# The release id a server binary reports (its commit, as /health's releaseId).
release_id() { "$1" --version | sed -n 's/.*commit \([^)]*\)).*/\1/p'; }


setup_file() {
  "$HOSTSH" down "$H"
  mkdir -p "$(dirname "$TIMINGS")"
  : >"$TIMINGS"
  echo "$EPOCHREALTIME" >"$BATS_FILE_TMPDIR/start"
  make -s -C "$REPO" release
  timed "host up, make install, pebble" "$FRONTSH" up "$H" "$DOMAIN" "$BATS_FILE_TMPDIR"
}

teardown_file() {
  # Caddy's journal, kept beside the run's hosts for whoever reads a failure.
  on "journalctl -u caddy --no-pager -n 300" >"$TRIBIST_E2E_RUN/$H-caddy-journal.txt" 2>&1 || true
  "$HOSTSH" down "$H"
  printf 'whole file: %.0f s\n' "$(bc <<<"$EPOCHREALTIME - $(cat "$BATS_FILE_TMPDIR/start")")" | tee -a "$TIMINGS" >&3
}

@test "front apply refuses hostile values before anything is touched" {
  run front apply --domain "$(printf %q '{env.HOME}.example')" --acme-email ops@example.test
  assert_failure 2
  assert_output --partial "DOMAIN=\"{env.HOME}.example\" is refused: it has '{'"
  run front apply --domain "$(printf %q $'api.front.test\nimport /etc/shadow')" --acme-email ops@example.test
  assert_failure 2
  assert_output --partial "a newline"
  run front apply --domain "$DOMAIN" --cert-file /etc/../etc/shadow --key-file /k
  assert_failure 2
  assert_output --partial "'..'"
  # A key is never read where a certificate is expected, nor shown.
  run front apply --domain "$DOMAIN" --cert-file /etc/ssh/ssh_host_ed25519_key --key-file /etc/ssh/ssh_host_ed25519_key
  assert_failure 4
  assert_output --partial "CERT_FILE=/etc/ssh/ssh_host_ed25519_key: it is not a PEM certificate"
  refute_output --partial "BEGIN OPENSSH"
  run on "ls /etc/caddy/tribist"
  assert_failure
}

@test "without caddy and without reachable packages, front apply refuses naming the command; nothing is written" {
  # The image has caddy (disabled); a fresh host has none. Its package stays in apt's cache.
  on "DEBIAN_FRONTEND=noninteractive apt-get purge -y -q caddy >/dev/null && test ! -e /etc/caddy && mkdir -p /root/debs && mv /var/cache/apt/archives/caddy_*.deb /root/debs/"
  run timed "apply refused (no caddy, no packages)" front apply $(apply_args)
  assert_failure 1
  assert_output --partial "caddy is not installed: installing it from this host's packages (apt-get install -y caddy)"
  assert_output --partial "caddy is not installed and this host cannot install it from its packages (apt-get said: "
  assert_output --partial "run on the host: apt-get update && apt-get install -y caddy, then run the same command again"
  run on "test -e /etc/caddy/tribist || test -e /etc/systemd/system/caddy.service.d/tribist-hardening.conf"
  assert_failure
  run on "grep 'action=front' /var/lib/tribist-deploy/audit.log"
  assert_output --regexp 'action=front .* op=apply domain=api.front.test .*result=failed$'
  on "mv /root/debs/caddy_*.deb /var/cache/apt/archives/"
}

@test "front apply installs caddy from the host's packages, takes over Debian's welcome page and gets pebble's certificate" {
  run timed "front apply (install caddy, take over, first certificate)" front apply $(apply_args) --by e2e-front
  assert_success
  assert_output --partial "caddy installed (apt-get install -y caddy)"
  assert_output --partial "took over Debian's default Caddyfile (its welcome page on :80), kept as /etc/caddy/Caddyfile.tribist-prev"
  assert_output --partial "wrote /etc/caddy/tribist/site.caddy (root:caddy 0640)"
  assert_output --partial "installed the hardening drop-in /etc/systemd/system/caddy.service.d/tribist-hardening.conf"
  assert_output --partial "systemctl restart caddy (its drop-in changed)"
  assert_output --regexp "systemd-analyze security caddy.service: exposure 1\.[0-9] OK"
  assert_output --partial "certificate: issuer CN=Pebble Intermediate CA"
  assert_output --partial "said by: curl -skv --resolve $DOMAIN:443:127.0.0.1 https://$DOMAIN/health"
  assert_output --partial "https://$DOMAIN/health answers 200 over HTTP/2 through the front (service at 127.0.0.1:8383)"
  # What was taken over was Debian's own file, untouched (dpkg's checksum).
  run on "md5sum </etc/caddy/Caddyfile.tribist-prev | cut -c1-32; dpkg-query -W -f='\${Conffiles}\n' caddy | awk '\$1==\"/etc/caddy/Caddyfile\" {print \$2}'"
  assert_equal "${lines[0]}" "${lines[1]}"
  run on "cat /etc/caddy/Caddyfile"
  assert_line "import /etc/caddy/tribist/site.caddy # tribist-front"
  refute_output --partial "file_server"
  run on "grep -h 'action=front' /var/lib/tribist-deploy/audit.log | tail -n 1"
  assert_output --regexp 'action=front user=root from=[0-9.:a-f]+ by="e2e-front" release_from=none release_to=none op=apply domain=api\.front\.test site_sha256=[0-9a-f]{64} result=ok$'
}

@test "through the front: pebble's certificate, 200 over HTTP/2, HTTP redirected; front status says so" {
  run on "curl -sS --cacert $PEBBLE_ROOT -o /dev/null -w '%{http_code} %{http_version}' https://$DOMAIN/health"
  assert_output "200 2"
  run on "curl -sS --cacert $PEBBLE_ROOT https://$DOMAIN/health"
  assert_output --partial '"status":"pass"'
  run served_cert
  assert_output --partial "issuer=CN = Pebble Intermediate CA"
  run on "curl -sS -o /dev/null -w '%{http_code} %{redirect_url}' 'http://$DOMAIN/health?x=1'"
  assert_output "308 https://$DOMAIN/health?x=1"
  run front status
  assert_success
  assert_output --regexp "caddy 2\.6\.[0-9]+-[0-9][^ ]*: caddy.service active"
  assert_output --partial "front: https://$DOMAIN -> 127.0.0.1:8383 (/etc/caddy/tribist/site.caddy; imported by /etc/caddy/Caddyfile)"
  assert_output --regexp "port 80 caddy's \(pid [0-9]+\), port 443 caddy's \(pid [0-9]+\)"
  assert_output --regexp "certificate: issuer CN=Pebble Intermediate CA [0-9a-f]+, expires [A-Z][a-z]{2} +[0-9]+ [0-9:]+ 20[0-9]{2} GMT"
  assert_output --partial "https://$DOMAIN/health: 200 over HTTP/2"
  assert_output --regexp "exposure 1\.[0-9] OK"
}

@test "nothing of the front is writable by tribist, tribistd or caddy; tribist cannot even read it" {
  run on "find /etc/caddy /etc/systemd/system/caddy.service.d \\( -user tribist -o -user tribistd -o -user caddy -o -perm -o+w -o -perm -g+w \\) -print"
  assert_output ""
  run on "stat -c '%n %U:%G %a' /etc/caddy /etc/caddy/Caddyfile /etc/caddy/tribist /etc/caddy/tribist/site.caddy /etc/caddy/tribist/servers.caddy /etc/caddy/tribist/ca-root.pem /etc/systemd/system/caddy.service.d/tribist-hardening.conf"
  assert_line "/etc/caddy root:root 755"
  assert_line "/etc/caddy/Caddyfile root:root 644"
  assert_line "/etc/caddy/tribist root:caddy 750"
  assert_line "/etc/caddy/tribist/site.caddy root:caddy 640"
  assert_line "/etc/caddy/tribist/servers.caddy root:caddy 640"
  assert_line "/etc/caddy/tribist/ca-root.pem root:caddy 640"
  assert_line "/etc/systemd/system/caddy.service.d/tribist-hardening.conf root:root 644"
  run on "runuser -u tribist -- cat /etc/caddy/tribist/site.caddy"
  assert_failure
  assert_output --partial "Permission denied"
}

@test "Caddy's admin endpoint takes no configuration from tribist or tribistd: only a socket of caddy's" {
  local as_tribistd="setpriv --reuid=tribistd --regid=tribistd --clear-groups --" before
  # Caddy's default endpoint, localhost:2019, would take a whole new configuration (serving
  # the key's directory, say) from any local user: it is closed.
  run on "runuser -u tribist -- curl -sS -m 5 http://localhost:2019/config/"
  assert_failure 7
  run on "$as_tribistd curl -sS -m 5 -X POST -H 'Content-Type: application/json' -d '{}' http://localhost:2019/load"
  assert_failure 7
  run on "stat -c '%F %U' /var/lib/caddy/admin.sock"
  assert_output "socket caddy"
  # Root reaches it (an empty Host, as caddy's own commands send); tribist and tribistd may
  # not connect to it at all.
  run on "curl -sS -m 5 --unix-socket /var/lib/caddy/admin.sock -H 'Host;' http://caddy/config/"
  assert_success
  assert_output --partial '"admin":{"listen":"unix//var/lib/caddy/admin.sock"}'
  run on "runuser -u tribist -- curl -sS -m 5 --unix-socket /var/lib/caddy/admin.sock -H 'Host;' http://caddy/config/"
  assert_failure 7
  run on "$as_tribistd curl -sS -m 5 --unix-socket /var/lib/caddy/admin.sock -H 'Host;' http://caddy/config/"
  assert_failure 7
  # Root's reload (Debian's ExecReload=) finds it.
  before=$(reloads)
  run on "systemctl reload caddy"
  assert_success
  (($(reloads) == before + 1)) || fail "caddy loaded no new configuration: $(reloads) after $before"
}

@test "edge limits: a slow header is cut at the 10 s timeout, an oversized header refused with 431" {
  # 24 KiB of header (Caddy's limit: 16 KiB, plus Go's 4 KiB of slack), then 8 KiB.
  run on "curl -sS --http1.1 --cacert $PEBBLE_ROOT -o /dev/null -w '%{http_code}' -H \"X-Big: \$(head -c 18432 /dev/zero | base64 -w0)\" https://$DOMAIN/health"
  assert_output 431
  run on "curl -sS --http1.1 --cacert $PEBBLE_ROOT -o /dev/null -w '%{http_code}' -H \"X-Fine: \$(head -c 6144 /dev/zero | base64 -w0)\" https://$DOMAIN/health"
  assert_output 200
  # A header line every second, never the blank line that ends the header.
  run timed "slow header" in_ns python3 - "$DOMAIN" <<'PY'
import socket, ssl, sys, time
domain = sys.argv[1]
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ctx.set_alpn_protocols(["http/1.1"])
start = time.monotonic()
s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", 443), timeout=5), server_hostname=domain)
s.sendall(f"GET /health HTTP/1.1\r\nHost: {domain}\r\n".encode())
s.settimeout(1)
how = "still open after 40 s"
while time.monotonic() - start < 40:
    try:
        s.sendall(b"X-Slow: 1\r\n")
        data = s.recv(4096)
        how = "closed" if not data else "answered " + data.split(b"\r\n")[0].decode(errors="replace")
        break
    except socket.timeout:
        continue
    except (OSError, ssl.SSLError) as e:
        how = "closed (" + type(e).__name__ + ")"
        break
print(f"{how} after {time.monotonic() - start:.1f} s")
PY
  assert_output --regexp "^(closed|answered HTTP/1.1 408).* after (9|10|11|12)\.[0-9] s$"
}

@test "many clients at the front: the service sees at most the pool's 16 connections and is never restarted" {
  local pid0 pid1 spid max=0 n threads=0 t
  pid0=$(on "systemctl show -p MainPID --value tribist")
  # The service's pid as this machine sees it (not systemd, which holds the socket too).
  spid=$(in_ns ss -Hltnp 'sport = :8383' | grep -o '"server",pid=[0-9]*' | grep -o '[0-9]*$' | head -n 1)
  [[ -n "$spid" ]]
  printf '127.0.0.1 %s\n' "$DOMAIN" >"$BATS_FILE_TMPDIR/hosts"
  # wrk resolves DOMAIN through /etc/hosts: its own, in a private mount namespace.
  # shellcheck disable=SC2016
  in_ns unshare -m bash -c 'mount --bind "$0" /etc/hosts && exec wrk -t2 -c200 -d10s --timeout 10s "https://$1/health"' \
    "$BATS_FILE_TMPDIR/hosts" "$DOMAIN" >"$BATS_FILE_TMPDIR/wrk.out" 2>&1 &
  local wrk=$!
  for _ in $(seq 50); do
    n=$(in_ns ss -Htn state established '( dport = :8383 )' | wc -l)
    ((n > max)) && max=$n
    t=$(awk '/^Threads:/ {print $2}' "/proc/$spid/status" 2>/dev/null || echo 0)
    ((t > threads)) && threads=$t
    sleep 0.2
  done
  wait "$wrk"
  pid1=$(on "systemctl show -p MainPID --value tribist")
  echo "200 clients at the front: the service saw at most $max connections and $threads threads; wrk: $(grep -E 'Requests/sec|requests in|Socket errors' "$BATS_FILE_TMPDIR/wrk.out" | tr -s ' ' | paste -sd ';')" | tee -a "$TIMINGS" >&3
  run cat "$BATS_FILE_TMPDIR/wrk.out"
  assert_output --regexp "[0-9]+ requests in"
  refute_output --partial "Non-2xx"
  ((max > 0 && max <= 16))
  assert_equal "$pid1" "$pid0"
}

@test "the access log rolls at 10 MiB under Caddy's sandbox: the rolled copy is whole" {
  local log=/var/log/caddy/tribist-access.log
  # 10 MiB of earlier lines, read by Caddy at its start (it counts a file's size when it
  # opens it), so the next request rolls it.
  on "head -c 10485700 /dev/zero | tr '\\0' x | fold -w 1000 >>$log && systemctl restart caddy"
  until_https() { on "curl -sS --cacert $PEBBLE_ROOT -o /dev/null -w '%{http_code}' https://$DOMAIN/health?rolled=1" 2>/dev/null; }
  local deadline=$((SECONDS + 60))
  until [[ "$(until_https)" == 200 ]]; do ((SECONDS < deadline)) || fail "the front did not answer after the restart"; sleep 0.5; done
  deadline=$((SECONDS + 30))
  until on "ls /var/log/caddy/ | grep -q '^tribist-access-.*\.log\.gz$'"; do ((SECONDS < deadline)) || fail "no rolled log"; sleep 0.5; done
  # Compressed after the roll, in the background: whole once gzip says so.
  deadline=$((SECONDS + 30))
  until on "gzip -t /var/log/caddy/tribist-access-*.log.gz && test \$(zcat /var/log/caddy/tribist-access-*.log.gz | wc -c) -gt 10000000"; do
    ((SECONDS < deadline)) || fail "the rolled log is not whole: $(on "ls -l /var/log/caddy/")"
    sleep 0.5
  done
  run on "journalctl -u caddy --no-pager -o cat | grep -c 'operation not permitted' || true"
  assert_output "0"
  run on "grep -c 'rolled=1' $log"
  assert_output "1"
}

@test "a second apply with the same values changes nothing and does not reload caddy" {
  local before
  before=$(reloads)
  run timed "front apply, unchanged" front apply $(apply_args)
  assert_success
  assert_output --partial "unchanged: the front for $DOMAIN is as asked (Caddy was not reloaded)"
  assert_output --partial "answers 200 over HTTP/2"
  assert_equal "$(reloads)" "$before"
  run on "grep -h 'action=front' /var/lib/tribist-deploy/audit.log | tail -n 1"
  assert_output --regexp 'op=apply domain=api\.front\.test site_sha256=[0-9a-f]{64} result=unchanged$'
}

@test "a re-apply whose CA never answers puts back the front that served, and says so" {
  local args
  args=$(apply_args)
  [[ "$args" == *"https://127.0.0.1:14000/dir"* ]] || fail "pebble's directory not in: $args"
  run timed "front apply, a CA that never answers (restored)" on "TRIBIST_FRONT_WAIT=15 /home/tribist/bin/tribist-host front apply ${args//14000/14001}"
  assert_failure 1
  assert_output --partial "the new front did not answer https://$DOMAIN/health in "
  assert_output --partial "the previous files are back and Caddy serves them"
  assert_output --partial "the front that served before serves again"
  run on "grep -c 14001 /etc/caddy/tribist/site.caddy || true"
  assert_output "0"
  run on "curl -sS --cacert $PEBBLE_ROOT -o /dev/null -w '%{http_code} %{http_version}' https://$DOMAIN/health"
  assert_output "200 2"
  run on "grep -h 'action=front' /var/lib/tribist-deploy/audit.log | tail -n 1"
  assert_output --regexp 'op=apply domain=api\.front\.test site_sha256=[0-9a-f]{64} result=failed-restored$'
}

@test "the team's own certificate replaces ACME; a key that does not match is refused by caddy validate and every file is put back" {
  local dir=$BATS_FILE_TMPDIR/own before after
  mkdir -p "$dir"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 -subj "/CN=$DOMAIN" \
    -addext "subjectAltName=DNS:$DOMAIN" -keyout "$dir/key.pem" -out "$dir/cert.pem" 2>/dev/null
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$dir/other-key.pem" 2>/dev/null
  on "install -d -m 700 /root/own"
  for f in cert.pem key.pem other-key.pem; do "$HOSTSH" ssh "$H" "cat >/root/own/$f" <"$dir/$f"; done
  before=$(on "sha256sum /etc/caddy/Caddyfile /etc/caddy/tribist/*")
  run front apply --domain "$DOMAIN" --cert-file /root/own/cert.pem --key-file /root/own/other-key.pem
  assert_failure 4
  assert_output --partial "caddy validate refused the front's configuration: "
  assert_output --partial "the previous files are back"
  after=$(on "sha256sum /etc/caddy/Caddyfile /etc/caddy/tribist/*")
  assert_equal "$after" "$before"
  run on "grep -h 'action=front' /var/lib/tribist-deploy/audit.log | tail -n 1"
  assert_output --regexp 'op=apply domain=api\.front\.test site_sha256=[0-9a-f]{64} result=refused-check$'
  # The right pair: served at once, by a reload.
  run front apply --domain "$DOMAIN" --cert-file /root/own/cert.pem --key-file /root/own/key.pem
  assert_success
  assert_output --partial "wrote /etc/caddy/tribist/key.pem (root:caddy 0640)"
  assert_output --partial "caddy reload (graceful; what systemctl reload caddy runs)"
  assert_output --partial "certificate: issuer CN=$DOMAIN"
  run served_cert
  assert_output --partial "issuer=CN = $DOMAIN"
  # Back to ACME: the copies of the team's key and certificate are removed.
  run front apply $(apply_args)
  assert_success
  assert_output --partial "removed /etc/caddy/tribist/key.pem"
  assert_output --partial "certificate: issuer CN=Pebble Intermediate CA"
  run on "ls /etc/caddy/tribist"
  refute_output --partial "key.pem"
}

@test "front remove --purge takes tribist's site alone (another site keeps serving); a new apply re-issues the certificate" {
  local first second
  # The admin's own site beside tribist's.
  on "printf '\n:8081 {\n\trespond \"the admin site\"\n}\n' >>/etc/caddy/Caddyfile && systemctl reload caddy"
  run on "curl -sS http://127.0.0.1:8081/"
  assert_output "the admin site"
  first=$(served_cert)
  run timed "front remove --purge" front remove --purge --by e2e-front
  assert_success
  assert_output --partial "removed tribist's two import lines from /etc/caddy/Caddyfile; its other sites stay"
  assert_output --partial "removed /etc/caddy/tribist/site.caddy"
  assert_output --partial "removed 1 certificate directory of $DOMAIN from Caddy's storage"
  assert_output --partial "removed the front's access log"
  assert_output --partial "removed /etc/caddy/tribist"
  run on "ls /var/log/caddy | grep -c '^tribist-access' || true"
  assert_output "0"
  run on "curl -sS http://127.0.0.1:8081/"
  assert_output "the admin site"
  run on "curl -sS -o /dev/null --max-time 5 https://$DOMAIN/health"
  assert_failure
  run on "grep -c tribist /etc/caddy/Caddyfile; ls /etc/caddy; ls /var/lib/caddy/.local/share/caddy/certificates/*/"
  assert_line 0
  refute_output --partial "tribist"
  refute_output --partial "$DOMAIN"
  # The hardening stays: another site remains.
  run on "test -f /etc/systemd/system/caddy.service.d/tribist-hardening.conf"
  assert_success
  run on "grep -h 'action=front' /var/lib/tribist-deploy/audit.log | tail -n 1"
  assert_output --regexp 'by="e2e-front" .*op=remove purge=1 domain=api\.front\.test result=ok$'
  # Applied again: a new certificate, from the same CA.
  run timed "front apply after purge (re-issue)" front apply $(apply_args)
  assert_success
  assert_output --partial "added tribist's two import lines to /etc/caddy/Caddyfile; its other sites are untouched"
  assert_output --partial "Caddy's other HTTPS sites share tribist's limits on port 443"
  second=$(served_cert)
  [[ "$second" == *"issuer=CN = Pebble Intermediate CA"* ]]
  [[ "$second" != "$first" ]] || fail "the same certificate was served again: $first"
  echo "certificate before the purge: $first; after: $second" >&3
  run on "curl -sS http://127.0.0.1:8081/"
  assert_output "the admin site"
}

@test "beside an admin's site, apply leaves Caddy's sandbox to the admin, who applies it with the command it names" {
  local pid advice
  # Caddy running without tribist's drop-in, as on a host where an admin's Caddy served first.
  on "rm /etc/systemd/system/caddy.service.d/tribist-hardening.conf && systemctl daemon-reload && systemctl restart caddy"
  pid=$(on "systemctl show -p MainPID --value caddy")
  run front apply $(apply_args)
  assert_success
  assert_output --partial "so tribist did not sandbox caddy.service"
  refute_output --partial "installed the hardening drop-in"
  assert_equal "$(on "systemctl show -p MainPID --value caddy")" "$pid"
  run on "test -e /etc/systemd/system/caddy.service.d/tribist-hardening.conf"
  assert_failure
  run on "curl -sS http://127.0.0.1:8081/"
  assert_output "the admin site"
  run front status
  assert_success
  assert_output --partial "so tribist did not sandbox caddy.service"
  # The admin, once their site is checked, runs what the advice names.
  advice=$(grep -o '/home/tribist/bin/tribist-host front harden$' <<<"$output" | head -n 1)
  [[ -n "$advice" ]] || fail "no command in: $output"
  run on "$advice"
  assert_success
  assert_output --partial "installed the hardening drop-in"
  assert_output --regexp "exposure 1\.[0-9] OK"
  run on 'grep "Max open files" /proc/$(systemctl show -p MainPID --value caddy)/limits'
  assert_output --partial "16384"
  run on "curl -sS http://127.0.0.1:8081/"
  assert_output "the admin site"
  run on "curl -sS --cacert $PEBBLE_ROOT -o /dev/null -w '%{http_code}' https://$DOMAIN/health"
  assert_output "200"
  run front status
  refute_output --partial "sandbox"
  run on "grep -h 'action=front' /var/lib/tribist-deploy/audit.log | tail -n 1"
  assert_output --regexp 'op=harden result=ok$'
  # Once more: nothing to do.
  run on "$advice"
  assert_success
  assert_output --partial "unchanged"
}

@test "front remove keeps the certificates; front status then says there is no front" {
  run front remove
  assert_success
  assert_output --partial "removed /etc/caddy/tribist/site.caddy"
  refute_output --partial "Caddy's storage"
  run on "ls /etc/caddy/tribist; ls /var/lib/caddy/.local/share/caddy/certificates/*/"
  assert_line ca-root.pem
  assert_line domain
  assert_line "$DOMAIN"
  refute_line site.caddy
  run on "curl -sS http://127.0.0.1:8081/"
  assert_output "the admin site"
  run front status
  assert_failure 5
  assert_output --partial "front: none"
  # Removing twice changes nothing.
  run front remove
  assert_success
  assert_output --partial "nothing to remove"
}

# --- The front in the everyday commands: make status, make logs ACCESS=1, make check DOMAIN=.
# From here the host has no front (the test above removed it), Caddy runs the admin's :8081.

# The kit as make runs it, with its own exit status (sbin/remote.sh), on this file's host.
kit() { HOST="root@$H" SSH_OPTS="-F $("$HOSTSH" ssh-config)" "$REPO/sbin/remote.sh" "$@"; }

# The date (YYYY-MM-DD, UTC) the served certificate ends, as openssl reads it here.
served_cert_end() {
  date -ud "$(in_ns openssl s_client -connect 127.0.0.1:443 -servername "$DOMAIN" </dev/null 2>/dev/null |
    openssl x509 -noout -enddate | cut -d= -f2)" +%F
}

# Whether the front's access log (make logs ACCESS=1, its last $2 lines) has a request for $1.
access_has() { ACCESS=1 LINES=${2:-5} kit logs 2>/dev/null | grep -qF "\"uri\":\"$1\""; }

# Fails unless $1 holds only printable ASCII and line breaks.
only_printable() {
  local bad
  bad=$(printf '%s' "$1" | LC_ALL=C tr -d '\40-\176\n' | od -An -tx1)
  [[ -z "${bad//[[:space:]]/}" ]] || fail "bytes other than printable ASCII in the output:$bad"
}

# Waits (up to $1 s) until "$@" after it succeeds.
until_ok() {
  local deadline=$((SECONDS + $1))
  shift
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || return 1
    sleep 0.2
  done
}

@test "without a front: make status says none, make logs ACCESS=1 names make install DOMAIN=; make check DOMAIN= names what holds 443, then passes" {
  run kit status
  assert_success
  assert_line --regexp "^root@$H +healthy release=[^ ]+ health=200 up=[0-9:-]+ listen=127\.0\.0\.1:8383$"
  assert_line "  front: none (the service is reached on its address alone; make install HOST=root@$H DOMAIN=api.example.com puts HTTPS in front)"
  # The log the removed front left is still shown, saying so; without one, the command.
  ACCESS=1 LINES=1 run kit logs
  assert_success
  assert_output --partial "root@$H has no front door now (make install HOST=root@$H DOMAIN=api.example.com sets one up); the last lines of its access log from before:"
  on "mv /var/log/caddy/tribist-access.log /root/access.log.kept"
  ACCESS=1 run kit logs
  assert_failure 1
  assert_output --partial "root@$H has no front door, so no access log (/var/log/caddy/tribist-access.log); set one up: make install HOST=root@$H DOMAIN=api.example.com"
  # Something else on 443, as a unit of its own (a web server installed before tribist).
  "$HOSTSH" ssh "$H" "cat >/root/hold443.pl" <<'PL'
use Socket;
socket(my $s, PF_INET, SOCK_STREAM, 0) or die "socket: $!";
setsockopt($s, SOL_SOCKET, SO_REUSEADDR, 1) or die "setsockopt: $!";
bind($s, sockaddr_in(443, INADDR_ANY)) or die "bind: $!";
listen($s, 5) or die "listen: $!";
sleep 600;
PL
  on "printf '[Service]\nExecStart=/usr/bin/perl /root/hold443.pl\n' >/etc/systemd/system/wb-holder443.service && systemctl daemon-reload && systemctl start wb-holder443"
  until_ok 10 on "ss -Hltnp 'sport = :443' | grep -q perl"
  DOMAIN=$DOMAIN run timed "make check DOMAIN= (443 taken)" kit check
  assert_failure 1
  assert_line --regexp "^    FAIL port 443: taken by perl \(pid [0-9]+, wb-holder443\.service\); fix: systemctl disable --now wb-holder443\.service \(the front door needs ports 80 and 443\)$"
  assert_line --regexp "^    PASS port 80: (free \(for the front door\)|caddy's \(the front door\))$"
  assert_line "    PASS domain $DOMAIN: resolves to 127.0.0.1, an address of this host"
  assert_line --regexp "^    PASS caddy: 2\.6\.[0-9]+-[0-9][^ ]* installed$"
  assert_output --partial "make check: root@$H is not ready"
  # As a person: the command the FAIL line names, then the same check again.
  on "systemctl disable --now wb-holder443.service"
  DOMAIN=$DOMAIN run kit check
  assert_success
  assert_line "    PASS port 443: free (for the front door)"
  assert_output --partial "root@$H is ready for tribist"
  # A hostile DOMAIN is refused here, by the host's rules, before anything is sent.
  DOMAIN='api.front.test;id' run kit check
  assert_failure 2
  assert_output --partial "DOMAIN=\"api.front.test;id\" is refused: it has ';'"
}

@test "make status: the front's issuer and expiry while it serves; Caddy stopped: a WARN, the fix, exit 7; started again: healthy" {
  run front apply $(apply_args)
  assert_success
  DOMAIN=$DOMAIN run kit check
  assert_success
  assert_line --regexp "^    PASS port 80: caddy's \(the front door\)$"
  assert_line "    PASS port 443: caddy's (the front door)"
  local expires
  expires=$(served_cert_end)
  run timed "make status (front serving)" kit status
  assert_success
  assert_line --regexp "^root@$H +healthy release=[^ ]+ health=200 up=[0-9:-]+ listen=127\.0\.0\.1:8383 front=https://api\.front\.test$"
  assert_line "  front: serving https://$DOMAIN -> 127.0.0.1:8383 (caddy.service active, /health 200 over HTTP/2)"
  assert_line --regexp "^  certificate: issuer CN=Pebble Intermediate CA [0-9a-f]+, expires $expires \([0-9]+ days left; ACME\)$"
  refute_output --partial WARN
  # Caddy stopped: clients cannot reach the API, so status is not 0; at a terminal, as a person.
  on "systemctl stop caddy"
  run kit status
  assert_failure 7
  assert_line --regexp "^root@$H +unhealthy release=[^ ]+ health=200 up=[0-9:-]+ listen=127\.0\.0\.1:8383 front=https://api\.front\.test: the front https://api\.front\.test is down \(caddy\.service is not active\)$"
  assert_line "  WARN front: Caddy is stopped: clients cannot reach https://$DOMAIN; fix (on the host): systemctl enable --now caddy"
  assert_output --partial "next: the WARN line above says what to do; make logs HOST=root@$H ACCESS=1 shows the front's requests"
  run script -qec "make -s -C '$REPO' status HOST=root@$H SSH_OPTS='-F $("$HOSTSH" ssh-config)'" /dev/null
  assert_failure
  assert_output --partial "WARN front: Caddy is stopped"
  assert_output --partial "Error 7"
  # The fix, as printed; the front answers again.
  on "systemctl enable --now caddy"
  until_ok 30 kit status
  run kit status
  assert_success
  assert_line --regexp "^root@$H +healthy .* front=https://api\.front\.test$"
}

@test "make logs ACCESS=1: the request just made, printable; GREP= picks it; FOLLOW=1 shows one made meanwhile and ends with its connection" {
  local p="/wb-access-$RANDOM$RANDOM" q="/wb-follow-$RANDOM$RANDOM" pid out=$BATS_TEST_TMPDIR/follow.out
  # A request with a unique path; a client's text (here its User-Agent) is in the log too.
  on "curl -s --cacert $PEBBLE_ROOT -o /dev/null -A 'wb \"quoted\" agent' https://$DOMAIN$p"
  until_ok 10 access_has "$p"
  ACCESS=1 LINES=5 run timed "make logs ACCESS=1 LINES=5" kit logs
  assert_success
  assert_output --regexp "\"uri\":\"$p\""
  assert_output --partial '"status":404'
  assert_output --partial '"User-Agent":["wb \"quoted\" agent"]'
  ((${#lines[@]} <= 5))
  only_printable "$output"
  ACCESS=1 GREP="$p" run kit logs
  assert_success
  assert_equal "$(grep -cF "$p" <<<"$output")" "${#lines[@]}"
  # Following: the last lines, then a request made meanwhile; ended by its connection.
  # In a process group of its own (setsid), so that ending it ends its ssh too.
  HOST="root@$H" SSH_OPTS="-F $("$HOSTSH" ssh-config)" TRIBIST_SSH_SHARE=no ACCESS=1 FOLLOW=1 GREP="$q" \
    setsid "$REPO/sbin/remote.sh" logs >"$out" 2>&1 &
  pid=$!
  until_ok 15 on "pgrep -f '[a]ccess-follow'"
  on "curl -s --cacert $PEBBLE_ROOT -o /dev/null https://$DOMAIN$q"
  until_ok 15 grep -qF "\"uri\":\"$q\"" "$out"
  kill -TERM -- "-$pid"
  wait "$pid" || true
  # Its connection gone, the host's follow ends by itself (no SIGHUP without a terminal).
  until_ok 10 on "! pgrep -f '[a]ccess-follow'"
  run cat "$out"
  assert_output --regexp "\"uri\":\"$q\""
  only_printable "$output"
}

# Self-contained: applies the front again whatever the tests before left (remove keeps the
# certificate), then runs tests/e2e/front-upgrades.sh: during each of the deployer's
# operations, wrk (keep-alive) and load.py (a new connection per request) ask
# https://DOMAIN/health from the host's network namespace, and the service directly beside.
@test "upgrades stay invisible through the front: make upgrade (good, each bad release), make config, make rollback" {
  local tsv=$BATS_FILE_TMPDIR/front-upgrades.tsv a b
  run front apply $(apply_args)
  assert_success
  # The host serves this tree's release (make install), the state the script starts from.
  a=$(release_id "$REPO/${RELEASE_BIN:-target/x86_64-unknown-linux-gnu/release/server}")
  if [[ "$(on /home/tribist/bin/tribist-host serving)" != "$a" ]]; then
    make -s -C "$REPO" rollback HOST="root@$H" SSH_OPTS="-F $("$HOSTSH" ssh-config)" TO="$a" >/dev/null
  fi
  run timed "front-upgrades.sh run (7 operations under clients)" "$REPO/tests/e2e/front-upgrades.sh" run "$H" "$DOMAIN" "$BATS_FILE_TMPDIR"
  echo "$output" | sed -n '/^phase /,$p' >&3
  assert_success
  # Seven operations, four clients each, every client made requests.
  assert_equal "$(wc -l <"$tsv")" 28
  b=$(release_id "$BATS_FILE_TMPDIR/server-b")
  run awk -F '\t' '$5 < 50 { print "too few requests:", $0 }' "$tsv"
  assert_output ""
  # Each operation did what it should: the good upgrade, config and rollback succeeded, each
  # bad release was refused and the good one kept serving.
  run awk -F '\t' '$3 == "front-wrk" { print $1, $2 }' "$tsv"
  assert_line --index 0 "upgrade-good exit 0, serving $b"
  assert_line --index 1 "exits exit 2, serving $b"
  assert_line --index 2 "never-ready exit 2, serving $b"
  assert_line --index 3 "answers-503 exit 2, serving $b"
  assert_line --index 4 "handover-fails exit 2, serving $b"
  assert_line --index 5 "config exit 0, serving $b"
  assert_line --index 6 "rollback exit 0, serving $a"
  refute_output --partial UNEXPECTED
  # Through the front, not one request failed or answered other than 2xx, on kept-alive
  # connections and on new ones.
  run awk -F '\t' '$3 ~ /^front-/ && ($6 != 0 || $7 != 0) { print "through the front:", $0 }' "$tsv"
  assert_output ""
  # The front itself was left alone: the same caddy process, never reloaded.
  run cat "$BATS_FILE_TMPDIR/front-upgrades.caddy"
  assert_line --index 0 --regexp '^caddy before: pid [0-9]+, reloads [0-9]+$'
  assert_equal "${lines[1]#caddy after: }" "${lines[0]#caddy before: }"
  # The state the tests below start from: no front, its certificate kept.
  run front remove
  assert_success
}

# ---------------------------------------------------------------------------------------------
# make install DOMAIN=… and make uninstall: the front through the Makefile, as a user runs it
# (no root shell on the host). These follow the tests above: the front was removed (its
# certificate kept in Caddy's storage), the admin's :8081 site is still there.

CFG=$("$HOSTSH" ssh-config)
# make TARGET … at a pseudo-terminal, as a person types it (script; make exits 2 on failure).
at_terminal() {
  local keys=$BATS_TEST_TMPDIR/keys rc=0
  [[ -p "$keys" ]] || mkfifo "$keys"
  exec 7<>"$keys"
  SHELL=/bin/bash script -qfec "$(printf '%q ' "$@")" /dev/null <&7 || rc=$?
  exec 7<&-
  return "$rc"
}
mk() { at_terminal make -s -C "$REPO" "$1" HOST="root@$H" SSH_OPTS="-F $CFG" DEPLOYER=e2e-wire "${@:2}"; }
# The kit itself, for its exact exit status (make says 2 for any failure).
kit_as() { env HOST="root@$H" SSH_OPTS="-F $CFG" DEPLOYER=e2e-wire "${@:2}" "$REPO/sbin/remote.sh" "$1"; }
# The kit with an ssh that notes each call in $BATS_TEST_TMPDIR/ssh.calls: "nothing was sent".
kit_spied() {
  printf '#!/bin/bash\necho "$*" >>%q\nexec ssh "$@"\n' "$BATS_TEST_TMPDIR/ssh.calls" >"$BATS_TEST_TMPDIR/ssh-spy"
  chmod +x "$BATS_TEST_TMPDIR/ssh-spy"
  kit_as "$1" SSH="$BATS_TEST_TMPDIR/ssh-spy" "${@:2}"
}
nothing_sent() { [[ ! -e "$BATS_TEST_TMPDIR/ssh.calls" ]] || fail "ssh was called: $(cat "$BATS_TEST_TMPDIR/ssh.calls")"; }
# The front as a client in the host's network sees it, trusting pebble's issuing root only.
through_front() {
  in_ns curl -sS --max-time 10 --cacert "$BATS_FILE_TMPDIR/pebble-root.pem" --resolve "$DOMAIN:443:127.0.0.1" \
    -o /dev/null -w '%{http_code} %{http_version}' "https://$DOMAIN/health"
}
front_files() { on "sha256sum /etc/caddy/Caddyfile /etc/caddy/tribist/*"; }
# pebble's own HTTPS certificate (ACME_CA_ROOT), copied out of the host as a user would.
pebble_https_cert() {
  [[ -s "$BATS_FILE_TMPDIR/pebble-https.pem" ]] || on "cat /root/pebble/cert.pem" >"$BATS_FILE_TMPDIR/pebble-https.pem"
  echo "$BATS_FILE_TMPDIR/pebble-https.pem"
}

@test "make install DOMAIN=… refuses hostile and inconsistent values here, before anything is sent" {
  run kit_spied install DOMAIN='x{env.HOME}' ACME_EMAIL=ops@example.test
  assert_failure 2
  assert_output --partial "DOMAIN=\"x{env.HOME}\" is refused: it has '{'"
  # The command again, every variable as given, the bad one replaced (quoted for a shell).
  assert_output --partial "run: make install HOST=root@$H DOMAIN=api.example.com ACME_EMAIL=ops@example.test DEPLOYER=e2e-wire SSH_OPTS=-F\\ "
  assert_output --partial " (the name clients use; nothing was sent)"
  nothing_sent
  run kit_spied install DOMAIN="https://$DOMAIN:443/" ACME_EMAIL=ops@example.test
  assert_failure 2
  assert_output --partial "run: make install HOST=root@$H DOMAIN=$DOMAIN ACME_EMAIL=ops@example.test DEPLOYER=e2e-wire SSH_OPTS=-F\\ "
  assert_output --partial " (the name alone: no scheme, port, path or final dot; nothing was sent)"
  nothing_sent
  run kit_spied install DOMAIN=$'api.front.test\nimport /etc/shadow' ACME_EMAIL=ops@example.test
  assert_failure 2
  assert_output --partial "it has a newline"
  nothing_sent
  run kit_spied install ACME_EMAIL=ops@example.test
  assert_failure 2
  assert_output --partial "ACME_EMAIL given without DOMAIN"
  assert_output --partial "run: make install HOST=root@$H DOMAIN=api.example.com ACME_EMAIL=ops@example.test DEPLOYER=e2e-wire SSH_OPTS=-F\\ "
  assert_output --partial " (nothing was sent)"
  nothing_sent
  run kit_spied install DOMAIN="$DOMAIN" CERT_FILE=/etc/hostname
  assert_failure 2
  assert_output --partial "CERT_FILE=/etc/hostname is given without KEY_FILE, its private key"
  # shellcheck disable=SC2016
  run kit_spied install DOMAIN="$DOMAIN" ACME_EMAIL=ops@example.test ACME_CA='https://ca/{$X}'
  assert_failure 2
  assert_output --partial "ACME_CA=\"https://ca/{\$X}\" is refused"
  # A private key named as the certificate: refused here, nothing of it shown.
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$BATS_TEST_TMPDIR/k.pem" 2>/dev/null
  run kit_spied install DOMAIN="$DOMAIN" CERT_FILE="$BATS_TEST_TMPDIR/k.pem" KEY_FILE="$BATS_TEST_TMPDIR/k.pem"
  assert_failure 2
  assert_output --partial "CERT_FILE=$BATS_TEST_TMPDIR/k.pem: it is not a PEM certificate"
  refute_output --partial "BEGIN PRIVATE KEY"
  nothing_sent
  # Through make at a terminal, as a person: the same refusal.
  run mk install DOMAIN='x{env.HOME}' ACME_EMAIL=ops@example.test
  assert_failure 2
  assert_output --partial "is refused: it has '{'"
}

@test "make install DOMAIN=… ACME_EMAIL=… ACME_CA=… ACME_CA_ROOT=file: tribist behind the front, a certificate from pebble, 200 through it" {
  local root
  root=$(pebble_https_cert)
  run timed "make install DOMAIN= (front from the kit)" mk install DOMAIN="$DOMAIN" ACME_EMAIL=ops@example.test \
    ACME_CA=https://127.0.0.1:14000/dir ACME_CA_ROOT="$root"
  assert_success
  assert_output --partial "installed: tribist is healthy, release "
  assert_output --partial "the front: https://$DOMAIN -> 127.0.0.1:8383 (Caddy)"
  assert_output --partial "added tribist's two import lines to /etc/caddy/Caddyfile; its other sites are untouched"
  assert_output --regexp "certificate: issuer CN=Pebble Intermediate CA [0-9a-f]+, expires "
  assert_output --partial "https://$DOMAIN/health answers 200 over HTTP/2 through the front (service at 127.0.0.1:8383)"
  assert_output --partial "front: https://$DOMAIN serves tribist (make uninstall removes it)"
  assert_output --partial "installed on root@$H, behind https://$DOMAIN"
  run through_front
  assert_output "200 2"
  # The CA root came in the bundle, not from a path on the host; the bundle is gone.
  run on "cmp /etc/caddy/tribist/ca-root.pem /root/pebble/cert.pem && ls /tmp | grep -c tribist-install || true"
  assert_output 0
  # Both records: the install's and the front's own.
  run on "grep -h 'action=install' /var/lib/tribist-deploy/audit.log | tail -n 1"
  assert_output --regexp ' action=install .*by="e2e-wire" .*result=ok$'
  run on "grep -h 'action=front' /var/lib/tribist-deploy/audit.log | tail -n 1"
  assert_output --regexp ' action=front .*by="e2e-wire" release_from=none release_to=none op=apply domain=api\.front\.test site_sha256=[0-9a-f]{64} result=ok$'
}

@test "a re-install without DOMAIN keeps the front (said so), and make config leaves Caddy alone" {
  local before pid fronts
  before=$(reloads)
  pid=$(on "systemctl show -p MainPID --value caddy")
  fronts=$(on "grep -c 'action=front' /var/lib/tribist-deploy/audit.log")
  run timed "make install without DOMAIN (front kept)" mk install
  assert_success
  assert_output --partial "front: https://$DOMAIN kept (make uninstall removes it)"
  run through_front
  assert_output "200 2"
  run mk config SET=TRIBIST_LOG_LEVEL=debug
  assert_success
  run through_front
  assert_output "200 2"
  assert_equal "$(reloads)" "$before"
  assert_equal "$(on "systemctl show -p MainPID --value caddy")" "$pid"
  # Neither touched the front: no record of it.
  assert_equal "$(on "grep -c 'action=front' /var/lib/tribist-deploy/audit.log")" "$fronts"
}

@test "make install with CERT_FILE and a KEY_FILE that does not match: exit 9, tribist serving, the front as it was; the printed command works once the key is right" {
  local dir=$BATS_TEST_TMPDIR/own before
  mkdir -p "$dir"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 -subj "/CN=$DOMAIN" \
    -addext "subjectAltName=DNS:$DOMAIN" -keyout "$dir/right-key.pem" -out "$dir/cert.pem" 2>/dev/null
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$dir/key.pem" 2>/dev/null
  chmod 644 "$dir/key.pem"
  before=$(front_files)
  run timed "make install, mismatched key (refused)" kit_as install DOMAIN="$DOMAIN" CERT_FILE="$dir/cert.pem" KEY_FILE="$dir/key.pem"
  assert_failure 9
  assert_output --partial "warning: KEY_FILE=$dir/key.pem can be read by other users of this machine (a private key): chmod 600 $dir/key.pem"
  assert_output --partial "caddy validate refused the front's configuration: "
  assert_output --partial "tribist is installed and serving on 127.0.0.1:8383 (loopback: this host only); setting up the front https://$DOMAIN failed"
  assert_output --partial "make install: tribist is installed and serving on root@$H, but setting up its front failed (exit 9)"
  assert_output --partial "next: once what is said above is fixed: make install HOST=root@$H DOMAIN=$DOMAIN CERT_FILE=$dir/cert.pem KEY_FILE=$dir/key.pem"
  assert_equal "$(front_files)" "$before"
  run through_front
  assert_output "200 2"
  run on "grep -h 'action=front' /var/lib/tribist-deploy/audit.log | tail -n 1"
  assert_output --regexp 'by="e2e-wire" .*op=apply domain=api\.front\.test site_sha256=[0-9a-f]{64} result=refused-check$'
  # Fixed as told (the right key in that file, private), then the command the kit printed.
  install -m 600 "$dir/right-key.pem" "$dir/key.pem"
  run mk install DOMAIN="$DOMAIN" CERT_FILE="$dir/cert.pem" KEY_FILE="$dir/key.pem"
  assert_success
  refute_output --partial "can be read by other users"
  assert_output --partial "certificate: issuer CN=$DOMAIN"
  run served_cert
  assert_output --partial "issuer=CN = $DOMAIN"
  run on "stat -c '%U:%G %a' /etc/caddy/tribist/key.pem"
  assert_output "root:caddy 640"
}

@test "make uninstall removes the front (certificates kept); PURGE=1 YES=1 also the certificates: 443 closed, the admin's site serves" {
  run timed "make uninstall (front removed)" mk uninstall
  assert_success
  assert_output --partial "removed tribist's two import lines from /etc/caddy/Caddyfile; its other sites stay"
  assert_output --partial "removed /etc/caddy/tribist/site.caddy"
  run on "grep -h 'action=front' /var/lib/tribist-deploy/audit.log | tail -n 1"
  assert_output --regexp 'by="e2e-wire" .*op=remove domain=api\.front\.test result=ok$'
  run on "ls /etc/caddy/tribist"
  assert_line cert.pem
  assert_line key.pem
  run through_front
  assert_failure
  run timed "make uninstall PURGE=1 YES=1" mk uninstall PURGE=1 YES=1
  assert_success
  assert_output --partial "removed /etc/caddy/tribist/key.pem"
  assert_output --partial "removed /etc/caddy/tribist"
  run on "ls /etc/caddy; ls /var/lib/caddy/.local/share/caddy/certificates/*/; grep -c tribist /etc/caddy/Caddyfile"
  refute_output --partial tribist
  refute_output --partial "$DOMAIN"
  run in_ns ss -Hltn 'sport = :443'
  assert_output ""
  run on "curl -sS http://127.0.0.1:8081/"
  assert_output "the admin site"
  run on "systemctl is-active caddy"
  assert_output active
}
