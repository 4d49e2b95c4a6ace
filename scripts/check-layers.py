#!/usr/bin/env python3
"""The layering rules, checked from the code (scripts/test.sh runs this; docs/architecture.md
draws the result).

1. Crates depend downwards only: each workspace crate's kvtier-* dependencies (normal and
   build) sit on a lower layer of LAYERS. Test fixtures (kvtier-testkit) are a dev-dependency
   of every shipped crate, never a normal one.
2. No module cycle inside a crate: a crate's top-level modules (src/<name>.rs or
   src/<name>/) import each other (`crate::<name>`) in one direction. Tests are not counted
   (files named tests.rs or *_tests.rs, and an inline `#[cfg(test)] mod tests` to the end of
   its file): a test may use any module. KNOWN_CYCLES lists
   the cycles not yet broken; a cycle not listed fails, and a listed one that is gone must be
   removed from the list.
3. The client links no server: `cargo tree -p kvtier-client` (its features as a user's build
   resolves them, not the workspace's) names none of CLIENT_NEVER_LINKS, and does not turn on
   kvtier-proto's `etcd` feature.
4. Files a reader can hold in their head: no Rust source file (crates, tests, benches, the
   Dynamo connector) over MAX_LINES lines.
"""

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Lowest first; crates on one layer may not depend on each other.
LAYERS = [
    ["kvtier-proto"],
    ["kvtier-tiers"],
    ["kvtier-types"],
    ["kvtier-client"],
    ["kvtier-blockmgr"],
    ["kvtier-s3", "kvtier-lmcache"],
    ["kvtier-server", "kvtier-python"],
    ["kvtier-bench"],
]
DEV_ONLY = {"kvtier-testkit"}
# Fixtures and benchmarks: not shipped, so they may link fixtures.
NOT_SHIPPED = {"kvtier-testkit", "kvtier-bench"}

# crate -> cycles among its top-level modules still to break (issue 21: the node and the
# objects layer call each other until named objects sit above a BlockStore trait).
KNOWN_CYCLES = {}


# What a Rust user of kvtier-client must not link: a server (axum: tonic's `router`), the
# node's caches and metrics, the node itself and its front ends.
CLIENT_NEVER_LINKS = {"axum", "moka", "prometheus", "kvtier-blockmgr", "kvtier-s3", "kvtier-lmcache", "kvtier-server"}


def check_client_links():
    tree = subprocess.check_output(
        ["cargo", "tree", "-p", "kvtier-client", "-e", "normal", "--prefix", "none", "--format", "{p}", "--locked"],
        cwd=ROOT,
        text=True,
    )
    linked = {line.split()[0] for line in tree.splitlines() if line.strip()}
    errors = [f"kvtier-client links {name}" for name in sorted(linked & CLIENT_NEVER_LINKS)]
    # Nor compiles etcd's API (kvtier-proto's `etcd` feature, the node's membership only).
    features = subprocess.check_output(
        ["cargo", "tree", "-p", "kvtier-client", "-e", "normal,features", "--prefix", "none", "--locked"],
        cwd=ROOT,
        text=True,
    )
    if 'kvtier-proto feature "etcd"' in features:
        errors.append("kvtier-client compiles etcd's API (kvtier-proto's etcd feature)")
    return errors


def layer_of(name):
    for i, layer in enumerate(LAYERS):
        if name in layer:
            return i
    return None


def check_crates(meta):
    errors = []
    members = {p["id"] for p in meta["packages"] if p["id"] in meta["workspace_members"]}
    for pkg in meta["packages"]:
        if pkg["id"] not in members:
            continue
        name = pkg["name"]
        mine = layer_of(name)
        if mine is None and name not in NOT_SHIPPED:
            errors.append(f"{name}: not placed on a layer in scripts/check-layers.py")
            continue
        for dep in pkg["dependencies"]:
            dname, kind = dep["name"], dep["kind"]  # kind: None (normal), "dev", "build"
            if not dname.startswith("kvtier-") or kind == "dev":
                continue
            if dname in DEV_ONLY:
                # Optional: behind a feature other crates' tests enable (tiers' conformance).
                if name not in NOT_SHIPPED and not dep["optional"]:
                    errors.append(f"{name} depends on the fixtures {dname} outside dev-dependencies")
                continue
            theirs = layer_of(dname)
            if mine is not None and theirs is not None and theirs >= mine:
                errors.append(f"{name} (layer {mine}) depends on {dname} (layer {theirs}): upwards or sideways")
    return errors


USE = re.compile(r"\bcrate::([a-z_][a-z0-9_]*)")
INLINE_TESTS = re.compile(r"#\[cfg\(test\)\]\s*mod tests\b")


