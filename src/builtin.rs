//! Models that ship inside the binary, so `owrun run stories260k` and `owrun serve` work on a
//! fresh machine with no network and no files.
//!
//! The files are embedded as they are in `assets/` (with their LICENSE and model card). Every
//! loader reads model folders, so the first use writes them once into owrun's data directory
//! (a folder named after their hash, written under a temporary name and renamed into place) and
//! later runs reuse that folder. Where the data directory cannot be written, a folder in the
//! system's temporary directory serves instead.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

/// One embedded model folder: its name under `assets/` and its files.
pub struct Asset {
    pub folder: &'static str,
    pub files: &'static [(&'static str, &'static [u8])],
}

macro_rules! asset_files {
    ($folder:literal: $($file:literal),* $(,)?) => {
        Asset {
            folder: $folder,
            files: &[$(($file, include_bytes!(concat!("../assets/", $folder, "/", $file)))),*],
        }
    };
}

/// Andrej Karpathy's stories260K (llama2.c, MIT), a 260K-parameter Llama trained on TinyStories.
pub const ASSETS: &[Asset] = &[asset_files!("stories260K":
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "model.safetensors",
    "LICENSE",
    "README.md",
)];

pub fn find(folder: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.folder == folder)
}

impl Asset {
    /// Bytes of all its files together.
    pub fn size(&self) -> u64 {
        self.files.iter().map(|(_, b)| b.len() as u64).sum()
    }

    /// A short hash of every file's name and bytes: a new build with other files gets a new
    /// folder, and an old folder is never half-updated.
    fn stamp(&self) -> String {
        let mut h = Sha256::new();
        for (name, bytes) in self.files {
            h.update(name.as_bytes());
            h.update((bytes.len() as u64).to_le_bytes());
            h.update(bytes);
        }
        h.finalize()[..6]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// The folder holding the files, written first if needed: under `data_dir/builtin`, else
    /// under the system's temporary directory.
    pub fn folder_in(&self, data_dir: &Path) -> Result<PathBuf> {
        let name = format!("{}-{}", self.folder, self.stamp());
        let home = data_dir.join("builtin").join(&name);
        match self.write_into(&home) {
            Ok(()) => Ok(home),
            Err(first) => {
                let tmp = std::env::temp_dir()
                    .join(format!("owrun-builtin-{}", whoami_tag()))
                    .join(&name);
                self.write_into(&tmp).with_context(|| {
                    format!(
                        "cannot unpack the built-in model {} ({first:#})",
                        self.folder
                    )
                })?;
                Ok(tmp)
            }
        }
    }

    fn write_into(&self, dir: &Path) -> Result<()> {
        if self
            .files
            .iter()
            .all(|(f, b)| std::fs::metadata(dir.join(f)).is_ok_and(|m| m.len() == b.len() as u64))
        {
            return Ok(());
        }
        let parent = dir.parent().context("no parent folder")?;
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
        // Written beside its final place, then renamed: a reader never sees half a folder.
        let partial = parent.join(format!(
            ".{}.partial{}",
            dir.file_name().and_then(|n| n.to_str()).unwrap_or("model"),
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&partial);
        std::fs::create_dir_all(&partial)
            .with_context(|| format!("cannot create {}", partial.display()))?;
        for (file, bytes) in self.files {
            let path = partial.join(file);
            std::fs::write(&path, bytes)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        let _ = std::fs::remove_dir_all(dir);
        if let Err(e) = std::fs::rename(&partial, dir) {
            let _ = std::fs::remove_dir_all(&partial);
            // Another owrun unpacked the same files at the same moment: theirs will do.
            if dir.join("model.safetensors").exists() {
                return Ok(());
            }
            return Err(e).with_context(|| format!("cannot write {}", dir.display()));
        }
        Ok(())
    }
}

/// Something per-user for the shared temporary directory.
fn whoami_tag() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("USERNAME"))
        .unwrap_or_else(|_| "user".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpacks_once_and_reuses_the_folder() {
        let home = tempfile::tempdir().unwrap();
        let asset = find("stories260K").unwrap();
        let dir = asset.folder_in(home.path()).unwrap();
        assert!(dir.starts_with(home.path()));
        for (f, b) in asset.files {
            assert_eq!(std::fs::read(dir.join(f)).unwrap(), *b);
        }
        let when = std::fs::metadata(dir.join("config.json"))
            .unwrap()
            .modified()
            .unwrap();
        assert_eq!(asset.folder_in(home.path()).unwrap(), dir);
        let again = std::fs::metadata(dir.join("config.json"))
            .unwrap()
            .modified()
            .unwrap();
        assert_eq!(when, again, "the second use must not rewrite the files");
        // A damaged folder (a file cut short) is written again.
        std::fs::write(dir.join("model.safetensors"), b"short").unwrap();
        asset.folder_in(home.path()).unwrap();
        let weights = asset.files.iter().find(|(f, _)| *f == "model.safetensors");
        assert_eq!(
            std::fs::read(dir.join("model.safetensors")).unwrap(),
            weights.unwrap().1
        );
    }
}
