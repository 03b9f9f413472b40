//! The layer rules of both services, checked on their sources: a `domain/` file reaches
//! no adapter (`crate::store`, `crate::clients`) and not the `crate::api` that calls it;
//! an `api/` file reaches no `crate::store`. Every form counts: `use crate::store::…`,
//! `use crate::{store, …}`, a path such as `crate::store::x` in code, and `super::…`
//! climbing into those modules (inline `mod` blocks included). Comments and string
//! literals do not.

use std::{
    collections::BTreeSet,
    fmt,
    path::{Path, PathBuf},
};

use capstan_tests::tools;

/// Violations on the tree today, as (file, the module it reaches). The services are
/// being moved to their ports; this list may only shrink: the test fails on a violation
/// not listed here, and on a listed one that is gone (delete its line).
const KNOWN_VIOLATIONS: &[(&str, &str)] = &[];

const SERVICES: &[&str] = &["registry-svc", "pipeline-svc"];

/// The modules a layer must not reach.
fn banned(layer: &str) -> &'static [&'static str] {
    match layer {
        "domain" => &["store", "clients", "api"],
        "api" => &["store"],
        _ => &[],
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Violation {
    /// Relative to the checked root, with `/`.
    file: String,
    line: usize,
    /// The banned top-level module reached.
    reaches: String,
    /// The path as written.
    path: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let layer = self.file.split("/src/").nth(1).unwrap_or_default();
        let layer = layer.split('/').next().unwrap_or_default();
        write!(
            f,
            "{}:{}: {}/ reaches crate::{} through `{}`",
            self.file, self.line, layer, self.reaches, self.path
        )
    }
}

/// Every violation in `root/<service>/src` for each of `services`, in file order.
fn check(root: &Path, services: &[&str]) -> Vec<Violation> {
    let mut out = Vec::new();
    for service in services {
        let src = root.join(service).join("src");
        assert!(src.is_dir(), "{} is not a directory", src.display());
        for file in rust_files(&src) {
            let module = module_path(file.strip_prefix(&src).expect("under src"));
            let Some(layer) = module.first() else {
                continue;
            };
            let banned = banned(layer);
            if banned.is_empty() {
                continue;
            }
            let text = std::fs::read_to_string(&file)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
            let rel = file
                .strip_prefix(root)
                .expect("under root")
                .to_string_lossy()
                .replace('\\', "/");
            for (line, written, resolved) in crate_paths(&text, &module) {
                if let Some(top) = resolved.first().filter(|t| banned.contains(&t.as_str())) {
                    out.push(Violation {
                        file: rel.clone(),
                        line,
                        reaches: top.clone(),
                        path: written,
                    });
                }
            }
        }
    }
    out
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

/// The module a file under `src/` defines: `domain/engine/mod.rs` → `[domain, engine]`.
/// Files under `src/bin/` are crates of their own and get no module (they are skipped).
fn module_path(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if parts.first().is_some_and(|p| p == "bin") {
        return Vec::new();
    }
    let file = parts.pop().unwrap_or_default();
    let stem = file.strip_suffix(".rs").unwrap_or(&file);
    let crate_root = parts.is_empty() && matches!(stem, "lib" | "main");
    if stem != "mod" && !crate_root {
        parts.push(stem.to_string());
    }
    parts
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Path, // `::`
    Open,
    Close,
    Comma,
    Semi,
    Star,
    Other,
}

/// Identifiers and the punctuation that shapes paths, with their line; comments, string,
/// byte-string, raw-string and char literals are dropped.
fn tokens(src: &str) -> Vec<(Tok, usize)> {
    let s: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let (mut i, mut line) = (0, 1);
    let ident_char = |c: char| c.is_alphanumeric() || c == '_';
    while i < s.len() {
        let c = s[i];
        let next = s.get(i + 1).copied();
        match c {
            '\n' => {
                line += 1;
                i += 1;
            }
            '/' if next == Some('/') => {
                while i < s.len() && s[i] != '\n' {
                    i += 1;
                }
            }
            '/' if next == Some('*') => {
                let mut depth = 0;
                while i < s.len() {
                    if s[i] == '/' && s.get(i + 1) == Some(&'*') {
                        depth += 1;
                        i += 2;
                    } else if s[i] == '*' && s.get(i + 1) == Some(&'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        line += usize::from(s[i] == '\n');
                        i += 1;
                    }
                }
            }
            '"' => {
                i += 1;
                while i < s.len() && s[i] != '"' {
                    if s[i] == '\\' {
                        i += 1;
                    }
                    line += usize::from(s.get(i) == Some(&'\n'));
                    i += 1;
                }
                i += 1;
            }
            '\'' => {
                // A char literal ('x', '\n', '\u{1F600}'); otherwise a lifetime or label.
                if next == Some('\\') {
                    i += 3;
                    while i < s.len() && s[i] != '\'' {
                        i += 1;
                    }
                    i += 1;
                } else if s.get(i + 2) == Some(&'\'') {
                    i += 3;
                } else {
                    i += 1;
                }
            }
            c if ident_char(c) => {
                let start = i;
                while i < s.len() && ident_char(s[i]) {
                    i += 1;
                }
                let word: String = s[start..i].iter().collect();
                // Raw strings r"…", r#"…"#, br#"…"# and prefixed strings b"…", c"…".
                let hashes = s[i..].iter().take_while(|&&h| h == '#').count();
                if matches!(word.as_str(), "r" | "br" | "cr") && s.get(i + hashes) == Some(&'"') {
                    i += hashes + 1;
                    let close: Vec<char> = std::iter::once('"')
                        .chain(std::iter::repeat_n('#', hashes))
                        .collect();
                    while i < s.len() && !s[i..].starts_with(&close) {
                        line += usize::from(s[i] == '\n');
                        i += 1;
                    }
                    i += close.len();
                } else if matches!(word.as_str(), "b" | "c") && s.get(i) == Some(&'"') {
                    // the string itself is skipped by the '"' arm next round
                } else if word.as_bytes()[0].is_ascii_digit() {
                    out.push((Tok::Other, line));
                } else {
                    out.push((Tok::Ident(word), line));
                }
            }
            ':' if next == Some(':') => {
                out.push((Tok::Path, line));
                i += 2;
            }
            _ => {
                out.push((
                    match c {
                        '{' => Tok::Open,
                        '}' => Tok::Close,
                        ',' => Tok::Comma,
                        ';' => Tok::Semi,
                        '*' => Tok::Star,
                        c if c.is_whitespace() => {
                            i += 1;
                            continue;
                        }
                        _ => Tok::Other,
                    },
                    line,
                ));
                i += 1;
            }
        }
    }
    out
}

fn ident(t: Option<&(Tok, usize)>) -> Option<&str> {
    match t {
        Some((Tok::Ident(w), _)) => Some(w),
        _ => None,
    }
}

/// Every path in `src` that starts at `crate`, `self` or `super` (in `use` trees and in
/// code), as (line, as written, resolved to segments below the crate root). `module` is
/// the file's module; inline `mod x { … }` blocks extend it.
fn crate_paths(src: &str, module: &[String]) -> Vec<(usize, String, Vec<String>)> {
    let toks = tokens(src);
    let mut out = Vec::new();
    let mut depth = 0usize;
    // Inline modules open at this brace depth.
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        let here = || -> Vec<String> {
            let inline = inline.iter().map(|(m, _)| m.clone());
            module.iter().cloned().chain(inline).collect()
        };
        match &toks[i].0 {
            Tok::Open => depth += 1,
            Tok::Close => {
                depth = depth.saturating_sub(1);
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
            }
            Tok::Ident(w) if w == "mod" => {
                if let (Some(name), Some((Tok::Open, _))) =
                    (ident(toks.get(i + 1)), toks.get(i + 2))
                {
                    inline.push((name.to_string(), depth));
                    depth += 1;
                    i += 3;
                    continue;
                }
            }
            Tok::Ident(w) if w == "use" => {
                let line = toks[i].1;
                let mut trees = Vec::new();
                i += 1;
                use_tree(&toks, &mut i, Vec::new(), &mut trees);
                let here = here();
                for segments in trees {
                    if let Some(resolved) = resolve(&segments, &here) {
                        out.push((line, segments.join("::"), resolved));
                    }
                }
                continue;
            }
            Tok::Ident(w)
                if matches!(w.as_str(), "crate" | "self" | "super")
                    && toks.get(i + 1).is_some_and(|t| t.0 == Tok::Path)
                    && !(i > 0 && toks[i - 1].0 == Tok::Path) =>
            {
                let line = toks[i].1;
                let mut segments = vec![w.clone()];
                let mut j = i + 1;
                while toks.get(j).is_some_and(|t| t.0 == Tok::Path) {
                    match ident(toks.get(j + 1)) {
                        Some(next) => segments.push(next.to_string()),
                        None => break,
                    }
                    j += 2;
                }
                if let Some(resolved) = resolve(&segments, &here()) {
                    out.push((line, segments.join("::"), resolved));
                }
                i = j;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    out
}

/// Parses one use tree at `toks[*i]` (after `use`, or inside braces), appending every
/// path it names to `out`; leaves `*i` after the tree (at `,`, `}` or past `;`).
fn use_tree(toks: &[(Tok, usize)], i: &mut usize, prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
    let mut segments = prefix;
    while let Some((tok, _)) = toks.get(*i) {
        match tok {
            Tok::Ident(w) if w == "as" => *i += 2,
            Tok::Ident(w) => {
                segments.push(w.clone());
                *i += 1;
                if toks.get(*i).is_some_and(|t| t.0 == Tok::Path) {
                    *i += 1;
                    continue;
                }
            }
            Tok::Path => *i += 1,
            Tok::Star => {
                segments.push("*".into());
                *i += 1;
            }
            Tok::Open => {
                *i += 1;
                while let Some((t, _)) = toks.get(*i) {
                    match t {
                        Tok::Close => {
                            *i += 1;
                            break;
                        }
                        Tok::Comma => *i += 1,
                        _ => use_tree(toks, i, segments.clone(), out),
                    }
                }
                return;
            }
            Tok::Semi => {
                *i += 1;
                out.push(segments);
                return;
            }
            Tok::Comma | Tok::Close => {
                out.push(segments);
                return;
            }
            Tok::Other => *i += 1,
        }
    }
}

/// `segments` below the crate root when they start at `crate`, `self` or `super`.
fn resolve(segments: &[String], here: &[String]) -> Option<Vec<String>> {
    let first = segments.first()?;
    let (mut base, rest) = match first.as_str() {
        "crate" => (Vec::new(), &segments[1..]),
        "self" | "super" => (here.to_vec(), segments),
        _ => return None,
    };
    let mut rest = rest.iter().peekable();
    while let Some(s) = rest.peek() {
        match s.as_str() {
            "self" => {}
            "super" => {
                base.pop()?;
            }
            _ => break,
        }
        rest.next();
    }
    base.extend(rest.cloned());
    Some(base)
}

#[test]
fn services_keep_their_layer_rules() {
    let found = check(tools::repo_root(), SERVICES);
    let known: BTreeSet<(&str, &str)> = KNOWN_VIOLATIONS.iter().copied().collect();
    let new: Vec<String> = found
        .iter()
        .filter(|v| !known.contains(&(v.file.as_str(), v.reaches.as_str())))
        .map(|v| format!("  {v}"))
        .collect();
    let present: BTreeSet<(&str, &str)> = found
        .iter()
        .map(|v| (v.file.as_str(), v.reaches.as_str()))
        .collect();
    let gone: Vec<String> = known
        .difference(&present)
        .map(|(file, module)| format!("  (\"{file}\", \"{module}\")"))
        .collect();
    let mut problems = String::new();
    if !new.is_empty() {
        problems += &format!(
            "layer rules broken (domain/ reaches no store, clients or api; api/ no store: \
             depend on a port the domain owns instead):\n{}\n",
            new.join("\n")
        );
    }
    if !gone.is_empty() {
        problems += &format!(
            "fixed, so delete from KNOWN_VIOLATIONS in tests/e2e/layers.rs:\n{}\n",
            gone.join("\n")
        );
    }
    assert!(problems.is_empty(), "{problems}");
}

/// A small tree with one violation of each form, and look-alikes that are not: the
/// checker finds exactly the violations.
#[test]
fn the_layer_check_finds_every_form_of_violation() {
    let root = tempfile::tempdir().unwrap();
    let files: &[(&str, &str)] = &[
        ("domain/plain.rs", "use crate::store::Store;\n"),
        (
            "domain/braces.rs",
            "use crate::{\n    domain::thing,\n    clients::{self, Registry as R},\n};\n",
        ),
        (
            "domain/in_code.rs",
            "fn f() -> u8 {\n    let x = 1;\n    crate::api::status(x)\n}\n",
        ),
        ("domain/engine/mod.rs", "use super::super::store::Row;\n"),
        (
            "domain/nested.rs",
            "#[cfg(test)]\nmod tests {\n    use super::super::super::api::Api;\n    // a sibling module named store is fine:\n    use super::super::store::Local;\n}\n",
        ),
        (
            "domain/clean.rs",
            "// use crate::store::Store;\n/* crate::api::x /* nested */ crate::clients */\n\
             const A: &str = \"crate::store::Store\";\nconst B: &str = r#\"use crate::api;\"#;\n\
             const C: char = '\"';\nfn g<'a>(x: &'a str) -> &'a str { x }\n\
             use crate::domain::thing;\nuse super::clean_neighbour;\n",
        ),
        (
            "api/mod.rs",
            "use crate::{domain::{self, Run}, store::Store as S};\nuse crate::clients::Fine;\n",
        ),
        ("api/convert.rs", "pub fn f() { let _ = crate::domain::Run::new(); }\n"),
        ("store/sql.rs", "use crate::domain::Run;\nuse crate::api::Whatever;\n"),
        ("bin/tool.rs", "use crate::store::NotOurCrate;\n"),
    ];
    for (path, text) in files {
        let path = root.path().join("svc/src").join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    let found: Vec<String> = check(root.path(), &["svc"])
        .iter()
        .map(|v| format!("{}:{} {} {}", v.file, v.line, v.reaches, v.path))
        .collect();
    assert_eq!(
        found,
        [
            "svc/src/api/mod.rs:1 store crate::store::Store",
            "svc/src/domain/braces.rs:1 clients crate::clients::self",
            "svc/src/domain/braces.rs:1 clients crate::clients::Registry",
            "svc/src/domain/engine/mod.rs:1 store super::super::store::Row",
            "svc/src/domain/in_code.rs:3 api crate::api::status",
            "svc/src/domain/nested.rs:3 api super::super::super::api::Api",
            "svc/src/domain/plain.rs:1 store crate::store::Store",
        ]
    );
}
