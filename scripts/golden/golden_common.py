"""Shared helpers for the golden data generators (scripts/golden/)."""
import datetime
import hashlib
import importlib.metadata
import json
import math
import os
import pathlib
import platform
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
OUT_DIR = ROOT / "tests" / "data" / "golden"
MODELS = ROOT / "models"
GGUF = MODELS / "SmolLM2-135M-Instruct.Q4_1.gguf"
MINILM = MODELS / "all-MiniLM-L6-v2"
LLAMACPP_VERSION_FILE = ROOT / "build-peers" / "llama.cpp" / "VERSION"


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def versions(*dists):
    out = {}
    for d in dists:
        try:
            out[d.replace("-", "_")] = importlib.metadata.version(d)
        except importlib.metadata.PackageNotFoundError:
            out[d.replace("-", "_")] = None
    return out


def llamacpp_commit():
    try:
        words = LLAMACPP_VERSION_FILE.read_text().split()
        return words[words.index("llama.cpp") + 1]
    except (OSError, ValueError, IndexError):
        return "unknown"


def generator(script, packages, extra=None):
    g = {
        "script": "scripts/golden/" + script,
        "date": os.environ.get("GOLDEN_DATE") or datetime.date.today().isoformat(),
        "python": platform.python_version(),
        "packages": packages,
    }
    if extra:
        g.update(extra)
    return g


def gguf_model():
    return {"file": GGUF.name, "sha256": sha256_file(GGUF)}


def minilm_model():
    return {"dir": MINILM.name, "file": "model.safetensors",
            "sha256": sha256_file(MINILM / "model.safetensors"),
            "tokenizer_sha256": sha256_file(MINILM / "tokenizer.json")}


def round7(x):
    """Round a float to 7 significant digits (the JSON stays small and exact)."""
    x = float(x)
    if x == 0.0 or not math.isfinite(x):
        return 0.0 if x == 0.0 else x
    return float(f"{x:.7g}")


def _dump(v):
    return json.dumps(v, ensure_ascii=False, separators=(", ", ": "))


def _strip_date(obj):
    o = dict(obj)
    g = dict(o.get("generator", {}))
    g.pop("date", None)
    o["generator"] = g
    return o


def write_json(name, obj):
    """Writes OUT_DIR/name: top-level keys one per line, each case on one line.

    A file whose content is unchanged except for generator.date is left as it
    is, so that re-running the generators gives no diff."""
    path = OUT_DIR / name
    if path.exists():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
            if _strip_date(old) == _strip_date(json.loads(json.dumps(obj))):
                print(f"golden: {name} unchanged")
                return path
        except ValueError:
            pass
    lines = ["{"]
    keys = list(obj.keys())
    for i, k in enumerate(keys):
        v = obj[k]
        comma = "," if i + 1 < len(keys) else ""
        if k == "cases":
            lines.append(f'  "cases": [')
            for j, c in enumerate(v):
                lines.append("    " + _dump(c) + ("," if j + 1 < len(v) else ""))
            lines.append("  ]" + comma)
        else:
            lines.append(f"  {_dump(k)}: {_dump(v)}{comma}")
    lines.append("}")
    text = "\n".join(lines) + "\n"
    json.loads(text)  # must round-trip
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    print(f"golden: wrote {path.relative_to(ROOT)} ({len(obj.get('cases', []))} cases, {len(text)} bytes)")
    return path


def die(msg):
    print("golden: " + msg, file=sys.stderr)
    sys.exit(1)
