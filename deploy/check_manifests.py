"""The checks of deploy/check-manifests.sh (see there). Usage: check_manifests.py BINARY"""

import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile

import yaml

BINARY = sys.argv[1]
failures = []


def fail(message):
    failures.append(message)
    print(f"[manifests] FAIL {message}")


# 1. The overlay renders, or at least names files that exist.
for kustomization in sorted(glob.glob("k8s/**/kustomization.yaml", recursive=True)):
    folder = os.path.dirname(kustomization)
    with open(kustomization) as f:
        spec = yaml.safe_load(f)
    for resource in spec.get("resources", []):
        if not os.path.exists(os.path.join(folder, resource)):
            fail(f"{kustomization} names {resource}, which does not exist")
rendered = []
if shutil.which("kubectl"):
    for overlay in sorted(glob.glob("k8s/overlays/*/")):
        out = subprocess.run(
            ["kubectl", "kustomize", overlay], capture_output=True, text=True
        )
        if out.returncode != 0:
            fail(f"kubectl kustomize {overlay}: {out.stderr.strip()}")
            continue
        path = os.path.join(tempfile.mkdtemp(), "rendered.yaml")
        with open(path, "w") as f:
            f.write(out.stdout)
        rendered.append(path)
        print(f"[manifests] {overlay} renders ({out.stdout.count('kind:')} resources)")
else:
    print("[manifests] kubectl not installed: overlays not rendered, their references checked")

# 2. Schemas: the base files one by one, and every rendered overlay.
manifests = sorted(glob.glob("k8s/**/*.yaml", recursive=True))
manifests = [m for m in manifests if not m.endswith("kustomization.yaml")]
out = subprocess.run(
    ["kubernetes-validate", "--strict", "--quiet", *manifests, *rendered],
    capture_output=True,
    text=True,
)
for line in (out.stdout + out.stderr).splitlines():
    if line.startswith("ERROR"):
        fail(line)
    elif "Couldn't find schema" in line and "keda.sh" not in line:
        fail(line)
print(f"[manifests] {len(manifests)} manifests and {len(rendered)} rendered overlays validated")

# 3. Every AIRCALL_INGEST_* variable set anywhere is a setting.
names = set()
for path in [*manifests, "deploy/compose.yaml", "deploy/Dockerfile"]:
    with open(path) as f:
        names.update(re.findall(r"\b(AIRCALL_INGEST_[A-Z0-9_]+)\b", f.read()))
env = {"PATH": os.environ.get("PATH", ""), "AIRCALL_INGEST_MODE": "development"}
config = subprocess.run([BINARY, "config"], capture_output=True, text=True, env=env)
settings = set()
section = ""
for line in config.stdout.splitlines():
    header = re.match(r"^\[([a-z0-9_.]+)\]$", line)
    if header:
        section = header.group(1) + "."
        continue
    key = re.match(r"^([a-z0-9_]+) = ", line)
    if key:
        settings.add(section + key.group(1))
if not settings:
    fail(f"`{BINARY} config` printed no settings: {config.stderr.strip()}")
for name in sorted(names):
    setting = name.removeprefix("AIRCALL_INGEST_").lower().replace("__", ".")
    if setting not in settings:
        fail(f"{name} is set in the deployment files but `{setting}` is not a setting")
if not failures:
    print(f"[manifests] {len(names)} AIRCALL_INGEST_* variables, all settings")

# 4. The production configuration example is valid, given the secrets it leaves to the
#    environment.
example = {
    **env,
    "AIRCALL_INGEST_MODE": "production",
    "AIRCALL_INGEST_ADMIN_TOKEN": "an-admin-token-of-the-check",
    "AIRCALL_INGEST_SECRET_KEY": "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
    "AIRCALL_INGEST_STORAGE__S3_SECRET_ACCESS_KEY": "secret-of-the-check",
}
out = subprocess.run(
    [BINARY, "--config", "deploy/production.example.toml", "config"],
    capture_output=True,
    text=True,
    env=example,
)
if out.returncode != 0:
    fail(f"deploy/production.example.toml: {out.stderr.strip()}")
else:
    print("[manifests] deploy/production.example.toml is a valid production configuration")

sys.exit(1 if failures else 0)
