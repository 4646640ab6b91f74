#!/usr/bin/env bash
# Static checks of the deployment artifacts under deploy/. Runs from anywhere; exits non-zero on
# the first failure. Installs what it needs only when missing (Debian: promtool comes with the
# `prometheus` package, PyYAML with `python3-yaml`); with the tools present it takes seconds.
#
#   bash deploy/validate.sh
#
# Checks:
#   - promtool check rules      deploy/prometheus/alerts.yml
#   - promtool test rules       deploy/prometheus/alerts.test.yml (the alerts fire as intended)
#   - promtool check config     deploy/prometheus/prometheus.yml (a copy whose token file exists)
#   - promtool check rules      every PromQL expression of the Grafana dashboards (as rules)
#   - systemd-analyze verify    deploy/systemd/ofapi-gateway.service (a copy whose binary exists);
#                               any warning (unknown key, bad value) is an error
#   - systemd-sysusers --dry-run deploy/systemd/ofapi-gateway.sysusers.conf
#   - every *.yml / *.yaml under deploy/ parses (all documents), every *.json parses, every
#     *.toml parses (also the gateway.toml embedded in deploy/k8s/configmap.yaml)
#   - deploy/k8s: each document has apiVersion, kind, metadata.name; `kubectl kustomize` builds;
#     schema check with kubernetes-validate --strict when it is installed
#     (pip install kubernetes-validate), otherwise skipped with a note
#   - grafana dashboards: schemaVersion >= 36, every panel has a title and a datasource uid
#     that the provisioned datasource defines
#
# The gateway-side checks (every metric name is exported, the configs pass the gateway's own
# validation) are in tests/deploy.rs (cargo test --test deploy).
set -euo pipefail

DEPLOY="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$DEPLOY")"
cd "$REPO"

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

step() { printf '== %s\n' "$*"; }
fail() { printf 'FAILED: %s\n' "$*" >&2; exit 1; }

