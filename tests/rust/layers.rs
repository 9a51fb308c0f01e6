//! The core's floors (src/lib.rs, "Theory of operation"): a module imports
//! only from floors below its own or from its own folder, and no two modules
//! of src/ import each other in a circle, not even within a folder.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The top-level modules of src/, from the ground up.
const FLOORS: &[&[&str]] = &[&["job", "schedule", "sys"], &["metrics"], &["protocol", "store"], &["pool"], &["r"]];

type Module = Vec<String>;

fn floor(top: &str) -> Option<usize> {
    FLOORS.iter().position(|f| f.contains(&top))
}

/// Every .rs file under `dir`, as (module path, source).
fn modules(dir: &Path, prefix: &[String], out: &mut BTreeMap<Module, String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            let mut p = prefix.to_vec();
            p.push(name);
            modules(&path, &p, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let mut m = prefix.to_vec();
            if name != "mod" && name != "lib" {
                m.push(name);
            }
            out.insert(m, std::fs::read_to_string(&path).unwrap());
        }
    }
}

/// The code without comments and string literals (so a URL or a doc link
/// is no import).
fn code(src: &str) -> String {
    let mut out = String::with_capacity(src.len());
    for line in src.lines() {
        let (mut in_str, mut prev) = (false, ' ');
        for (i, c) in line.char_indices() {
            if !in_str && c == '/' && line[i..].starts_with("//") {
                break;
            }
            if c == '"' && prev != '\\' && !(prev == '\'' && line[i + 1..].starts_with('\'')) {
                in_str = !in_str;
            } else if !in_str {
                out.push(c);
            }
            prev = c;
        }
        out.push('\n');
    }
    out
}

/// The paths a piece of code names from `crate::`, `super::` or `self::`,
/// as module-relative segments with their start ("crate", "super", "self").
fn paths(code: &str) -> Vec<(String, Vec<String>)> {
    let mut found = Vec::new();
    let bytes = code.as_bytes();
    for start in ["crate::", "super::", "self::"] {
        let mut at = 0;
        while let Some(i) = code[at..].find(start) {
            let i = at + i;
            at = i + start.len();
            if i > 0 && (bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_' || bytes[i - 1] == b':') {
                continue;
            }
            let base = start.trim_end_matches(':').to_string();
            for segs in expand(&code[at..]) {
                found.push((base.clone(), segs));
            }
        }
    }
    found
}

/// The paths written at the start of `rest`: `a::b::C`, or a group `{a, b::c}`.
fn expand(rest: &str) -> Vec<Vec<String>> {
    let mut segs = Vec::new();
    let mut s = rest;
    loop {
        let s2 = s.trim_start();
        if let Some(group) = s2.strip_prefix('{') {
            let mut depth = 0;
            let mut end = group.len();
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        end = i;
                        break;
                    }
                    '}' => depth -= 1,
                    _ => {}
                }
            }
            let mut out = Vec::new();
            let mut depth = 0;
            let mut item_start = 0;
            let inner = &group[..end];
            for (i, c) in inner.char_indices().chain(std::iter::once((inner.len(), ','))) {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        for tail in expand(&inner[item_start..i]) {
                            let mut p = segs.clone();
                            p.extend(tail);
                            out.push(p);
                        }
                        item_start = i + 1;
                    }
                    _ => {}
                }
            }
            return out;
        }
        let ident: String = s2.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        if ident.is_empty() {
            break;
        }
        segs.push(ident.clone());
        s = &s2[ident.len()..];
        match s.strip_prefix("::") {
            Some(r) => s = r,
            None => break,
        }
    }
    vec![segs]
}

/// The module a path names: the longest prefix that is a module of src/.
fn resolve(from: &Module, base: &str, segs: &[String], all: &BTreeMap<Module, String>) -> Module {
    let mut m: Module = match base {
        "crate" => Vec::new(),
        "super" => from[..from.len().saturating_sub(1)].to_vec(),
        _ => from.clone(),
    };
    let mut best = m.clone();
    for s in segs {
        if s == "super" {
            m.pop();
        } else {
            m.push(s.clone());
        }
        if all.contains_key(&m) {
            best = m.clone();
        }
    }
    best
}

fn name(m: &Module) -> String {
    if m.is_empty() {
        "crate".into()
    } else {
        m.join("::")
    }
}

fn imports() -> BTreeMap<Module, BTreeSet<Module>> {
    let mut all = BTreeMap::new();
    modules(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &[], &mut all);
    let mut graph = BTreeMap::new();
    for (m, src) in &all {
        if m.is_empty() {
            continue; // lib.rs declares the floors
        }
        let edges: BTreeSet<Module> = paths(&code(src))
            .into_iter()
            .map(|(base, segs)| resolve(m, &base, &segs, &all))
            .filter(|t| !t.is_empty() && t != m)
            .collect();
        graph.insert(m.clone(), edges);
    }
    graph
}

#[test]
fn every_module_is_on_a_floor() {
    for m in imports().keys() {
        assert!(floor(&m[0]).is_some(), "src/{} is on no floor: add it to FLOORS and to lib.rs's theory", m.join("/"));
    }
}

#[test]
fn imports_run_downward() {
    let mut wrong = Vec::new();
    for (m, targets) in imports() {
        let here = floor(&m[0]).unwrap_or(0);
        for t in targets {
            let there = floor(&t[0]).unwrap_or(usize::MAX);
            if t[0] != m[0] && there >= here {
                wrong.push(format!("{} imports {} (floor {there} is not below {here})", name(&m), name(&t)));
            }
        }
    }
    assert!(wrong.is_empty(), "imports that do not run downward:\n{}", wrong.join("\n"));
}

#[test]
fn no_import_circle() {
    let graph = imports();
    // Depth-first search; a module met again on the current path closes a circle.
    fn visit(
        m: &Module,
        g: &BTreeMap<Module, BTreeSet<Module>>,
        path: &mut Vec<Module>,
        done: &mut BTreeSet<Module>,
    ) -> Option<Vec<Module>> {
        if let Some(i) = path.iter().position(|p| p == m) {
            let mut circle = path[i..].to_vec();
            circle.push(m.clone());
            return Some(circle);
        }
        if done.contains(m) {
            return None;
        }
        path.push(m.clone());
        for t in g.get(m).into_iter().flatten() {
            if let Some(c) = visit(t, g, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(m.clone());
        None
    }
    let mut done = BTreeSet::new();
    for m in graph.keys() {
        if let Some(circle) = visit(m, &graph, &mut Vec::new(), &mut done) {
            panic!("import circle: {}", circle.iter().map(name).collect::<Vec<_>>().join(" -> "));
        }
    }
}

#[test]
fn the_checker_sees_imports() {
    // What the three tests above rely on: paths, groups, super and comments.
    let code = code("use crate::job::{Job, Status};\nuse super::{shared::Shared, slot};\n// crate::r::api\nlet u = \"sqlite://x\"; crate::sys::now();");
    let p = paths(&code);
    let segs: Vec<String> = p.iter().map(|(b, s)| format!("{b}:{}", s.join("::"))).collect();
    assert_eq!(segs, ["crate:job::Job", "crate:job::Status", "crate:sys::now", "super:shared::Shared", "super:slot"]);
    let g = imports();
    let pool: Module = vec!["pool".into()];
    assert!(g[&pool].contains(&vec!["store".to_string()]), "pool imports store: {:?}", g[&pool]);
}
