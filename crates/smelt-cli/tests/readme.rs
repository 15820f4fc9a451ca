//! The README's examples, run as written: every ```sh block after the quick start, in order, in
//! one bash session (`set -euo pipefail`), from a folder that holds what a fresh clone holds at
//! its root for them (`scripts/`, `data/`), with this build's `smelt` first on PATH. A command
//! that fails, or a path that does not exist, fails this test.
//!
//! The quick start itself (`cargo run --release -- shrink`, `scripts/test`) is not run here: the
//! first is the release build of the main job, the second is this test suite.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// The ```sh blocks of `text` after the one under "## Quick start".
fn example_blocks(text: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    let mut section = String::new();
    for line in text.lines() {
        if line.starts_with("## ") {
            section = line.to_string();
        }
        match &mut current {
            Some(b) if line.trim_start().starts_with("```") => {
                blocks.push((section.clone(), std::mem::take(b)));
                current = None;
            }
            Some(b) => {
                b.push_str(line);
                b.push('\n');
            }
            None if line.trim() == "```sh" => current = Some(String::new()),
            None => {}
        }
    }
    blocks.into_iter().filter(|(s, _)| s != "## Quick start").map(|(_, b)| b).collect()
}

#[test]
fn readme_examples_run_as_written() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let blocks = example_blocks(&readme);
    assert!(blocks.len() >= 2, "the README should show examples beyond the quick start");
    let dir = std::env::temp_dir().join(format!("smelt-readme-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for sub in ["scripts", "data"] {
        std::os::unix::fs::symlink(repo().join(sub), dir.join(sub)).unwrap();
    }
    let bin = Path::new(env!("CARGO_BIN_EXE_smelt")).parent().unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    for (i, block) in blocks.iter().enumerate() {
        let script = format!("set -euo pipefail\nset -x\n{block}");
        let t = std::time::Instant::now();
        let o = Command::new("bash").arg("-c").arg(&script).current_dir(&dir).env("PATH", &path).output().unwrap();
        eprintln!("README block {} ran in {:.0} s", i + 1, t.elapsed().as_secs_f64());
        assert!(
            o.status.success(),
            "README block {} failed ({}):\n{block}\n--- stderr ---\n{}",
            i + 1,
            o.status,
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_readme_test_finds_the_blocks() {
    let text = "## Quick start\n\n```sh\ncargo run\n```\n\n## More\n\n```sh\nsmelt a\nsmelt b\n```\n\n```json\n{}\n```\n";
    assert_eq!(example_blocks(text), ["smelt a\nsmelt b\n"]);
}
