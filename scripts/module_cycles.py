#!/usr/bin/env python3
"""Reports import cycles between the modules of each workspace crate (non-test code).

A module is a file under src/ (mod.rs and lib.rs stand for their folder/crate root). An edge
A -> B is a `crate::B...` or `super::...` path in A's code before its `#[cfg(test)]` part, B
resolved to the longest module path that exists. Exit code 1 when a cycle exists.
"""
import os, re, sys

def modules(src):
    mods = {}
    for dirpath, _, files in os.walk(src):
        for f in files:
            if not f.endswith('.rs'):
                continue
            path = os.path.join(dirpath, f)
            rel = os.path.relpath(path, src)[:-3].split(os.sep)
            if rel[-1] in ('mod', 'lib', 'main'):
                rel = rel[:-1]
            if rel and rel[0] == 'bin':
                continue
            if rel and rel[-1] == 'tests':
                continue
            mods[tuple(rel)] = path
    return mods

def resolve(mods, parts):
    for n in range(len(parts), 0, -1):
        if tuple(parts[:n]) in mods:
            return tuple(parts[:n])
    return None

def edges(mods):
    out = {m: set() for m in mods}
    for m, path in mods.items():
        text = open(path).read()
        cut = text.find('#[cfg(test)]\nmod tests')
        if cut >= 0:
            text = text[:cut]
        text = re.sub(r'//.*', '', text)
        for hit in re.finditer(r'\b(crate|super)((?:::[a-z_][a-z0-9_]*)+)', text):
            parts = hit.group(2).strip(':').split('::')
            if hit.group(1) == 'super':
                base = list(m[:-1]) if not path.endswith('mod.rs') else list(m[:-1])
                target = resolve(mods, base + parts)
            else:
                target = resolve(mods, parts)
            if target is not None and target != m and not m[:len(target)] == target:
                # A module using its own ancestor's re-export counts as an edge to the ancestor
                # only when the ancestor is not the crate root.
                out[m].add(target)
            elif target is not None and target != m and m[:len(target)] == target and target != ():
                out[m].add(target)
    return out

def cycles(graph):
    found, stack, state = [], [], {}
    def visit(n):
        state[n] = 1
        stack.append(n)
        for t in sorted(graph.get(n, ())):
            if state.get(t) == 1:
                found.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t)
        stack.pop()
        state[n] = 2
    for n in sorted(graph):
        if n not in state:
            visit(n)
    return found

root = sys.argv[1] if len(sys.argv) > 1 else '.'
bad = 0
for crate in sorted(os.listdir(root)):
    src = os.path.join(root, crate, 'src')
    if not os.path.isdir(src):
        continue
    mods = modules(src)
    for c in cycles(edges(mods)):
        bad += 1
        print(f"{crate}: " + ' -> '.join('::'.join(m) or 'crate' for m in c))
sys.exit(1 if bad else 0)
