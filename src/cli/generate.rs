//! `tandem generate completions|man DIR`: shell completions (`clap_complete`) and man
//! pages (`clap_mangen`) from the clap definitions, so the package's copies always
//! match the CLI (`scripts/deb.sh` runs it before `cargo deb`).

use std::path::{Path, PathBuf};

use clap::CommandFactory as _;
use clap_complete::Shell;

use super::{Cli, Generated};

/// The shells the package carries completions for.
const SHELLS: [Shell; 3] = [Shell::Bash, Shell::Zsh, Shell::Fish];

/// Writes `what` into `dir` (created if missing); returns the files written.
pub fn generate(what: Generated, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    match what {
        Generated::Completions => SHELLS
            .iter()
            .map(|shell| clap_complete::generate_to(*shell, &mut Cli::command(), "tandem", dir))
            .collect(),
        Generated::Man => {
            clap_mangen::generate_to(Cli::command(), dir)?;
            let mut pages: Vec<PathBuf> = std::fs::read_dir(dir)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "1"))
                .collect();
            pages.sort();
            Ok(pages)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completions_for_three_shells_name_the_subcommands() {
        let dir = tempfile::tempdir().unwrap();
        let files = generate(Generated::Completions, dir.path()).unwrap();
        let names: Vec<String> = files
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["tandem.bash", "_tandem", "tandem.fish"]);
        for f in &files {
            let text = std::fs::read_to_string(f).unwrap();
            assert!(text.contains("switchover"), "{}", f.display());
        }
    }

    #[test]
    fn a_man_page_per_visible_subcommand_and_none_for_hidden_ones() {
        let dir = tempfile::tempdir().unwrap();
        let pages = generate(Generated::Man, dir.path()).unwrap();
        let has = |n: &str| pages.iter().any(|p| p.file_name().unwrap() == n);
        assert!(has("tandem.1") && has("tandem-status.1") && has("tandem-mirror-verify.1"));
        assert!(!has("tandem-generate.1"), "hidden");
        let main = std::fs::read_to_string(dir.path().join("tandem.1")).unwrap();
        assert!(main.contains(".TH tandem 1"), "{main}");
    }
}
