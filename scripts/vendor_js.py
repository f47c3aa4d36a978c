r"""
# Vendoring the live model's JavaScript from npm

The site's live model (`docs/javascripts/live/`) runs on two npm packages, pinned by `package.json` and
`package-lock.json` at the repository root:

* `onnxruntime-web`: its WebAssembly build only, `ort.wasm.min.mjs` (the API, 54 kB), `ort-wasm-simd-threaded.mjs`
  (the loader, 25 kB) and `ort-wasm-simd-threaded.wasm` (the runtime, 14.8 MB, 3.8 MB gzipped). No smaller build
  runs our graph: the other `.wasm` files are the same runtime with WebGPU or JSPI added, and larger.
* `@huggingface/tokenizers`: `tokenizers.min.mjs` (37 kB), which reads our `tokenizer.json`.

`mkdocs build` must work offline without npm (`pip install -e ".[docs]"` is all it needs), so these files are
committed under `docs/assets/` like KaTeX, with `docs/assets/live-vendor.json` recording each package's version
and each file's sha256; `tests/test_live_model.py` holds that manifest to the lockfile and to the files. To
update a package: change its version in `package.json`, then

    npm install && python scripts/vendor_js.py

The pages load none of this until the reader presses a widget's button.
"""

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "docs" / "assets"
MANIFEST = ASSETS / "live-vendor.json"

# package -> (folder under docs/assets, files from the package's dist/, its licence)
VENDORED = {
    "onnxruntime-web": ("onnxruntime-web", ["ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs",
                                            "ort-wasm-simd-threaded.wasm"], "MIT"),
    "@huggingface/tokenizers": ("tokenizers", ["tokenizers.min.mjs"], "Apache-2.0"),
}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def locked_versions(lockfile: Path = ROOT / "package-lock.json") -> dict:
    """The version `package-lock.json` pins for each vendored package."""
    packages = json.loads(lockfile.read_text(encoding="utf-8"))["packages"]
    return {name: packages[f"node_modules/{name}"]["version"] for name in VENDORED}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Copy the live model's JavaScript and WASM from node_modules/ "
                                     "(after `npm install`) into docs/assets/, and record versions and hashes.")
    parser.parse_args(argv)
    versions = locked_versions()
    manifest = {}
    for name, (folder, files, licence) in VENDORED.items():
        package = ROOT / "node_modules" / name
        installed = json.loads((package / "package.json").read_text(encoding="utf-8"))["version"] \
            if (package / "package.json").is_file() else None
        if installed != versions[name]:
            print(f"node_modules/{name} is {installed or 'not installed'} but package-lock.json pins "
                  f"{versions[name]}: run `npm ci` first", file=sys.stderr)
            return 1
        target = ASSETS / folder
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        hashes = {}
        for file in files:
            source = package / "dist" / file
            text = None
            if file.endswith(".mjs"):
                # no source maps are vendored: drop the comment that would make developer tools ask for one
                text = "\n".join(line for line in source.read_text(encoding="utf-8").split("\n")
                                 if not line.startswith("//# sourceMappingURL="))
                (target / file).write_text(text, encoding="utf-8")
            else:
                shutil.copyfile(source, target / file)
            hashes[file] = sha256(target / file)
        (target / "README.txt").write_text(
            f"{name} {versions[name]} from the npm registry ({licence} licence), copied from its dist/ by "
            f"scripts/vendor_js.py; see docs/assets/live-vendor.json.\n", encoding="utf-8")
        manifest[name] = {"version": versions[name], "folder": folder, "files": hashes}
    MANIFEST.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    print(f"vendored {', '.join(f'{n} {v}' for n, v in versions.items())} into docs/assets/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
