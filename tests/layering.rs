//! The crate's layers, checked against its source: every `crate::` path in `src/` may only
//! name its own layer or one below it (the table in ARCHITECTURE.md), and the files of one
//! folder use each other without a cycle. A `use` that breaks either fails this test with
//! the file and line.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, from the bottom up. A module may use its own layer and those before it.
const LAYERS: &[&str] = &[
    "protocol",
    "error",
    "engine",
    "connection",
    "fanout",
    "json",
    "backplane",
    "server",
    "signalr",
];

/// One `crate::` path found in a source file.
#[derive(Debug, Clone)]
struct Reference {
    /// The file's module path, e.g. `["engine", "core"]`.
    from: Vec<String>,
    /// The path after `crate::`, e.g. `["engine", "queue", "Outbound"]`.
    to: Vec<String>,
    file: String,
    line: usize,
}

/// The module path of a file under `src/`: `engine/core.rs` is `engine::core`,
/// `engine/mod.rs` is `engine`, `lib.rs` is the root (empty).
fn module_path(relative: &Path) -> Vec<String> {
    let mut parts: Vec<String> = relative
        .iter()
        .map(|part| part.to_string_lossy().into_owned())
        .collect();
    if let Some(last) = parts.pop() {
        let stem = last.trim_end_matches(".rs");
        if stem != "mod" && stem != "lib" {
            parts.push(stem.to_owned());
        }
    }
    parts
}

/// Every `crate::a::b` path in `source` outside comments, with its line number. Grouped
/// imports (`crate::{a, b}`) are refused: one path per `use` keeps this check simple and
/// the imports easy to read.
fn crate_paths(source: &str) -> Result<Vec<(usize, Vec<String>)>, String> {
    let mut found = Vec::new();
    for (index, line) in source.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            // `$crate::` in macros and identifiers ending in `crate` are not paths.
            let before = rest[..at].chars().next_back();
            rest = &rest[at + "crate::".len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
                continue;
            }
            if rest.starts_with('{') {
                return Err(format!(
                    "line {}: grouped `crate::{{..}}` import; write one path per use",
                    index + 1
                ));
            }
            let path: Vec<String> = rest
                .split("::")
                .map(|segment| {
                    segment
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect::<String>()
                })
                .take_while(|segment| !segment.is_empty())
                .collect();
            if !path.is_empty() {
                found.push((index + 1, path));
            }
        }
    }
    Ok(found)
}

fn layer_of(module: &[String]) -> Option<usize> {
    let top = module.first()?;
    LAYERS.iter().position(|layer| layer == top)
}

/// The checks, on references already read: returns one line per violation.
fn violations(references: &[Reference], modules: &BTreeSet<Vec<String>>) -> Vec<String> {
    let mut problems = Vec::new();
    // 1. Layers: only downward (or within the layer).
    for reference in references {
        let (Some(from), Some(to)) = (layer_of(&reference.from), layer_of(&reference.to)) else {
            // The crate root (lib.rs) may use everything; unknown top-level names are
            // re-exports at the root (`crate::Config`), which only the root may name.
            if !reference.from.is_empty() && layer_of(&reference.to).is_none() {
                problems.push(format!(
                    "{}:{}: `crate::{}` is not in a layer; name the item's module",
                    reference.file,
                    reference.line,
                    reference.to.join("::")
                ));
            }
            continue;
        };
        if to > from {
            problems.push(format!(
                "{}:{}: layer `{}` uses `crate::{}` of the higher layer `{}`",
                reference.file,
                reference.line,
                LAYERS[from],
                reference.to.join("::"),
                LAYERS[to]
            ));
        }
    }
    // 2. Siblings: the files of one folder form no cycle. A file may use its parent
    // module (and the parent its children), as a folder's `mod.rs` and its files do.
    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for reference in references {
        // The longest module prefix of the path is the module it uses.
        let target = (1..=reference.to.len())
            .rev()
            .map(|len| reference.to[..len].to_vec())
            .find(|prefix| modules.contains(prefix));
        let Some(target) = target else { continue };
        let from = &reference.from;
        let siblings = from.len() == target.len()
            && !from.is_empty()
            && from[..from.len() - 1] == target[..target.len() - 1]
            && *from != target;
        if siblings {
            edges.entry(from.clone()).or_default().insert(target);
        }
    }
    if let Some(cycle) = find_cycle(&edges) {
        let names: Vec<String> = cycle.iter().map(|module| module.join("::")).collect();
        problems.push(format!(
            "modules use each other in a cycle: {}",
            names.join(" -> ")
        ));
    }
    problems
}

