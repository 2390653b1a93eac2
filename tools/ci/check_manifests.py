#!/usr/bin/env python3
"""Lint the manifests under tekton/ and deploy/: yamllint (.yamllint), the JSON Schemas of
../shared/schemas (Tekton, Kubernetes, Argo CD, Prometheus Operator, kustomize, Grafana) and,
when `promtool` is on PATH, `promtool check rules` on every PrometheusRule's groups.

Run by yolo-infer/tests/pipeline_manifests.rs (cargo test); by hand:
    .venv/bin/python tools/ci/check_manifests.py --schemas ../shared/schemas
Exit status 0 when everything passes, 1 otherwise. A document whose kind has no schema here
(e.g. ClusterRoleBinding) is listed, not failed.
"""

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import jsonschema
import yaml

ROOT = Path(__file__).resolve().parents[2]
DIRS = ["tekton", "deploy"]

GROUP_DIRS = {
    "tekton.dev": "tekton",
    "triggers.tekton.dev": "tekton",
    "argoproj.io": "argocd",
    "monitoring.coreos.com": "prometheus-operator",
}


def schema_path(schemas: Path, doc: dict, path: Path):
    """The schema file for one document, or None when the folder has none for its kind."""
    if path.name in ("kustomization.yaml", "kustomization.yml"):
        return schemas / "kustomize" / "kustomization.json"
    api, kind = doc.get("apiVersion", ""), doc.get("kind", "")
    group, _, version = api.rpartition("/")
    if group in GROUP_DIRS:
        folder = schemas / GROUP_DIRS[group]
        # tekton/task-tekton.dev-v1.json, argocd/application-argoproj.io-v1alpha1.json, ...
        p = folder / f"{kind.lower()}-{group}-{version}.json"
        return p if p.exists() else None
    label = [group.split(".")[0]] if group else []
    p = schemas / "kubernetes" / ("-".join([kind.lower()] + label + [version]) + ".json")
    return p if p.exists() else None


def validate(schema_file: Path, doc, where: str, cache: dict) -> list:
    if schema_file not in cache:
        cache[schema_file] = jsonschema.Draft7Validator(json.loads(schema_file.read_text()))
    errors = []
    for err in sorted(cache[schema_file].iter_errors(doc), key=lambda e: list(e.absolute_path)):
        loc = "/".join(str(x) for x in err.absolute_path)
        errors.append(f"{where}: {loc}: {err.message[:300]}")
    return errors


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--schemas", type=Path, default=ROOT.parent / "shared" / "schemas")
    ap.add_argument("--no-yamllint", action="store_true")
    args = ap.parse_args()
    failures = []

    files = sorted(p for d in DIRS for p in (ROOT / d).rglob("*") if p.suffix in (".yaml", ".yml"))
    if not files:
        print("no manifests found", file=sys.stderr)
        return 1

    if not args.no_yamllint:
        r = subprocess.run(
            [sys.executable, "-m", "yamllint", "-c", str(ROOT / ".yamllint"), "-f", "parsable", *DIRS],
            cwd=ROOT, capture_output=True, text=True,
        )
        if r.returncode != 0:
            failures.append("yamllint:\n" + r.stdout + r.stderr)
        else:
            print(f"yamllint: {len(files)} files clean")

    cache, checked, unchecked, rules = {}, 0, [], []
    if args.schemas.is_dir():
        for f in files:
            rel = f.relative_to(ROOT)
            for i, doc in enumerate(yaml.safe_load_all(f.read_text())):
                if doc is None:
                    continue
                where = f"{rel}#{i} {doc.get('kind')}/{(doc.get('metadata') or {}).get('name', '')}"
                if doc.get("kind") == "PrometheusRule":
                    rules.append((where, doc))
                sp = schema_path(args.schemas, doc, f)
                if sp is None:
                    unchecked.append(where)
                    continue
                failures += validate(sp, doc, where, cache)
                checked += 1
                # TriggerTemplate resources are checked against their own schemas too.
                if doc.get("kind") == "TriggerTemplate":
                    for j, rt in enumerate((doc.get("spec") or {}).get("resourcetemplates") or []):
                        rsp = schema_path(args.schemas, rt, f)
                        if rsp is not None:
                            failures += validate(rsp, rt, f"{where} resourcetemplates[{j}]", cache)
                            checked += 1
        for dash in sorted((ROOT / "deploy").rglob("*.json")):
            failures += validate(args.schemas / "grafana" / "dashboard.jsonschema.json",
                                 json.loads(dash.read_text()), str(dash.relative_to(ROOT)), cache)
            checked += 1
        print(f"schemas: validated {checked} documents against {args.schemas}")
        for u in unchecked:
            print(f"schemas: no schema for {u} (not validated)")
    else:
        print(f"skipped: {args.schemas} is absent (no JSON Schema validation)")
        for f in files:
            for doc in yaml.safe_load_all(f.read_text()):
                if doc and doc.get("kind") == "PrometheusRule":
                    rules.append((str(f.relative_to(ROOT)), doc))

    promtool = shutil.which("promtool")
    if promtool is None:
        print("skipped: promtool is not on PATH (Debian package `prometheus`)")
    else:
        for where, doc in rules:
            with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as tmp:
                yaml.safe_dump({"groups": doc["spec"]["groups"]}, tmp, sort_keys=False)
            r = subprocess.run([promtool, "check", "rules", tmp.name], capture_output=True, text=True)
            Path(tmp.name).unlink()
            if r.returncode != 0:
                failures.append(f"promtool check rules {where}:\n{r.stdout}{r.stderr}")
            else:
                print(f"promtool: {where}: {r.stdout.strip().splitlines()[-1] if r.stdout.strip() else 'ok'}")

    for f in failures:
        print("FAIL " + f, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