# --- tools -------------------------------------------------------------------------------------
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
APT_UPDATED=0
apt_install() {
  command -v apt-get >/dev/null || fail "missing $*, and no apt-get to install it"
  if [ "$APT_UPDATED" -eq 0 ]; then
    as_root apt-get update -qq
    APT_UPDATED=1
  fi
  step "installing $* (apt-get)"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# A Python with PyYAML: the first python3 on PATH, else Debian's (python3-yaml installs there).
PY=""
pick_python() {
  local py
  for py in python3 /usr/bin/python3; do
    if command -v "$py" >/dev/null 2>&1 && "$py" -c 'import yaml, tomllib' >/dev/null 2>&1; then
      PY="$py"
      return 0
    fi
  done
  return 1
}

NEED=()
command -v promtool >/dev/null 2>&1 || NEED+=(prometheus)
pick_python || NEED+=(python3-yaml)
if [ "${#NEED[@]}" -gt 0 ]; then
  apt_install "${NEED[@]}"
  command -v promtool >/dev/null 2>&1 || fail "promtool still missing after installing prometheus"
  pick_python || fail "no python3 (>= 3.11, for tomllib) with PyYAML after installing python3-yaml"
fi
command -v systemd-analyze >/dev/null 2>&1 || apt_install systemd

# --- Prometheus ----------------------------------------------------------------------------------
step "promtool check rules deploy/prometheus/alerts.yml"
promtool check rules deploy/prometheus/alerts.yml

step "promtool test rules deploy/prometheus/alerts.test.yml"
promtool test rules deploy/prometheus/alerts.test.yml

# The real config reads the bearer token from the container's /run/secrets/...; promtool insists
# the file exists, so check a copy (next to a copy of the rule file it loads) pointing at a dummy.
step "promtool check config deploy/prometheus/prometheus.yml"
mkdir -p "$WORK/prometheus"
cp deploy/prometheus/*.yml "$WORK/prometheus/"
printf 'dummy-token\n' > "$WORK/prometheus/admin_token"
grep -q 'credentials_file: /run/secrets/ofapi_gateway_admin_token' "$WORK/prometheus/prometheus.yml" \
  || fail "prometheus.yml: expected credentials_file: /run/secrets/ofapi_gateway_admin_token"
sed -i "s#credentials_file: /run/secrets/ofapi_gateway_admin_token#credentials_file: $WORK/prometheus/admin_token#" \
  "$WORK/prometheus/prometheus.yml"
promtool check config "$WORK/prometheus/prometheus.yml"

step "promtool check rules <PromQL of deploy/grafana/dashboards/*.json>"
"$PY" - "$WORK/dashboard-rules.yml" deploy/grafana/dashboards/*.json <<'PY'
import json, sys, yaml
out, files = sys.argv[1], sys.argv[2:]
rules = []
def walk(node, where):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "expr" and isinstance(value, str) and value.strip():
                # Grafana variables -> something PromQL accepts.
                expr = (value.replace("$__rate_interval", "5m").replace("$__interval", "1m")
                             .replace("$__range", "1h").replace("$client", ".*"))
                rules.append({"record": f"dashboard:expr:{len(rules)}", "expr": expr})
            else:
                walk(value, where)
    elif isinstance(node, list):
        for item in node:
            walk(item, where)
for f in files:
    walk(json.load(open(f)), f)
if not rules:
    sys.exit("no PromQL expressions found in the dashboards")
yaml.safe_dump({"groups": [{"name": "dashboard-expressions", "rules": rules}]}, open(out, "w"))
print(f"  {len(rules)} expressions from {len(files)} dashboard(s)")
PY
promtool check rules "$WORK/dashboard-rules.yml"

# --- systemd -------------------------------------------------------------------------------------
# verify complains when ExecStart's binary is missing; check a copy whose commands exist.
# Any other output (unknown key, invalid value) fails the check.
step "systemd-analyze verify deploy/systemd/ofapi-gateway.service"
mkdir -p "$WORK/systemd"
sed 's#/usr/local/bin/ofapi-gateway#/bin/true#g' deploy/systemd/ofapi-gateway.service \
  > "$WORK/systemd/ofapi-gateway.service"
if ! systemd-analyze verify "$WORK/systemd/ofapi-gateway.service" > "$WORK/verify.log" 2>&1 \
   || [ -s "$WORK/verify.log" ]; then
  cat "$WORK/verify.log" >&2
  fail "systemd-analyze verify deploy/systemd/ofapi-gateway.service"
fi
echo "  ok (no warnings)"

if command -v systemd-sysusers >/dev/null 2>&1; then
  step "systemd-sysusers --dry-run deploy/systemd/ofapi-gateway.sysusers.conf"
  systemd-sysusers --dry-run "$DEPLOY/systemd/ofapi-gateway.sysusers.conf" > "$WORK/sysusers.log" 2>&1 \
    || { cat "$WORK/sysusers.log" >&2; fail "sysusers.conf"; }
  echo "  ok"
fi

# --- YAML / JSON / TOML, k8s, Grafana ------------------------------------------------------------
step "parse YAML, JSON and TOML under deploy/; k8s and Grafana structure"
"$PY" - "$DEPLOY" <<'PY'
import json, pathlib, sys, tomllib, yaml
deploy = pathlib.Path(sys.argv[1])
errors = []
def rel(p): return str(p.relative_to(deploy.parent))

yamls = sorted(p for p in deploy.rglob("*") if p.suffix in (".yml", ".yaml"))
jsons = sorted(deploy.rglob("*.json"))
tomls = sorted(deploy.rglob("*.toml"))
docs = {}
for p in yamls:
    try:
        docs[p] = [d for d in yaml.safe_load_all(p.read_text()) if d is not None]
        print(f"  yaml  {rel(p)} ({len(docs[p])} document(s))")
    except yaml.YAMLError as e:
        errors.append(f"{rel(p)}: {e}")
parsed_json = {}
for p in jsons:
    try:
        parsed_json[p] = json.loads(p.read_text())
        print(f"  json  {rel(p)}")
    except json.JSONDecodeError as e:
        errors.append(f"{rel(p)}: {e}")
for p in tomls:
    try:
        tomllib.loads(p.read_text())
        print(f"  toml  {rel(p)}")
    except tomllib.TOMLDecodeError as e:
        errors.append(f"{rel(p)}: {e}")

# Kubernetes manifests.
for p, ds in docs.items():
    if p.parent.name != "k8s":
        continue
    for i, d in enumerate(ds):
        if p.name == "kustomization.yaml":
            continue
        if not isinstance(d, dict) or not d.get("apiVersion") or not d.get("kind") \
                or not (d.get("metadata") or {}).get("name"):
            errors.append(f"{rel(p)} document {i}: needs apiVersion, kind and metadata.name")
            continue
        if d["kind"] == "ConfigMap":
            for key, text in (d.get("data") or {}).items():
                if key.endswith(".toml"):
                    try:
                        tomllib.loads(text)
                        print(f"  toml  {rel(p)}: data.{key}")
                    except tomllib.TOMLDecodeError as e:
                        errors.append(f"{rel(p)} data.{key}: {e}")
        if d["kind"] == "Deployment":
            spec = d["spec"]
            if spec.get("replicas") != 1 or spec.get("strategy", {}).get("type") != "Recreate":
                errors.append(f"{rel(p)}: must be replicas: 1 with strategy Recreate (one limiter, one ledger)")

# Grafana: datasource uids provisioned, and every panel of every dashboard uses one.
uids = set()
for p, ds in docs.items():
    if "datasources" in p.parts:
        for d in ds:
            uids.update(x.get("uid") for x in d.get("datasources", []) if x.get("uid"))
for p, dash in parsed_json.items():
    if "dashboards" not in p.parts:
        continue
    if dash.get("schemaVersion", 0) < 36:
        errors.append(f"{rel(p)}: schemaVersion {dash.get('schemaVersion')} < 36")
    def panels(ps):
        for x in ps:
            yield x
            yield from panels(x.get("panels", []))
    n = 0
    for panel in panels(dash.get("panels", [])):
        n += 1
        title = panel.get("title")
        uid = (panel.get("datasource") or {}).get("uid")
        if not title:
            errors.append(f"{rel(p)}: panel {panel.get('id')} has no title")
        if uid not in uids:
            errors.append(f"{rel(p)}: panel {title!r}: datasource uid {uid!r} not provisioned {sorted(uids)}")
        for t in panel.get("targets", []):
            if not t.get("expr"):
                errors.append(f"{rel(p)}: panel {title!r}: target {t.get('refId')} has no expr")
    print(f"  grafana {rel(p)}: {n} panels, datasource uid(s) {sorted(uids)}")

if errors:
    print("\n".join(errors), file=sys.stderr)
    sys.exit(1)
PY

if command -v kubectl >/dev/null 2>&1; then
  step "kubectl kustomize deploy/k8s"
  kubectl kustomize deploy/k8s > "$WORK/k8s.yaml"
  echo "  ok ($(grep -c '^kind:' "$WORK/k8s.yaml") resources)"
else
  step "kubectl kustomize deploy/k8s: skipped (no kubectl)"
fi

if command -v kubernetes-validate >/dev/null 2>&1; then
  step "kubernetes-validate --strict deploy/k8s (schemas of Kubernetes $(kubernetes-validate --version))"
  manifests=()
  for f in deploy/k8s/*.yaml; do
    [ "$(basename "$f")" = kustomization.yaml ] || manifests+=("$f")
  done
  kubernetes-validate --strict --quiet "${manifests[@]}"
  echo "  ok"
else
  step "kubernetes-validate: skipped (not installed; pip install kubernetes-validate to enable)"
fi

step "deploy/ is valid"
