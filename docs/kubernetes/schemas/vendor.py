"""Write the JSON Schemas of KubeRay's RayJob and RayCluster (ray.io/v1) from KubeRay's CRD files, strict.

    .venv/bin/python docs/kubernetes/schemas/vendor.py KUBERAY/ray-operator/config/crd/bases [COMMIT TAG]

The CRDs' openAPIV3Schema lists each object's `properties` but never sets `additionalProperties: false`, so a
schema taken as it is accepts any misspelt field (the API server prunes or rejects it; a plain JSON Schema validator
does not). This adds `additionalProperties: false` to every object schema that lists properties and does not keep
unknown fields (`x-kubernetes-preserve-unknown-fields`); nothing else changes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
CRDS = {"RayJob": "ray.io_rayjobs.yaml", "RayCluster": "ray.io_rayclusters.yaml"}
SOURCE = "ray-project/kuberay, ray-operator/config/crd/bases/{file}, commit {commit} ({tag}; Apache License 2.0)"


def strict(schema: Any) -> Any:
    """The schema with `additionalProperties: false` wherever it lists properties and keeps no unknown fields."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key == "properties":
            out[key] = {name: strict(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not", "anyOf", "allOf", "oneOf"):
            out[key] = strict(value)
        else:
            out[key] = value
    if "properties" in out and "additionalProperties" not in out:
        if not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    return out


def vendor(crd_dir: Path, commit: str, tag: str) -> None:
    for kind, file in CRDS.items():
        crd = yaml.load((crd_dir / file).read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
        schema = {
            "$schema": "http://json-schema.org/draft-07/schema#",
            "$comment": f"{kind} ray.io/v1: the openAPIV3Schema of "
            + SOURCE.format(file=file, commit=commit, tag=tag)
            + ", with additionalProperties: false added by docs/kubernetes/schemas/vendor.py",
            **strict(version["schema"]["openAPIV3Schema"]),
        }
        out = HERE / f"{kind.lower()}-v1.json"
        out.write_text(json.dumps(schema, separators=(",", ":"), sort_keys=True) + "\n")
        print(f"{out}: {out.stat().st_size} bytes")


if __name__ == "__main__":
    commit, tag = sys.argv[2:4] if len(sys.argv) > 3 else ("feeaf72facab4881ba2b179248bb67315634e229", "v1.7.0-rc.0")
    vendor(Path(sys.argv[1]), commit, tag)
