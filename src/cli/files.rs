//! The files a command works on: inputs expanded from folders and patterns,
//! each paired with its output path, checked before any work starts.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::session::Session;
use crate::output::same_file;

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
        let paths = glob::glob_with(&text, options).with_context(|| format!("{text}: not a valid pattern"))?;
        let mut matches = paths.collect::<Result<Vec<_>, _>>().with_context(|| format!("{text}: cannot list"))?;
        if matches.is_empty() {
            bail!("{text}: no file matches this pattern");
        }
        matches.sort();
        expanded.append(&mut matches);
    }
    Ok(expanded)
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

/// With `skip`, drops the inputs whose output exists, saying how many.
pub(super) fn skip_existing(ctx: &Session, plan: Vec<(PathBuf, PathBuf)>, skip: bool) -> Vec<(PathBuf, PathBuf)> {
    if !skip {
        return plan;
    }
    let total = plan.len();
    let todo: Vec<_> = plan.into_iter().filter(|(_, output)| !output.exists()).collect();
    if todo.len() < total {
        ctx.info(format_args!("skipping {} of {total} files whose output exists", total - todo.len()));
    }
    todo
}
