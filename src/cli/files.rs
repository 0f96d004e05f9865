//! The files a command works on: inputs expanded from folders and patterns,
//! each paired with its output path, checked before any work starts.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::session::Session;
use crate::output::{is_regular_file, same_file};

/// Refuses an output path that names one of the inputs.
pub(super) fn check_distinct(output: &Path, inputs: &[&Path]) -> Result<()> {
    if let Some(input) = inputs.iter().find(|i| same_file(output, i)) {
        bail!("{}: output path is also an input; choose another output", input.display());
    }
    Ok(())
}

/// Files given as inputs, with folders expanded to their files (not
/// recursively) whose extension is one of `extensions`, sorted by name.
pub(super) fn expand_inputs(inputs: &[PathBuf], extensions: &[&str]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for input in &expand_globs(inputs)? {
        if !input.is_dir() {
            files.push(input.clone());
            continue;
        }
        let entries = std::fs::read_dir(input).with_context(|| format!("{}: cannot list folder", input.display()))?;
        let mut found: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.is_file()
                    && p.extension()
                        .and_then(|e| e.to_str())
                        .is_some_and(|e| extensions.contains(&e.to_ascii_lowercase().as_str()))
            })
            .collect();
        if found.is_empty() {
            bail!("{}: folder holds no {} files", input.display(), extensions.join("/"));
        }
        found.sort();
        files.append(&mut found);
    }
    Ok(files)
}

/// Inputs with patterns (`photos/*.png`, `shot_?.jpg`, `[ab]*.png`) expanded
/// as a shell would, for when it did not (quoted, or on Windows), in name
/// order. A path that exists is taken as it is, even with `*` or `[` in its
/// name; a pattern that matches nothing is an error.
pub(super) fn expand_globs(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut expanded = Vec::new();
    for input in inputs {
        let text = input.to_string_lossy();
        if input.exists() || !text.contains(['*', '?', '[']) {
            expanded.push(input.clone());
            continue;
        }
        // As shells do: `*` does not match a leading dot.
        let options = glob::MatchOptions { require_literal_leading_dot: true, ..Default::default() };
        let mut matches = if text.contains("**") {
            recursive_glob(&text, options)?
        } else {
            let paths = glob::glob_with(&text, options).with_context(|| format!("{text}: not a valid pattern"))?;
            paths.collect::<Result<Vec<_>, _>>().with_context(|| format!("{text}: cannot list"))?
        };
        if matches.is_empty() {
            bail!("{text}: no file matches this pattern");
        }
        matches.sort();
        expanded.append(&mut matches);
    }
    Ok(expanded)
}

/// A pattern with `**`, matched against a walk of the folder above its first
/// wildcard that enters no linked folder (the glob crate follows them, so a
/// link `loop -> .` repeats every file and two such links never end).
fn recursive_glob(text: &str, options: glob::MatchOptions) -> Result<Vec<PathBuf>> {
    let pattern = glob::Pattern::new(text).with_context(|| format!("{text}: not a valid pattern"))?;
    let options = glob::MatchOptions { require_literal_separator: true, ..options };
    let literal: PathBuf = Path::new(text)
        .components()
        .take_while(|c| !c.as_os_str().to_string_lossy().contains(['*', '?', '[']))
        .collect();
    let root = if literal.as_os_str().is_empty() { Path::new(".") } else { literal.as_path() };
    let mut found = Vec::new();
    if root.is_dir() {
        walk(root, &mut found).with_context(|| format!("{text}: cannot list"))?;
    }
    let relative = literal.as_os_str().is_empty();
    Ok(found
        .into_iter()
        .map(|p| if relative { p.strip_prefix(".").map(Path::to_path_buf).unwrap_or(p) } else { p })
        .filter(|p| pattern.matches_path_with(p, options))
        .collect())
}

/// Every path under `dir`, entering folders but not links to them.
fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        // `file_type` does not follow links: a linked folder is listed, not entered.
        let is_dir = entry.file_type()?.is_dir();
        out.push(path.clone());
        if is_dir {
            walk(&path, out)?;
        }
    }
    Ok(())
}

/// Pairs each input with its output path (`extension` replaced). With one
/// input file, `-o` names the output itself unless it is an existing folder;
/// otherwise `-o` is a folder (created when missing). Refuses, before any
/// work, outputs that name an input or that two inputs would share.
pub(super) fn plan_outputs(
    raw_inputs: &[PathBuf],
    inputs: Vec<PathBuf>,
    output: Option<&Path>,
    extension: &str,
) -> Result<Vec<(PathBuf, PathBuf)>> {
    let single_file = raw_inputs.len() == 1 && inputs.len() == 1 && !raw_inputs[0].is_dir();
    let into_dir = |dir: &Path, input: &Path| {
        let name = Path::new(input.file_name().unwrap_or_default()).with_extension(extension);
        dir.join(name)
    };
    let plan: Vec<(PathBuf, PathBuf)> = match output {
        Some(out) if single_file && !out.is_dir() => vec![(inputs[0].clone(), out.to_owned())],
        Some(dir) => {
            if dir.exists() && !dir.is_dir() {
                bail!("{}: with several inputs -o must be a folder", dir.display());
            }
            std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create folder", dir.display()))?;
            inputs
                .into_iter()
                .map(|i| {
                    let o = into_dir(dir, &i);
                    (i, o)
                })
                .collect()
        }
        None => inputs.into_iter().map(|i| (i.clone(), i.with_extension(extension))).collect(),
    };
    let input_paths: Vec<&Path> = plan.iter().map(|(i, _)| i.as_path()).collect();
    let mut seen = std::collections::HashSet::new();
    for (_, out) in &plan {
        check_distinct(out, &input_paths)?;
        if !seen.insert(out.clone()) {
            bail!("{}: two inputs would write this same output; use separate runs or folders", out.display());
        }
    }
    Ok(plan)
}

/// With `skip`, drops the inputs whose output exists as a regular file (a
/// folder or a link to nothing is not a finished output), saying how many.
pub(super) fn skip_existing(ctx: &Session, plan: Vec<(PathBuf, PathBuf)>, skip: bool) -> Vec<(PathBuf, PathBuf)> {
    if !skip {
        return plan;
    }
    let total = plan.len();
    let todo: Vec<_> = plan.into_iter().filter(|(_, output)| !is_regular_file(output)).collect();
    if todo.len() < total {
        ctx.info(format_args!("skipping {} of {total} files whose output exists", total - todo.len()));
    }
    todo
}