def code_of(path):
    """The file's text without its tests."""
    if path.name == "tests.rs" or path.name.endswith("_tests.rs"):
        return ""
    text = path.read_text()
    found = INLINE_TESTS.search(text)
    text = text[: found.start()] if found else text
    # Comments (docs linking a module) are not imports.
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("//"))


USE_GROUP = re.compile(r"\buse crate::\{")


def top_level_items(group):
    """The first path segment of each item of a `{...}` use group (nested braces skipped)."""
    items, depth, current = [], 0, ""
    for ch in group:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(current)
            current = ""
            continue
        if depth == 0:
            current += ch
    items.append(current)
    return [re.split(r"::|\s", i.strip())[0] for i in items if i.strip()]


def named(text):
    """Every first segment after `crate::`, inside `use crate::{...}` groups too."""
    names = USE.findall(text)
    for m in USE_GROUP.finditer(text):
        depth, end = 1, m.end()
        while depth and end < len(text):
            depth += {"{": 1, "}": -1}.get(text[end], 0)
            end += 1
        names += top_level_items(text[m.end() : end - 1])
    return names


def reexports(lib):
    """Root names (`pub use module::{A, B}` in lib.rs) -> the module they come from."""
    owner = {}
    text = lib.read_text() if lib.exists() else ""
    for m in re.finditer(r"pub(?:\(crate\))? use (?:self::)?([a-z_][a-z0-9_]*)::(\{[^;]*\}|[A-Za-z_][A-Za-z0-9_]*);", text):
        module, what = m.group(1), m.group(2)
        for item in top_level_items(what[1:-1]) if what.startswith("{") else [what]:
            owner[item] = module
    return owner


def module_graph(src):
    """Top-level module -> the top-level modules its files name through `crate::` (a root
    re-export counts as the module it comes from)."""
    owner = reexports(src / "lib.rs")
    graph = {}
    for path in sorted(src.iterdir()):
        if path.name in ("lib.rs", "main.rs") or (path.is_file() and path.suffix != ".rs"):
            continue
        name = path.stem if path.is_file() else path.name
        files = [path] if path.is_file() else sorted(path.rglob("*.rs"))
        text = "\n".join(code_of(f) for f in files)
        # A module's sibling file `x.rs` and directory `x/` are one module.
        graph.setdefault(name, set()).update(owner.get(n, n) for n in named(text))
    names = set(graph)
    return {m: {d for d in deps if d in names and d != m} for m, deps in graph.items()}


def cycles(graph):
    """Each pair of modules that reach each other, as a sorted pair (enough to name a cycle)."""
    reach = {}
    for start in graph:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        reach[start] = seen
    return sorted({tuple(sorted((a, b))) for a in graph for b in reach[a] if a != b and a in reach[b]})


def check_modules(meta):
    errors = []
    for pkg in meta["packages"]:
        if pkg["id"] not in meta["workspace_members"]:
            continue
        src = Path(pkg["manifest_path"]).parent / "src"
        if not src.is_dir():
            continue
        found = [list(c) for c in cycles(module_graph(src))]
        known = KNOWN_CYCLES.get(pkg["name"], [])
        for c in found:
            if c not in known:
                errors.append(f"{pkg['name']}: modules {c[0]} and {c[1]} import each other")
        for c in known:
            if c not in found:
                errors.append(f"{pkg['name']}: the cycle {c} is gone: remove it from KNOWN_CYCLES")
        if found:
            print(f"{pkg['name']}: known module cycles still to break: {found}")
    return errors


MAX_LINES = 500


def check_file_sizes():
    errors = []
    for path in sorted(ROOT.rglob("*.rs")):
        if "target" in path.relative_to(ROOT).parts or path.relative_to(ROOT).parts[0].startswith("."):
            continue
        lines = path.read_text().count("\n")
        if lines > MAX_LINES:
            errors.append(f"{path.relative_to(ROOT)}: {lines} lines (at most {MAX_LINES}); split it along a seam")
    return errors


def main():
    meta = json.loads(
        subprocess.check_output(["cargo", "metadata", "--format-version", "1", "--no-deps", "--locked"], cwd=ROOT)
    )
    errors = check_crates(meta) + check_modules(meta) + check_client_links() + check_file_sizes()
    for e in errors:
        print(f"layering: {e}", file=sys.stderr)
    if errors:
        sys.exit(1)
    print(f"layering: crates depend downwards; no module cycle beyond the known ones; no file over {MAX_LINES} lines")


if __name__ == "__main__":
    main()