/// A cycle in `edges`, as the modules along it (first repeated last), if there is one.
fn find_cycle(edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>) -> Option<Vec<Vec<String>>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit(
        node: &Vec<String>,
        edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        marks: &mut BTreeMap<Vec<String>, Mark>,
        stack: &mut Vec<Vec<String>>,
    ) -> Option<Vec<Vec<String>>> {
        match marks.get(node) {
            Some(Mark::Done) => return None,
            Some(Mark::Open) => {
                let start = stack.iter().position(|n| n == node).unwrap_or(0);
                let mut cycle = stack[start..].to_vec();
                cycle.push(node.clone());
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(node.clone(), Mark::Open);
        stack.push(node.clone());
        for next in edges.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, edges, marks, stack) {
                return Some(cycle);
            }
        }
        stack.pop();
        marks.insert(node.clone(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for node in edges.keys() {
        if let Some(cycle) = visit(node, edges, &mut marks, &mut Vec::new()) {
            return Some(cycle);
        }
    }
    None
}

fn rust_files(dir: &Path, into: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read {dir:?}: {e}"));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, into);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            into.push(path);
        }
    }
}

/// Reads every file under `src/` into references and the set of module paths.
fn read_crate() -> (Vec<Reference>, BTreeSet<Vec<String>>) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut references = Vec::new();
    let mut modules = BTreeSet::new();
    for path in files {
        let relative = path.strip_prefix(&src).expect("under src");
        let module = module_path(relative);
        modules.insert(module.clone());
        let source = std::fs::read_to_string(&path).expect("read source");
        let file = format!("src/{}", relative.display());
        let paths = crate_paths(&source).unwrap_or_else(|problem| panic!("{file}: {problem}"));
        for (line, to) in paths {
            references.push(Reference {
                from: module.clone(),
                to,
                file: file.clone(),
                line,
            });
        }
    }
    (references, modules)
}

#[test]
fn every_module_uses_only_its_own_layer_and_those_below() {
    let (references, modules) = read_crate();
    assert!(
        references.len() > 50,
        "found only {} crate:: paths; is the source still where this test looks?",
        references.len()
    );
    for layer in LAYERS {
        assert!(
            modules.contains(&vec![layer.to_string()]),
            "the layer `{layer}` of the table has no module in src/"
        );
    }
    let problems = violations(&references, &modules);
    assert!(
        problems.is_empty(),
        "the layering is broken (see ARCHITECTURE.md):\n{}",
        problems.join("\n")
    );
}

/// The checker itself, on a planted tree: it must see an upward use and a cycle.
#[test]
fn the_check_catches_an_upward_use_and_a_cycle_between_siblings() {
    let module = |path: &str| -> Vec<String> { path.split("::").map(str::to_owned).collect() };
    let modules: BTreeSet<Vec<String>> = ["engine", "engine::core", "engine::writer", "server"]
        .into_iter()
        .map(module)
        .collect();
    let reference = |from: &str, to: &str| Reference {
        from: module(from),
        to: module(to),
        file: format!("src/{}.rs", from.replace("::", "/")),
        line: 1,
    };
    let fine = [
        reference("engine::core", "engine::writer::WriteSide"),
        reference("server", "engine::core::Core"),
    ];
    assert!(violations(&fine, &modules).is_empty());

    let upward = [reference("engine::core", "server::WebSocketServer")];
    let problems = violations(&upward, &modules);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains("higher layer `server`"),
        "{problems:?}"
    );

    let cycle = [
        reference("engine::core", "engine::writer::WriteSide"),
        reference("engine::writer", "engine::core::Core"),
    ];
    let problems = violations(&cycle, &modules);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("cycle"), "{problems:?}");

    assert!(crate_paths("use crate::{a, b};").is_err());
    assert_eq!(
        crate_paths("use crate::engine::core::Core; // crate::server::X\n").expect("parses"),
        [(1, module("engine::core::Core"))]
    );
}
